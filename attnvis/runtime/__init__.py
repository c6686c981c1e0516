"""Running exported models: ONNX Runtime (CUDA, else CPU) and the PyTorch reference backend."""

from attnvis.runtime.loader import BACKENDS, cache_dir, open_model
from attnvis.runtime.maps import AttentionMaps
from attnvis.runtime.preprocess import load_image, preprocess
from attnvis.runtime.session import DEVICES, OrtSession
from attnvis.runtime.torch_backend import TorchSession

__all__ = ["AttentionMaps", "BACKENDS", "DEVICES", "OrtSession", "TorchSession", "cache_dir", "load_image", "open_model", "preprocess"]
