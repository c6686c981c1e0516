"""Running exported models: ONNX Runtime (CUDA, else CPU) and the PyTorch reference backend.

Names are imported on first use: an ``.onnx`` run loads ONNX Runtime, never torch.
"""

from attnvis._lazy import lazy_attributes

_LAZY = {
    "BACKENDS": "attnvis.runtime.loader",
    "cache_dir": "attnvis.runtime.loader",
    "open_model": "attnvis.runtime.loader",
    "AttentionMaps": "attnvis.runtime.maps",
    "load_image": "attnvis.runtime.images",
    "preprocess": "attnvis.runtime.images",
    "DEVICES": "attnvis.runtime.device",
    "OrtSession": "attnvis.runtime.session",
    "TorchSession": "attnvis.runtime.torch_backend",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
