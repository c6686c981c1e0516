"""Captioners and where each generated word looked.

Layers, each importing only those before it: :mod:`~attnvis.captioning.model`
(the AoANet network, ``nn`` only) ← :mod:`~attnvis.captioning.checkpoint`
(``infos.pkl`` + ``model.pth``) ← :mod:`~attnvis.captioning.export` (encoder
and decoder-step ONNX graphs) ← :mod:`~attnvis.captioning.decoding` (greedy
and beam search) ← :mod:`~attnvis.captioning.captioner` ←
:mod:`~attnvis.captioning.figures` (per-word images, caption strip).

Decoder-only vision-language models: :mod:`~attnvis.captioning._rows` (the
attention function that records only the generated tokens' rows beside
``sdpa``) ← :mod:`~attnvis.captioning.vlm` (load, prompt, generate) with
:mod:`~attnvis.captioning.vlm_tiles` / :mod:`~attnvis.captioning.vlm_idefics`
(where each image token lies) and, for LLaVA on ONNX Runtime,
:mod:`~attnvis.captioning.vlm_export` ← :mod:`~attnvis.captioning.vlm_onnx`.
"""

from attnvis._lazy import lazy_attributes

_LAZY = {
    "Captioner": "attnvis.captioning.captioner",
    "CaptionResult": "attnvis.captioning.captioner",
    "load_aoanet": "attnvis.captioning.captioner",
    "load_default_captioner": "attnvis.captioning.captioner",
    "load_captioner": "attnvis.captioning.load",
    "HFCaptioner": "attnvis.captioning.load",
    "ImageCaption": "attnvis.captioning.result",
    "VLMCaption": "attnvis.captioning.result",
    "VLMCaptioner": "attnvis.captioning.vlm",
    "export_hf_captioner": "attnvis.captioning.hf_export",
    "export_aoanet": "attnvis.captioning.export",
    "CaptionVisOptions": "attnvis.captioning.figures",
    "demo_caption": "attnvis.captioning.figures",
    "visualize_caption": "attnvis.captioning.figures",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
