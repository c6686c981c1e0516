"""attnvis: show where a transformer looks.

Public API (imported lazily so that ``import attnvis`` stays fast):

- :func:`visualize_attention_on_image` — one image, every layer, files on disk.
- :func:`register_attention_hooks` — capture attention maps from any model.
- :func:`load_maps` — a batch's map store (``attnvis batch --save maps``) as a mapping.
- ``explain(model, inputs, method=..., target=None)`` — class-specific relevance (Chefer, grad-rollout,
  Grad-CAM; :func:`attnvis.runtime.explain.explain`); ``attnvis.explain.METHODS`` lists the methods.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from attnvis._lazy import lazy_attributes

try:
    __version__ = _metadata.version("attnvis")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = ["__version__", "visualize_attention_on_image", "register_attention_hooks", "load_maps", "explain"]

_LAZY = {
    "visualize_attention_on_image": "attnvis.visualize",
    "register_attention_hooks": "attnvis.capture.context",
    "load_maps": "attnvis.batch.store",
}

_getattr, _dir = lazy_attributes(__name__, _LAZY)


def __getattr__(name: str) -> object:
    if name == "explain":  # the callable package attnvis.explain (its import also binds the name here)
        import importlib

        return importlib.import_module("attnvis.explain")
    return _getattr(name)


def __dir__() -> list[str]:
    return sorted(set(_dir()) | {"explain"})
