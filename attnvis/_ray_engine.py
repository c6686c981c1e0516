"""The Ray engine: the batch stages of :mod:`attnvis.batch.stages` on a Ray cluster, through Ray Data.

``attnvis batch --engine ray`` runs the same stage functions as the local
engine (:func:`attnvis.batch.stages.decode_item`, :func:`~attnvis.batch.stages.infer`
and :func:`~attnvis.batch.stages.render_item`), so the output tree, the file
bytes and the manifest lines are the same; only where they run changes::

    items ─► from_items ─► decode (CPU tasks) ─► infer (actor pool: one ORT session
          per actor, CUDA when Ray gives the actor a GPU) ─► render + encode + write
          (CPU tasks, temporary name + rename) ─► records ─► manifest (driver)

The driver keeps what the local engine keeps: input discovery, ``--resume``,
the manifest, the progress bar, the summary and the gallery
(:func:`attnvis.pipeline.run_batch`). Workers write the image files
themselves, so ``--output`` must be a path every node sees (a local folder
on one machine, a shared file system on a cluster). The model travels in
Ray's object store: nodes need attnvis installed, not the model file.

Failure semantics: a bad image becomes a ``failed`` record in the decode
task; a task or actor lost with its node is retried by Ray Data (its defaults:
tasks ``max_retries=-1``, actors ``max_restarts=-1`` and ``max_task_retries=-1``), and a retried render first
removes the temporary files its killed attempt left. Rows between stages
are Arrow tables of strings and pickled NumPy payloads, so variable image
sizes never meet Arrow's tensor types.
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

from attnvis.batch.inputs import Item
from attnvis.batch.stages import RenderPlan
from attnvis.errors import AttnvisError, InputError

INSTALL_HINT = 'pip install "attnvis[ray]"'
_NO_RECORD = ""  # the "record" column of a row still in flight (no manifest line yet)


def import_ray():
    """Import Ray and Ray Data, or say in one line how to install them.

    Raises:
        InputError: Ray (or its ``data`` extra) is not installed.
    """
    try:
        import ray
        import ray.data  # noqa: F401 - the ``data`` extra: pyarrow, pandas
    except ImportError as err:
        raise InputError(f"--engine ray needs Ray Data, which is not installed ({err.name or err}): {INSTALL_HINT}") from None
    return ray


# --------------------------------------------------------------------------- stages as Ray Data UDFs


def _table(columns: dict[str, list]):
    """An Arrow table of string columns and one ``payload`` column of (large) binary."""
    import pyarrow as pa

    return pa.table({name: pa.array(values, pa.large_binary() if name == "payload" else pa.string())
                     for name, values in columns.items()})


def decode_batch(batch, plan: RenderPlan, max_pixels: int):
    """Decode task: rows (path, key) → rows (path, key, record, payload).

    ``payload`` is the pickled (RGB image, model tensor); a bad file gets its
    ``failed`` manifest record instead and an empty payload.
    """
    from attnvis.batch.stages import decode_item

    out = {"path": [], "key": [], "record": [], "payload": []}
    for path, key in zip(batch.column("path").to_pylist(), batch.column("key").to_pylist()):
        result = decode_item(Item(path, key), plan, max_pixels)
        failed = isinstance(result, dict)
        out["path"].append(path)
        out["key"].append(key)
        out["record"].append(json.dumps(result) if failed else _NO_RECORD)
        out["payload"].append(b"" if failed else pickle.dumps((result.image, result.tensor), protocol=5))
    return _table(out)


class InferActor:
    """Inference actor: one ONNX Runtime session, built from the model bytes in the object store.

    Args:
        model: ``ray.put`` reference to the ``.onnx`` file's bytes (or the bytes).
        device: ``--device``; ``auto`` means CUDA when Ray gave this actor a GPU.
        threads: ORT intra-op threads (``None``: 1 on the CPU, ORT's default on CUDA,
            as :func:`attnvis.pipeline.open_session` chooses).
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
        """Rows with a decoded payload → rows whose payload is (image, per-layer maps, prediction)."""
        from attnvis.batch.stages import infer

        records, payloads = batch.column("record").to_pylist(), batch.column("payload").to_pylist()
        todo = [i for i, record in enumerate(records) if record == _NO_RECORD]
        for start in range(0, len(todo), self.batch_size):  # Ray Data keeps batches ≤ batch_size; be sure
            chunk = todo[start:start + self.batch_size]
            decoded = [pickle.loads(payloads[i]) for i in chunk]  # (image (H, W, 3), tensor (C, h, w))
            maps, predictions = infer(self.session, [tensor for _, tensor in decoded], self.batch_size)
            for i, (image, _), attn, prediction in zip(chunk, decoded, maps, predictions):
                payloads[i] = pickle.dumps((image, attn, prediction), protocol=5)
        return _table({"path": batch.column("path").to_pylist(), "key": batch.column("key").to_pylist(),
                       "record": records, "payload": payloads})


def render_batch(batch, plan: RenderPlan, root: str):
    """Render task: render, encode and write each inferred row; every row leaves with its record."""
    from attnvis.batch.decode import Decoded
    from attnvis.batch.stages import render_item

    records, no_tensor = [], np.empty((0,), np.float32)  # render_item reads the image only
    for path, key, record, payload in zip(*(batch.column(c).to_pylist() for c in ("path", "key", "record", "payload"))):
        if record == _NO_RECORD:
            image, attn, prediction = pickle.loads(payload)
            rendered = render_item(Item(path, key), Decoded(image, no_tensor), attn, prediction, plan, Path(root))
            record = json.dumps(rendered)
        records.append(record)
    return _table({"record": records})


# --------------------------------------------------------------------------- the engine


def model_file(config) -> Path:
    """The ``.onnx`` file the driver's session was opened on (exported and cached for a PyTorch model).

    Raises:
        InputError: ``--backend torch`` (the Ray engine runs ONNX Runtime sessions).
    """
    from attnvis.runtime.loader import exported_path

    if config.backend != "ort":
        raise InputError(f"--engine ray runs ONNX Runtime sessions; --backend {config.backend} is local only: use --backend ort")
    if config.model and config.model.lower().endswith(".onnx"):
        return Path(config.model)
    return exported_path(config.model, weights=config.weights)  # made by the driver's open_model already


class RayEngine:
    """Runs items through the stages on a Ray cluster (see the module docstring).

    Args:
        config: the run's :class:`attnvis.pipeline.BatchConfig` (``address``,
            ``num_gpus_per_worker``, ``batch_size``, ``workers``, ``max_pixels``,
            ``device``, ``threads``, ``model``).
        plan: the run's render plan.
        root: the output folder; every node must see it at this path.
    """

    def __init__(self, config, plan: RenderPlan, root: Path):
        self.ray = import_ray()
        self.config, self.plan, self.root = config, plan, Path(root).resolve()
        self.gpus = float(getattr(config, "num_gpus_per_worker", 0) or 0)
        if self.gpus < 0:
            raise InputError(f"--num-gpus-per-worker {self.gpus:g} must be 0 (CPU actors) or more")
        if config.device == "cuda" and self.gpus == 0:
            raise InputError("--device cuda with --engine ray: give --num-gpus-per-worker 1 so that Ray puts each "
                             "inference actor on a GPU")
        self.model = model_file(config)

    def run(self, items: Iterable[Item], sink: Callable[[dict], None]) -> None:
        """Process ``items``; call ``sink(record)`` on the calling thread once per item (in completion order)."""
        items = list(items)
        if not items:
            return
        started = self._connect()
        try:
            for batch in self._dataset(items).iter_batches(batch_format="pyarrow", batch_size=None):
                for record in batch.column("record").to_pylist():
                    sink(json.loads(record))
        except self.ray.exceptions.RayTaskError as err:
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
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=True)
        except ConnectionError as err:
            raise InputError(f"--address {address}: no Ray cluster there ({str(err).splitlines()[0]}); start one with "
                             "'ray start --head' or leave --address out to run Ray on this machine") from None
        return True

    def _dataset(self, items: list[Item]):
        """The lazy Ray Data pipeline over ``items`` (nothing runs until it is iterated)."""
        ray, config = self.ray, self.config
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's tqdm bar counts records instead
        context.print_on_execution_start = False
        rows = ray.data.from_items([{"path": item.path, "key": item.key} for item in items])
        tasks = {"num_cpus": 1, "concurrency": config.workers}  # Ray Data retries tasks: max_retries=-1
        decoded = rows.map_batches(decode_batch, batch_format="pyarrow", batch_size=config.batch_size,
                                   fn_kwargs={"plan": self.plan, "max_pixels": config.max_pixels}, **tasks)
        inferred = decoded.map_batches(
            InferActor, batch_format="pyarrow", batch_size=config.batch_size,
            fn_constructor_kwargs={"model": ray.put(self.model.read_bytes()), "device": config.device,
                                   "threads": config.threads, "batch_size": config.batch_size},
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
        """Inference actors: one per GPU share when actors take GPUs, else one per alive node."""
        resources = self.ray.cluster_resources()
        if self.gpus:
            return max(1, int(resources.get("GPU", 0) // self.gpus))
        return max(1, sum(1 for node in self.ray.nodes() if node.get("Alive")))


def _user_error(err) -> BaseException:
    """A task's own error (bad output folder, a model error in an actor) as the local engine would raise it."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, (AttnvisError, OSError)):
        return cause
    return err
