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

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from attnvis.visualize import VisualizeOptions
from attnvis.batch.decode import DEFAULT_MAX_PIXELS
from attnvis.errors import InputError

ENGINES = ("local", "ray")
EXIT_SOME_FAILED = 3  # distinct from 1 (I/O error) and 2 (bad argument)


@dataclass
class BatchConfig:
    """A batch run. Each field is the ``attnvis batch`` flag of the same name.

    ``threads`` (ONNX Runtime intra-op threads) defaults to 1 on the CPU:
    decode and render threads already fill the cores, and a second spinning
    ORT pool would only take cycles from them. Give ``--threads`` for large
    models where inference dominates.
    """

    inputs: list[str]
    output: str = "attn_batch"
    model: str | None = None
    weights: str | None = None
    device: str = "auto"
    backend: str = "ort"
    threads: int | None = None
    options: VisualizeOptions = field(default_factory=VisualizeOptions)
    batch_size: int = 16
    workers: int | None = None
    resume: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = True
    engine: str = "local"
    address: str | None = None
    num_gpus_per_worker: float = 0.0
    gallery: bool = True


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

    @property
    def images_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0

    def text(self) -> str:
        lines = [f"{self.done} done, {self.skipped} skipped (already complete), {self.failed} failed "
                 f"of {self.total} images in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s, "
                 f"{self.cpu_seconds / max(self.seconds, 1e-9):.1f} cores busy; setup {self.setup_seconds:.1f} s)",
                 f"outputs: {self.output}  manifest: {self.output / 'manifest.jsonl'}"
                 + (f"  gallery: {self.gallery}" if self.gallery else "")]
        lines += [f"failed: {reason}" for _, reason in self.failures[:10]]
        if self.failed > 10:
            lines.append(f"... and {self.failed - 10} more failures: see the manifest (status \"failed\")")
        return "\n".join(lines)


def _check(config: BatchConfig) -> None:
    from attnvis.render import COLORMAPS, FORMATS

    if config.batch_size < 1:
        raise InputError(f"--batch-size {config.batch_size} must be at least 1")
    if config.workers is not None and config.workers < 1:
        raise InputError(f"--workers {config.workers} must be at least 1")
    if config.max_pixels < 1:
        raise InputError(f"--max-pixels {config.max_pixels} must be positive")
    if config.engine not in ENGINES:
        raise InputError(f"--engine {config.engine!r} is not one of {', '.join(ENGINES)}")
    if not 0.0 <= config.options.alpha <= 1.0:
        raise InputError(f"--alpha {config.options.alpha} must be in [0, 1]")
    if config.options.colormap not in COLORMAPS:
        raise InputError(f"--colormap {config.options.colormap!r} is not one of {', '.join(COLORMAPS)}")
    if config.options.format not in FORMATS:
        raise InputError(f"--format {config.options.format!r} is not one of {', '.join(FORMATS)}")
    if config.engine == "ray":
        from attnvis.batch.ray_engine import check_config

        check_config(config)  # Ray installed, GPUs, backend: before any work


def open_session(config: BatchConfig):
    """The run's one model session (ORT intra-op threads: see :class:`BatchConfig`)."""
    from attnvis.runtime import open_model

    threads = config.threads if config.threads is not None else (None if config.device == "cuda" else 1)
    return open_model(config.model, backend=config.backend, device=config.device, weights=config.weights, threads=threads)


def run_batch(config: BatchConfig) -> BatchSummary:
    """Run a batch: discover inputs, render every image, write the manifest and gallery.

    Raises:
        InputError: bad arguments, inputs that match nothing, or a
            layer/head selection the model does not have.
        ModelError / DeviceError: the model cannot be opened on the device.
        OSError: the output folder cannot be written.
    """
    from attnvis.batch import manifest as mf
    from attnvis.batch.inputs import discover
    from attnvis.batch.stages import clean_tmp, make_plan, warm_up

    began = time.perf_counter()
    _check(config)
    items = discover(config.inputs, exclude=config.output)
    warmed = _in_background(warm_up, config.options) if config.engine == "local" else None
    session = open_session(config)  # meanwhile the renderer's one-time loading
    if warmed is not None:
        warmed()
    plan = make_plan(session.metadata, config.options, config.model)
    root = Path(config.output)
    root.mkdir(parents=True, exist_ok=True)
    clean_tmp(root)
    previous = mf.load(root / mf.MANIFEST) if config.resume else {}
    pending = [item for item in items if not mf.is_complete(previous.get(item.key), root, plan.fingerprint)]
    start, cpu = time.perf_counter(), time.process_time()
    summary = BatchSummary(total=len(items), skipped=len(items) - len(pending), output=root, setup_seconds=start - began)
    with mf.Manifest(root / mf.MANIFEST) as manifest, _progress(len(pending), config.progress) as bar:
        _engine(config, session, plan, root).run(pending, _sink(manifest, summary, bar))
    summary.seconds, summary.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    if config.gallery:
        summary.gallery = _write_gallery(root, items, plan)
    return summary


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


def _engine(config: BatchConfig, session, plan, root: Path):
    from attnvis.batch.local import LocalEngine

    if config.engine == "ray":
        from attnvis.batch.ray_engine import RayEngine

        return RayEngine(config, plan, root)

    return LocalEngine(session, plan, root, config.batch_size, config.workers, config.max_pixels)


def _sink(manifest, summary: BatchSummary, bar):
    """The per-record callback: manifest line, counters, progress bar."""

    def sink(record: dict) -> None:
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

    records = mf.load(root / mf.MANIFEST)
    ordered = [records[item.key] for item in items if item.key in records]
    return write_gallery(root, ordered, plan.metadata, title=f"attnvis batch: {plan.model}", colormap=plan.options.colormap,
                  alpha=plan.options.alpha)
