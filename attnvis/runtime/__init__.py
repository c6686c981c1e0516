"""Running exported models: ONNX Runtime (CUDA, else CPU) and the PyTorch reference backend.

Names are imported on first use: an ``.onnx`` run loads ONNX Runtime, never torch.
"""

import importlib

_LAZY = {
    "BACKENDS": "attnvis.runtime.loader",
    "cache_dir": "attnvis.runtime.loader",
    "open_model": "attnvis.runtime.loader",
    "AttentionMaps": "attnvis.runtime.maps",
    "load_image": "attnvis.runtime.images",
    "preprocess": "attnvis.runtime.images",
    "DEVICES": "attnvis.runtime.session",
    "OrtSession": "attnvis.runtime.session",
    "TorchSession": "attnvis.runtime.torch_backend",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnvis.runtime' has no attribute {name!r}")
