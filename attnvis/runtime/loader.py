"""``--model`` spec → a ready session, exporting (once, cached) when ORT is asked for a PyTorch model."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from typing import TYPE_CHECKING

from attnvis.errors import InputError
from attnvis.runtime.session import OrtSession

if TYPE_CHECKING:
    from attnvis.runtime.torch_backend import TorchSession

BACKENDS = ("ort", "torch")


def cache_dir() -> Path:
    """``$ATTNVIS_CACHE``, else ``$XDG_CACHE_HOME/attnvis``, else ``~/.cache/attnvis``."""
    if os.environ.get("ATTNVIS_CACHE"):
        return Path(os.environ["ATTNVIS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attnvis"


def _torch_version() -> str:
    """PyTorch's installed version, read from its metadata: importing it to ask would cost seconds
    and hundreds of MB in runs that only need ONNX Runtime and a cached export."""
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


def _cache_key(spec: str | None, weights: str | None, reduce: str, image_size, random_weights: bool = False) -> str:
    """The cache entry's name: the spec, the weights it was exported with, the options and the versions.

    The weights are keyed by their bytes (SHA-256), or as ``"random"``: an export made with
    ``--random-weights`` is never found by a run that did not ask for random weights.
    """
    from attnvis import __version__

    parts = {"spec": spec or "default", "reduce": reduce, "image_size": image_size,
             "attnvis": __version__, "torch": _torch_version(),
             "weights": _digest(Path(weights)) if weights and Path(weights).is_file() else weights,
             "random_weights": bool(random_weights) and not weights}
    if spec in (None, "", "default"):  # the embedded model: key on its shipped weights file
        from importlib import resources

        spec = str(resources.files("attnvis.models") / "assets" / "tiny_vit.pt")
    if spec and Path(spec).exists():
        stat = Path(spec).stat()
        parts["spec_file"] = [str(Path(spec).resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def exported_path(spec: str | None, *, weights: str | None = None, reduce: str = "none", image_size=None,
                  random_weights: bool = False) -> Path:
    """The cached ONNX export of ``spec``, made (and validated) on first use.

    PyTorch is imported only to export: a cached model (and the embedded default
    model, shipped as ONNX) opens with ONNX Runtime alone.
    """
    if spec in (None, "", "default") and reduce == "none" and image_size is None:
        from attnvis.models import default_onnx_path

        return default_onnx_path()  # shipped with the package: no PyTorch needed
    path = cache_dir() / "onnx" / f"{_cache_key(spec, weights, reduce, image_size, random_weights)}.onnx"
    if path.exists() and not _verified(path):
        path.unlink()  # truncated by a crash, or written by a run that failed its validation: rebuild it
    if not path.exists():
        from attnvis.export.onnx import export_onnx
        from attnvis.sources import load_source

        sweep_stale_temporaries(path.parent)
        source = load_source(spec, weights=weights, image_size=image_size, random_weights=random_weights)
        export_onnx(source, path, reduce=reduce, validate=True)
        _seal(path)
    return path


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _seal(path: Path) -> None:
    """Record the SHA-256 of a validated cache entry beside it (``NAME.onnx.sha256``)."""
    from attnvis.render.writers import write_bytes_atomic

    write_bytes_atomic(path.with_name(path.name + ".sha256"), _digest(path).encode())


def _verified(path: Path) -> bool:
    """Whether a cache entry is whole: its SHA-256 equals the one recorded when it was validated."""
    seal = path.with_name(path.name + ".sha256")
    try:
        return seal.read_text().strip() == _digest(path)
    except OSError:
        return False


def sweep_stale_temporaries(folder: Path, older_than_s: float = 600.0) -> int:
    """Remove temporary files (``.NAME.HEX.tmp``) that a killed export left in ``folder``; return how many.

    Only files untouched for ``older_than_s``: a temporary file is written in one go, so one that
    old belongs to no running export.
    """
    removed, now = 0, time.time()
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                removed += 1
    return removed


def check_threads(threads) -> None:
    """``--threads``: a positive count, or ``None`` for the default (ORT's and PyTorch's 0 and -1 are not accepted).

    A callable (:class:`attnvis.runtime.session.OrtSession` chooses from the model file) is not checked here.
    """
    if threads is not None and not callable(threads) and (isinstance(threads, bool) or not isinstance(threads, int)
                                                           or threads < 1):
        raise InputError(f"--threads {threads} must be a positive number of threads; leave it out for the default")


def _refuse_torchscript(spec: str | None) -> None:
    """A TorchScript file from ``attnvis export --format torchscript`` is for PyTorch-side benchmarks, not a model spec."""
    import zipfile

    if not spec or not Path(spec).is_file() or not zipfile.is_zipfile(spec):
        return
    with zipfile.ZipFile(spec) as archive:
        scripted = any("/code/" in name for name in archive.namelist())
    if scripted:
        raise InputError(f"--model {spec} is a TorchScript module (attnvis export --format torchscript); give the "
                         "ONNX export (attnvis export --model M --output model.onnx) or the model spec it was made from")


def open_model(
    spec: str | None,
    *,
    backend: str = "ort",
    device: str = "auto",
    weights: str | None = None,
    reduce: str = "none",
    threads: int | None = None,
    image_size: tuple[int, int] | None = None,
    random_weights: bool = False,
) -> "OrtSession | TorchSession":
    """Open ``spec`` (``.onnx`` file, ``default``, HF dir, ``timm:NAME``, ...) on a backend.

    A PyTorch model on the ``ort`` backend is exported first; the export is
    cached under :func:`cache_dir` keyed by the spec, the weights' bytes (or
    "random" with ``random_weights``), the options and the versions.
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    check_threads(threads)
    _refuse_torchscript(spec)
    is_onnx = spec is not None and spec.lower().endswith(".onnx")
    if is_onnx and backend == "torch":
        raise InputError(f"--backend torch needs a PyTorch model, not the ONNX file {spec}")
    if is_onnx:
        return OrtSession(spec, device=device, threads=threads)
    if backend == "torch":
        from attnvis.sources import load_source
        from attnvis.runtime.torch_backend import TorchSession

        source = load_source(spec, weights=weights, image_size=image_size, random_weights=random_weights)
        return TorchSession(source, device=device, reduce=reduce, threads=threads)
    path = exported_path(spec, weights=weights, reduce=reduce, image_size=image_size, random_weights=random_weights)
    return OrtSession(path, device=device, threads=threads)
