"""Export: every attention layer's weights as outputs of an ONNX graph (or TorchScript module).

Names are imported on first use, so that ``import attnvis.export`` loads no
torch. The capture registry (:mod:`attnvis.capture`), the model sources
(:mod:`attnvis.sources`) and the metadata contract (:mod:`attnvis.metadata`)
sit below this package; their main names are offered here too.
"""

from attnvis._lazy import lazy_attributes

_LAZY = {
    "capture_attention": "attnvis.capture.context",
    "register_attention_hooks": "attnvis.capture.context",
    "list_adapters": "attnvis.capture.registry",
    "register_adapter": "attnvis.capture.registry",
    "LayerInfo": "attnvis.metadata",
    "ModelMetadata": "attnvis.metadata",
    "Preprocess": "attnvis.metadata",
    "TokenLayout": "attnvis.metadata",
    "ExportReport": "attnvis.export.report",
    "ForeignOptions": "attnvis.export.foreign",
    "instrument_onnx": "attnvis.export.foreign",
    "export_onnx": "attnvis.export.onnx",
    "export_torchscript": "attnvis.export.onnx",
    "ModelSource": "attnvis.sources",
    "load_source": "attnvis.sources",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
