"""Export: make every attention layer's weights an output of an ONNX graph (or TorchScript module)."""

from attnvis.export.capture import capture_attention, register_attention_hooks
from attnvis.export.metadata import LayerInfo, ModelMetadata, Preprocess, TokenLayout
from attnvis.export.onnx import ExportReport, export_onnx, export_torchscript
from attnvis.export.registry import list_adapters, register_adapter
from attnvis.export.sources import ModelSource, load_source

__all__ = [
    "ExportReport", "LayerInfo", "ModelMetadata", "ModelSource", "Preprocess", "TokenLayout",
    "capture_attention", "export_onnx", "export_torchscript", "list_adapters", "load_source",
    "register_adapter", "register_attention_hooks",
]
