"""``--model`` spec → a ready session, exporting (once, cached) when ORT is asked for a PyTorch model."""

from __future__ import annotations

import hashlib
import json
import os
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


def _cache_key(spec: str | None, weights: str | None, reduce: str, image_size) -> str:
    from attnvis import __version__

    parts = {"spec": spec or "default", "reduce": reduce, "image_size": image_size,
             "attnvis": __version__, "torch": _torch_version()}
    if spec in (None, "", "default"):  # the embedded model: key on its shipped weights file
        from importlib import resources

        spec = str(resources.files("attnvis.models") / "assets" / "tiny_vit.pt")
    for name, path in (("weights", weights), ("spec_file", spec)):
        if path and Path(path).exists():
            stat = Path(path).stat()
            parts[name] = [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def exported_path(spec: str | None, *, weights: str | None = None, reduce: str = "none", image_size=None) -> Path:
    """The cached ONNX export of ``spec``, made (and validated) on first use.

    PyTorch is imported only to export: a cached model (and the embedded default
    model, shipped as ONNX) opens with ONNX Runtime alone.
    """
    if spec in (None, "", "default") and reduce == "none" and image_size is None:
        from attnvis.models import default_onnx_path

        return default_onnx_path()  # shipped with the package: no PyTorch needed
    path = cache_dir() / "onnx" / f"{_cache_key(spec, weights, reduce, image_size)}.onnx"
    if not path.exists():
        from attnvis.export.onnx import export_onnx
        from attnvis.sources import load_source

        source = load_source(spec, weights=weights, image_size=image_size)
        export_onnx(source, path, reduce=reduce, validate=True)
    return path


def open_model(
    spec: str | None,
    *,
    backend: str = "ort",
    device: str = "auto",
    weights: str | None = None,
    reduce: str = "none",
    threads: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> "OrtSession | TorchSession":
    """Open ``spec`` (``.onnx`` file, ``default``, HF dir, ``timm:NAME``, ...) on a backend.

    A PyTorch model on the ``ort`` backend is exported first; the export is
    cached under :func:`cache_dir` keyed by the spec, weights and versions.
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    is_onnx = spec is not None and spec.lower().endswith(".onnx")
    if is_onnx and backend == "torch":
        raise InputError(f"--backend torch needs a PyTorch model, not the ONNX file {spec}")
    if is_onnx:
        return OrtSession(spec, device=device, threads=threads)
    if backend == "torch":
        from attnvis.sources import load_source
        from attnvis.runtime.torch_backend import TorchSession

        return TorchSession(load_source(spec, weights=weights, image_size=image_size), device=device, reduce=reduce, threads=threads)
    return OrtSession(exported_path(spec, weights=weights, reduce=reduce, image_size=image_size), device=device, threads=threads)
