"""Render attention for many images: folders, globs or lists, resumable, never stopped by a bad file.

:func:`run_batch` (``attnvis batch INPUT... --output DIR``) decodes images in parallel, runs them
through one model session in batches, renders and writes each image's files
(the ``visualize`` names) into ``DIR/<path relative to the inputs' root>/``,
records every image in ``DIR/manifest.jsonl`` and writes ``DIR/index.html``.

The stages are in :mod:`attnvis.batch.stages` (engine-independent), the
input rules in :mod:`attnvis.batch.inputs`, decoding and the bad-file checks
in :mod:`attnvis.batch.decode`, the manifest in :mod:`attnvis.batch.manifest`
and the thread engine in :mod:`attnvis.batch.local`.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from attnvis.visualize import VisualizeOptions, check_options
from attnvis.batch.decode import DEFAULT_MAX_PIXELS
from attnvis.errors import InputError

if TYPE_CHECKING:
    from attnvis.batch.caption import CaptionOptions

ENGINES = ("local", "ray")
EXIT_SOME_FAILED = 3  # distinct from 1 (I/O error) and 2 (bad argument)


@dataclass
class BatchConfig:
    """A batch run. Each field is the ``attnvis batch`` flag of the same name.

    ``threads`` (ONNX Runtime intra-op threads) is, on the CPU, settled from
    what the first batch costs (:mod:`attnvis.batch.cores`): 1 for a
    render-bound model, up to every core for an inference-bound one.
    ``max_memory`` (bytes) bounds the maps in flight; ``None``: a share of the
    memory available at the start.
    """

    inputs: list[str]
    output: str = "attn_batch"
    model: str | None = None
    weights: str | None = None
    random_weights: bool = False
    device: str = "auto"
    backend: str = "ort"
    threads: int | None = None
    max_memory: int | None = None
    options: VisualizeOptions = field(default_factory=VisualizeOptions)
    batch_size: int | None = None  # None: by device, attnvis.batch.cores.BATCH_SIZES
    workers: int | None = None
    resume: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True
    engine: str = "local"
    address: str | None = None
    num_gpus_per_worker: float = 0.0
    gallery: bool = True
    verbose: bool = False
    save: str = "images"  # images | maps | both: see attnvis.batch.stages.SAVE_MODES and attnvis.batch.store
    store_heads: bool = False
    caption: CaptionOptions | None = None  # captioners: see attnvis.batch.caption
    method: tuple[str, ...] = ()  # explanation methods (attnvis.explain.METHODS): relevance files or store columns
    target: int | str | None = None  # the class explained: None (top-1), an index or a label name


@dataclass
class BatchSummary:
    """What a run did. ``exit_code`` is 0 when no image failed, else :data:`EXIT_SOME_FAILED`."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0  # the images' processing, from the first decode to the last manifest line
    setup_seconds: float = 0.0  # before it: finding the inputs, opening the model, loading the kernels
    cpu_seconds: float = 0.0  # this process's CPU time over the run: cpu_seconds / seconds = cores kept busy
    output: Path = Path(".")
    gallery: Path | None = None  # index.html, when written
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason), the first few
    notes: list[str] = field(default_factory=list)  # how the run was set up: threads, batch (see attnvis.batch.cores)

    @property
    def images_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0

    def text(self) -> str:
        counts = f"{self.done} done, {self.skipped} skipped (already complete), {self.failed} failed of {self.total} images"
        if self.done + self.failed:
            counts += (f" in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s, "
                       f"{self.cpu_seconds / max(self.seconds, 1e-9):.1f} cores busy; setup {self.setup_seconds:.1f} s)")
        else:
            counts += ": nothing to do" if self.total else ""
        lines = [counts, *self.notes,
                 f"outputs: {self.output}  manifest: {self.output / 'manifest.jsonl'}"
                 + (f"  gallery: {self.gallery}" if self.gallery else "")]
        lines += [f"failed: {reason}" for _, reason in self.failures[:10]]
        if self.failed > 10:
            lines.append(f"... and {self.failed - 10} more failures: see the manifest (status \"failed\")")
        return "\n".join(lines)


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch: :attr:`summary` says what was done (every finished image is in the manifest)."""

    def __init__(self, summary: BatchSummary):
        super().__init__("interrupted")
        self.summary = summary


def _check(config: BatchConfig) -> None:
    from attnvis.runtime.loader import check_threads

    if config.batch_size is not None and config.batch_size < 1:
        raise InputError(f"--batch-size {config.batch_size} must be at least 1")
    if config.workers is not None and config.workers < 1:
        raise InputError(f"--workers {config.workers} must be at least 1")
    check_threads(config.threads)
    if config.max_pixels < 1:
        raise InputError(f"--max-pixels {config.max_pixels} must be positive")
    if config.engine not in ENGINES:
        raise InputError(f"--engine {config.engine!r} is not one of {', '.join(ENGINES)}")
    check_options(config.options)
    if config.method and config.engine == "ray":
        raise InputError(f"--method runs on the local engine; drop --engine {config.engine}")
    if config.target is not None and not config.method:
        raise InputError("--target says which class --method explains: give --method too (e.g. --method gae)")
    if config.engine == "ray":
        from attnvis.batch.ray_engine import check_config

        check_config(config)  # Ray installed, GPUs, backend: before any work


def open_session(config: BatchConfig):
    """The run's one model session (ORT intra-op threads: see :class:`BatchConfig`)."""
    from attnvis.runtime import open_model

    threads = config.threads
    if threads is None and config.device != "cuda":  # ORT on the CPU: at the first guess, from the model file
        threads = functools.partial(_first_threads, config) if config.backend == "ort" else 1
    return open_model(config.model, backend=config.backend, device=config.device, weights=config.weights, threads=threads,
                      random_weights=config.random_weights)


def run_batch(config: BatchConfig) -> BatchSummary:
    """Run a batch: discover inputs, render every image, write the manifest and gallery.

    Raises:
        InputError: bad arguments, inputs that match nothing, or a
            layer/head selection the model does not have.
        ModelError / DeviceError: the model cannot be opened on the device.
        OSError: the output folder cannot be written.
    """
    from attnvis.batch.inputs import discover
    from attnvis.batch.lock import OutputLock, check_no_readers
    from attnvis.batch.stages import warm_up

    began = time.perf_counter()
    _check(config)
    from attnvis.batch.caption import is_caption_run

    if is_caption_run(config.model, config.caption):
        if config.method:
            raise InputError(f"--method explains image classifiers; {config.model or 'this model'} is a captioner "
                             "(explaining its words is not supported): drop --method")
        return _run_captions(config, began)
    items = discover(config.inputs, exclude=config.output)
    warmed = _in_background(warm_up, config.options) if config.engine == "local" else None
    gpu_warmed = _gpu_warm_up(config)
    session, explainer, plan = _open(config)  # meanwhile the renderer's one-time loading
    if warmed is not None:
        warmed()
    if gpu_warmed is not None:
        gpu_warmed()
    root = Path(config.output)
    root.mkdir(parents=True, exist_ok=True)
    with OutputLock(root):  # another run here would delete this one's temporary files, and this one its
        check_no_readers(root)  # an attnvis render reading the store here: its rows would change under it
        return _run_locked(config, items, session, plan, root, began, explainer)


def _open(config: BatchConfig):
    """(attention session or None, explainer or None, plan): ``--method`` opens the explain graph, and the
    attention session only where the plan needs attention maps (``--layer`` ..., or a map store)."""
    from attnvis.batch.stages import make_plan

    if not config.method:
        session = open_session(config)
        return session, None, make_plan(session.metadata, config.options, config.model, save=config.save,
                                        store_heads=config.store_heads)
    from attnvis.relevance import open_explainer, resolve_target
    from attnvis.visualize import attention_asked

    threads = config.threads if config.threads is not None else (None if config.device == "cuda" else 1)
    explainer = open_explainer(config.model, config.method, device=config.device, weights=config.weights,
                               threads=threads, random_weights=config.random_weights, backend=config.backend)
    target = resolve_target(config.target, explainer.labels, explainer.classes)
    graph_only = bool(config.model) and config.model.lower().endswith(".onnx")  # no attention outputs in it
    wanted = attention_asked(config.options) or config.store_heads or config.save != "images"
    session = open_session(config) if wanted and not graph_only else None
    plan = make_plan((session or explainer).metadata, config.options, config.model, save=config.save,
                     store_heads=config.store_heads, methods=config.method, target=target,
                     attention=session is not None or not graph_only)
    return session, explainer, plan


def _run_locked(config: BatchConfig, items, session, plan, root: Path, began: float, explainer=None) -> BatchSummary:
    """The part of :func:`run_batch` that writes into ``root``, under its lock."""
    from attnvis.batch import manifest as mf
    from attnvis.batch.stages import clean_tmp

    clean_tmp(root)
    previous = mf.load(root / mf.MANIFEST) if config.resume else {}
    store = _open_store(root, plan)
    pending = [item for item in items if not (mf.is_complete(previous.get(item.key), root, plan.fingerprint)
                                              and (store is None or item.key in store.keys))]
    if store is not None:
        store.prune({item.key for item in pending})  # what is redone is stored once, by this run
    start, cpu = time.perf_counter(), time.process_time()
    summary = BatchSummary(total=len(items), skipped=len(items) - len(pending), output=root, setup_seconds=start - began)
    try:
        with mf.Manifest(root / mf.MANIFEST) as manifest, _progress(len(pending), config.progress) as bar, \
                _writing(store, manifest):
            engine = _engine(config, session, plan, root, len(items), explainer)
            engine.run(pending, _sink(manifest, summary, bar, store))
        summary.notes = [*(store.notes if store is not None else ()), *(note for note in getattr(engine, "notes", []) if note)]
    except KeyboardInterrupt:
        summary.seconds, summary.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        raise BatchInterrupted(summary) from None
    summary.seconds, summary.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    if config.gallery:
        summary.gallery = _write_gallery(root, items, plan)
    return summary


def _run_captions(config: BatchConfig, began: float) -> BatchSummary:
    """A batch whose model is a captioner (:mod:`attnvis.batch.caption`)."""
    from attnvis.batch import caption as cb
    from attnvis.batch import manifest as mf
    from attnvis.batch.inputs import discover
    from attnvis.batch.lock import OutputLock, check_no_readers

    if config.save != "images" or config.store_heads:  # the map store holds a vision model's layers, not words
        flag = "--store-heads" if config.save == "images" else f"--save {config.save}"
        raise InputError(f"{flag}: a captioner's word maps are written as images only; leave {flag} out "
                         "(the per-word PNGs and the gallery are the outputs of a caption batch)")
    opts = config.caption or cb.CaptionOptions()
    items = discover(config.inputs, exclude=config.output)
    captioner = cb.open_captioner(config, opts)
    root = Path(config.output)
    root.mkdir(parents=True, exist_ok=True)
    with OutputLock(root):
        check_no_readers(root)
        previous = mf.load(root / mf.MANIFEST) if config.resume else {}
        pending = cb.pending_items(items, previous, root, config, opts)
        start, cpu = time.perf_counter(), time.process_time()
        summary = BatchSummary(total=len(items), skipped=len(items) - len(pending), output=root,
                               setup_seconds=start - began)
        with mf.Manifest(root / mf.MANIFEST) as manifest, _progress(len(pending), config.progress) as bar:
            cb.caption_items(captioner, config, opts, pending, root, _sink(manifest, summary, bar))
        summary.seconds, summary.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        if config.gallery:
            from attnvis.batch.gallery import write_gallery

            records = mf.Records(root / mf.MANIFEST, (item.key for item in items))  # read back page by page
            summary.gallery = write_gallery(root, records, cb.caption_metadata(), title=f"attnvis batch: {config.model}",
                                            colormap=config.options.colormap, alpha=config.options.alpha)
    return summary


def _gpu_warm_up(config: BatchConfig) -> Callable[[], None] | None:
    """``--device cuda`` drawing images: the GPU render kernel compiled while the model opens (errors: left to the run)."""
    if config.engine != "local" or config.device != "cuda" or config.save == "maps":
        return None
    from attnvis.batch.feed import warm_up_cuda

    def quietly(options) -> None:
        try:
            warm_up_cuda(options)
        except Exception:  # noqa: BLE001 - the run's renderer choice reports it (attnvis.batch.feed.for_run)
            pass

    return _in_background(quietly, config.options)


def _in_background(fn, *args) -> Callable[[], None]:
    """Start ``fn(*args)`` on a daemon thread; the returned call waits for it and re-raises its error.

    A daemon thread, so that an error in the meantime (a model that does not
    open) ends the process at once instead of after the work in the background.
    """
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
            failure.append(err)

    thread = threading.Thread(target=run, name="attnvis-background", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failure:
            raise failure[0]

    return wait


def _engine(config: BatchConfig, session, plan, root: Path, images: int, explainer=None):
    from attnvis.batch.local import LocalEngine

    if config.engine == "ray":
        from attnvis.batch.ray_engine import RayEngine

        return RayEngine(config, plan, root)

    from attnvis.batch.cores import batch_size_for, fit_batch

    lead = session if session is not None else explainer.session  # the session the core split tunes
    fit = fit_batch(lead.metadata, batch_size_for(config.batch_size, lead.device), config.max_memory)
    batch_size = max(1, min(fit.batch_size, images))  # a batch is zero-padded to it: never past the run's images
    split = None
    if config.threads is None and config.backend == "ort" and lead.device == "cpu":
        split = _core_split(session, batch_size, explainer)
    feed, gpu_notes = None, []
    if explainer is None:  # --method: the explainer takes host batches; decode and render stay on the CPU
        from attnvis.batch.feed import for_run

        feed, plan, gpu_notes = for_run(session, plan, config.backend)  # --device cuda: decode and render on the GPU
    engine = LocalEngine(session, plan, root, batch_size, config.workers, config.max_pixels, split, feed, explainer)
    engine.notes += [fit.note, *gpu_notes]
    return engine


def _first_threads(config: BatchConfig, path: Path) -> int:
    """ORT's threads for a CPU run's first batch, from the model file (:func:`attnvis.batch.cores.first_threads`).

    Chosen before the session opens (opening a 518 px ViT-S costs about a second), from the
    file's metadata and size; 1 where the threads' CPU clocks cannot measure ORT at more.
    """
    from attnvis.batch.cores import first_threads, per_thread_clocks
    from attnvis.batch.local import available_cores
    from attnvis.errors import ModelError
    from attnvis.runtime.session import read_metadata

    if not per_thread_clocks():
        return 1
    try:
        meta = read_metadata(path)
    except (ModelError, OSError):
        return 1  # the session's own opening says what is wrong with the file
    opts = config.options
    layers = meta.layers if opts.layer is None else meta.layers[opts.layer:opts.layer + 1]
    per_head = opts.head is None and not opts.avg_heads
    maps = 1 if config.save == "maps" else sum(layer.heads if per_head else 1 for layer in layers)
    return first_threads(available_cores(), meta, path.stat().st_size, maps)


def _core_split(session, batch_size: int, explainer=None):
    """The :class:`attnvis.batch.cores.CoreSplit` of a CPU run, from the threads its session opened with
    (with ``--method``: the explain session's, and both sessions are re-opened with the threads it settles on)."""
    from attnvis.batch.cores import CoreSplit
    from attnvis.batch.local import available_cores

    sessions = [s for s in (session, explainer) if s is not None]
    opened = (session or explainer.session).threads
    return CoreSplit(available_cores(), lambda threads: [s.set_threads(threads) for s in sessions], batch_size,
                     opened or 1)


def _open_store(root: Path, plan):
    """The map store's writer for ``--save maps|both`` (``None`` for images)."""
    if plan.store_layout is None:
        return None
    from attnvis.batch.store import open_writer

    return open_writer(root, plan.metadata, plan.store_layout)


def _writing(store, manifest):
    """The store writer as a context (its records go to ``manifest`` after their shard), or nothing."""
    import contextlib

    if store is None:
        return contextlib.nullcontext()
    store.manifest = manifest
    return store


def _sink(manifest, summary: BatchSummary, bar, store=None):
    """The per-record callback: manifest line (through the store for a stored row), counters, progress bar."""
    from attnvis.batch.stages import STORE_ROW

    def sink(record: dict) -> None:
        row = record.pop(STORE_ROW, None)
        if row is not None:
            store.add(row, record)
        else:
            manifest.append(record)
        if record["status"] == "ok":
            summary.done += 1
        else:
            summary.failed += 1
            if len(summary.failures) < 10:
                summary.failures.append((record["key"], record["error"]))
            bar.set_postfix(failed=summary.failed, refresh=False)
        bar.update(1)

    return sink


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="attnvis batch", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)


def _write_gallery(root: Path, items, plan) -> Path:
    from attnvis.batch import manifest as mf
    from attnvis.batch.gallery import write_gallery

    ordered = mf.Records(root / mf.MANIFEST, (item.key for item in items))  # read back page by page
    return write_gallery(root, ordered, plan.metadata, title=f"attnvis batch: {plan.model}", colormap=plan.options.colormap,
                  alpha=plan.options.alpha)
