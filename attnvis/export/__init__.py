"""Export: make every attention layer's weights an output of an ONNX graph (or TorchScript module).

Names are imported on first use, so that reading metadata (``attnvis.export.metadata``)
does not load torch: an ``.onnx`` run never needs it.
"""

from attnvis._lazy import lazy_attributes

_LAZY = {
    "capture_attention": "attnvis.export.capture",
    "register_attention_hooks": "attnvis.export.capture",
    "LayerInfo": "attnvis.export.metadata",
    "ModelMetadata": "attnvis.export.metadata",
    "Preprocess": "attnvis.export.metadata",
    "TokenLayout": "attnvis.export.metadata",
    "ExportReport": "attnvis.export.onnx",
    "export_onnx": "attnvis.export.onnx",
    "export_torchscript": "attnvis.export.onnx",
    "list_adapters": "attnvis.export.registry",
    "register_adapter": "attnvis.export.registry",
    "ModelSource": "attnvis.export.sources",
    "load_source": "attnvis.export.sources",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
