"""The Ray engine: the batch stages of :mod:`attnvis.batch.stages` on a Ray cluster, through Ray Data.

``attnvis batch --engine ray`` runs the same stage functions as the local
engine (:func:`attnvis.batch.stages.decode_item`, :func:`~attnvis.batch.stages.infer`
and :func:`~attnvis.batch.stages.render_item`), so the output tree, the files
and the manifest lines are the same; only where they run changes::

    items ─► from_items ─► decode (CPU tasks) ─► infer (actor pool: one ORT session
          per actor, CUDA when Ray gives the actor a GPU) ─► render + encode + write
          (CPU tasks, temporary name + rename) ─► records ─► manifest (driver)

The driver keeps what the local engine keeps: input discovery, ``--resume``,
the manifest, the progress bar, the summary and the gallery
(:func:`attnvis.batch.run.run_batch`). Workers write the image files
themselves, so ``--output`` must be a path every node sees (a local folder
on one machine, a shared file system on a cluster). The model travels in
Ray's object store: nodes need attnvis installed, not the model file.

Failure semantics: a bad image becomes a ``failed`` record in the decode
task; a task or actor lost with its node is retried by Ray Data (its
defaults: tasks ``max_retries=-1``, actors ``max_restarts=-1`` and
``max_task_retries=-1``), and a retried render first removes the temporary
files its killed attempt left; an ``OSError`` while writing stops the run, as
locally. Rows between stages
are Arrow tables of strings and pickled NumPy payloads (``image``, ``data``),
so variable image sizes never meet Arrow's tensor types, and the inference
actor passes the image column through without touching it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from attnvis.batch.cores import batch_size_for
from attnvis.batch.inputs import Item
from attnvis.batch.stages import STORE_ROW, RenderPlan
from attnvis.errors import AttnvisError, InputError

INSTALL_HINT = 'pip install "attnvis[ray]"'
_NO_RECORD = ""  # the "record" column of a row still in flight (no manifest line yet)
_FATAL = "fatal_os_error"  # a render task's OSError, carried to the driver as a record and raised there


def import_ray():
    """Import Ray and Ray Data, or say in one line how to install them.

    Raises:
        InputError: Ray (or its ``data`` extra) is not installed.
    """
    try:
        import ray
        import ray.data  # noqa: F401 - the ``data`` extra: pyarrow, pandas
    except ImportError as err:
        missing = err.name or err
        raise InputError(f"--engine ray needs Ray Data, which is not installed ({missing}): {INSTALL_HINT}") from None
    return ray


# --------------------------------------------------------------------------- stages as Ray Data UDFs


_BINARY = frozenset({"image", "data", "row"})  # pickled NumPy payloads; every other column is a string


def _table(columns: dict[str, list]):
    """An Arrow table of string columns and (large) binary payload columns."""
    import pyarrow as pa

    return pa.table({name: pa.array(values, pa.large_binary() if name in _BINARY else pa.string())
                     for name, values in columns.items()})


def _dumps(value) -> bytes:
    return pickle.dumps(value, protocol=5)


def decode_batch(batch, plan: RenderPlan, max_pixels: int):
    """Decode task: rows (path, key) → rows (path, key, record, image, data).

    ``image`` is the pickled RGB image (H, W, 3) and ``data`` the pickled model
    tensor (C, h, w); a bad file gets its ``failed`` manifest record instead
    and empty payloads.
    """
    from attnvis.batch.stages import decode_item

    out = {"path": [], "key": [], "record": [], "image": [], "data": []}
    for path, key in zip(batch.column("path").to_pylist(), batch.column("key").to_pylist()):
        result = decode_item(Item(path, key), plan, max_pixels)
        failed = isinstance(result, dict)
        out["path"].append(path)
        out["key"].append(key)
        out["record"].append(json.dumps(result) if failed else _NO_RECORD)
        out["image"].append(b"" if failed else _dumps((result.image, result.size, result.check)))  # --save maps: thumbnail pixels
        out["data"].append(b"" if failed else _dumps(result.tensor))
    return _table(out)


class InferActor:
    """Inference actor: one ONNX Runtime session, built from the model bytes in the object store.

    Args:
        model: ``ray.put`` reference to the ``.onnx`` file's bytes (or the bytes).
        device: ``--device``; ``auto`` means CUDA when Ray gave this actor a GPU.
        threads: ORT intra-op threads (``None``: 1 on the CPU, ORT's default on CUDA,
            as :func:`attnvis.batch.run.open_session` chooses).
        batch_size: images per ORT call (batches are zero-padded to it, as locally).
    """

    def __init__(self, model, device: str, threads: int | None, batch_size: int):
        import ray

        from attnvis.runtime.session import OrtSession

        data = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        if device == "auto" and not ray.get_gpu_ids():
            device = "cpu"  # no GPU assigned to this actor: do not let ORT probe one
        if threads is None and device == "cpu":
            threads = 1
        with tempfile.TemporaryDirectory(prefix="attnvis-ray-") as folder:
            path = Path(folder) / "model.onnx"
            path.write_bytes(data)
            self.session = OrtSession(path, device=device, threads=threads)  # ORT has read the file: it may go
        self.batch_size = batch_size

    def __call__(self, batch):
        """Rows' ``data``: model tensor → (per-layer maps, prediction); the images pass through untouched."""
        import pyarrow as pa

        from attnvis.batch.stages import infer

        records, data = batch.column("record").to_pylist(), batch.column("data").to_pylist()
        todo = [i for i, record in enumerate(records) if record == _NO_RECORD]
        for start in range(0, len(todo), self.batch_size):  # Ray Data keeps batches ≤ batch_size; be sure
            chunk = todo[start:start + self.batch_size]
            maps, predictions, _ = infer(self.session, [pickle.loads(data[i]) for i in chunk], self.batch_size)
            for i, attn, prediction in zip(chunk, maps, predictions):
                data[i] = _dumps((attn, prediction))  # attn: per layer (heads, Q, K)
        return batch.set_column(batch.schema.get_field_index("data"), "data", pa.array(data, pa.large_binary()))


def render_batch(batch, plan: RenderPlan, root: str):
    """Render task: render, encode and write each inferred row; every row leaves with its manifest record."""
    from attnvis.batch.decode import Decoded
    from attnvis.batch.stages import render_item

    records, rows, no_tensor = [], [], np.empty((0,), np.float32)  # render_item reads the image only
    columns = (batch.column(c).to_pylist() for c in ("path", "key", "record", "image", "data"))
    for path, key, record, image, data in zip(*columns):
        row = None
        if record == _NO_RECORD:
            attn, prediction = pickle.loads(data)
            pixels, size, check = pickle.loads(image)
            decoded = Decoded(pixels, no_tensor, size, check)
            try:
                record = render_item(Item(path, key), decoded, attn, prediction, plan, Path(root))
                row = record.pop(STORE_ROW, None)  # the map store's row travels to the driver beside the record
                record = json.dumps(record)
            except OSError as err:  # disk full, permissions: fatal for the run, as locally; Ray would bury it in
                record = json.dumps({_FATAL: [err.errno, err.strerror, err.filename]})  # a UDF error's text
        records.append(record)
        rows.append(b"" if row is None else _dumps(row))
    return _table({"record": records, "row": rows})


# --------------------------------------------------------------------------- the engine


def check_config(config) -> None:
    """The Ray engine's own argument checks, before any work (:func:`attnvis.batch.run.run_batch` calls it first).

    Raises:
        InputError: Ray is not installed, a negative ``--num-gpus-per-worker``,
            ``--device cuda`` without GPUs for the actors, or ``--backend torch``.
    """
    import_ray()
    gpus = config.num_gpus_per_worker
    if gpus < 0:
        raise InputError(f"--num-gpus-per-worker {gpus:g} must be 0 (CPU inference actors) or more")
    if config.device == "cuda" and not gpus:
        raise InputError("--device cuda with --engine ray: give --num-gpus-per-worker 1 so that Ray puts each "
                         "inference actor on a GPU")
    if config.backend != "ort":
        raise InputError(f"--engine ray runs ONNX Runtime sessions; --backend {config.backend} is local only: "
                         "use --backend ort")


def model_file(config) -> Path:
    """The ``.onnx`` file the driver's session was opened on (for a PyTorch model: its cached export)."""
    from attnvis.runtime.loader import exported_path

    if config.model and config.model.lower().endswith(".onnx"):
        return Path(config.model)
    # made by the driver's open_model already
    return exported_path(config.model, weights=config.weights, random_weights=config.random_weights)


class RayEngine:
    """Runs items through the stages on a Ray cluster (see the module docstring).

    Args:
        config: the run's :class:`attnvis.batch.run.BatchConfig` (``address``,
            ``num_gpus_per_worker``, ``batch_size``, ``workers``, ``max_pixels``,
            ``device``, ``threads``, ``model``).
        plan: the run's render plan.
        root: the output folder; every node must see it at this path.
    """

    def __init__(self, config, plan: RenderPlan, root: Path):
        check_config(config)
        self.ray = import_ray()
        self.config, self.plan, self.root = config, plan, Path(root).resolve()
        self.gpus = float(config.num_gpus_per_worker)
        self.model = model_file(config)

    def run(self, items: Iterable[Item], sink: Callable[[dict], None]) -> None:
        """Process ``items``; call ``sink(record)`` on the calling thread once per item (in completion order)."""
        items = list(items)
        if not items:
            return
        started = self._connect()
        try:
            for batch in self._dataset(items).iter_batches(batch_format="pyarrow", batch_size=None):
                for line, row in zip(batch.column("record").to_pylist(), batch.column("row").to_pylist()):
                    record = json.loads(line)
                    if _FATAL in record:
                        raise OSError(*record[_FATAL])  # the run stops at the first I/O error, as locally
                    if row:
                        record[STORE_ROW] = pickle.loads(row)  # the driver stores it (attnvis.batch.store)
                    sink(record)
        except self.ray.exceptions.RayError as err:
            raise _user_error(err) from None
        finally:
            if started:
                self.ray.shutdown()

    def _connect(self) -> bool:
        """Join ``--address`` (or start a local Ray); return whether this call started the connection."""
        ray = self.ray
        if ray.is_initialized():
            return False  # the caller's own Ray session (a script calling run_batch)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = getattr(self.config, "address", None)
        try:
            verbose = getattr(self.config, "verbose", False)  # Ray's own logs and the workers' stderr only when asked
            ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
                     logging_level=logging.INFO if verbose else logging.ERROR, configure_logging=True)
        except ConnectionError as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"--address {address}: cannot join a Ray cluster there ({reason}); start one with "
                             "'ray start --head', or leave --address out to run Ray on this machine") from None
        return True

    def _dataset(self, items: list[Item]):
        """The lazy Ray Data pipeline over ``items`` (nothing runs until it is iterated)."""
        ray, config = self.ray, self.config
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's tqdm bar counts records instead
        context.print_on_execution_start = False
        batch_size = min(batch_size_for(config.batch_size, "cuda" if self.gpus else "cpu"), len(items))  # padded to it
        rows = ray.data.from_items([{"path": item.path, "key": item.key} for item in items])
        tasks = {"num_cpus": 1, "concurrency": config.workers}  # Ray Data retries tasks: max_retries=-1
        decoded = rows.map_batches(decode_batch, batch_format="pyarrow", batch_size=batch_size,
                                   fn_kwargs={"plan": self.plan, "max_pixels": config.max_pixels}, **tasks)
        inferred = decoded.map_batches(
            InferActor, batch_format="pyarrow", batch_size=batch_size,
            fn_constructor_kwargs={"model": ray.put(self.model.read_bytes()), "device": config.device,
                                   "threads": config.threads, "batch_size": batch_size},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self._max_actors()),
            num_cpus=1, num_gpus=self.gpus or None, memory=self._actor_memory())  # restarts/retries: Ray Data's -1
        return inferred.map_batches(render_batch, batch_format="pyarrow", batch_size=1,
                                    fn_kwargs={"plan": self.plan, "root": str(self.root)}, **tasks)

    def _actor_memory(self) -> int:
        """Bytes of RAM an inference actor reserves: the model ~4 times over (file, ORT's copy, arena) + 512 MiB.

        Reserving it keeps Ray from packing actors into a node's memory, and
        (different resources) keeps Ray Data from fusing the decode tasks into
        the actors, where decoding would run one image at a time beside the model.
        """
        return 4 * self.model.stat().st_size + (512 << 20)

    def _max_actors(self) -> int:
        """Upper bound of the inference actor pool (Ray Data grows it from 1 while actors are the bottleneck).

        GPU actors: one per ``--num-gpus-per-worker`` share of the cluster's GPUs.
        CPU actors: one per 4 CPUs, at least one per node: one ORT thread infers
        the default model ~10× faster than one CPU renders and writes its files.
        """
        resources = self.ray.cluster_resources()
        if self.gpus:
            return max(1, int(resources.get("GPU", 0) // self.gpus))
        nodes = sum(1 for node in self.ray.nodes() if node.get("Alive"))
        return max(1, nodes, int(resources.get("CPU", 0)) // 4)


def _user_error(err: BaseException) -> BaseException:
    """The error a stage raised (bad output folder, a model error in an actor), unwrapped from Ray's wrappers.

    Ray Data raises ``RayTaskError(UserCodeException)`` chained to the stage's
    own exception; an ``AttnvisError`` or ``OSError`` in that chain is raised
    as the local engine would raise it (one line from the CLI). Anything
    else is Ray's own failure and stays as it is.
    """
    seen, cause = set(), err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, (AttnvisError, OSError)):
            return cause
        seen.add(id(cause))
        cause = getattr(cause, "cause", None) or cause.__cause__
    return err
