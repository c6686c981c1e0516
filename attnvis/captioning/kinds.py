"""Which model directories are captioners: a look at ``config.json``, no PyTorch needed.

The command line asks this before it decides between the captioning path and
the ViT path, so it must not import torch (``pip install attnvis`` has none).
"""

from __future__ import annotations

import json
from pathlib import Path

#: The ``--model`` name of the embedded tiny AoANet captioner.
DEFAULT_CAPTIONER = "default-captioner"

#: ``model_type`` values of the captioners attnvis loads, and the class each names.
CAPTIONER_TYPES = {"vision-encoder-decoder": "VisionEncoderDecoderModel", "blip": "BlipForConditionalGeneration"}

#: ``model_type`` values of the decoder-only vision-language models attnvis loads, and the class each names.
VLM_TYPES = {"llava": "LlavaForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration",
             "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "idefics3": "Idefics3ForConditionalGeneration",
             "smolvlm": "SmolVLMForConditionalGeneration", "paligemma": "PaliGemmaForConditionalGeneration"}

#: The VLM ``model_type`` values the onnx backend covers (the others run on the torch backend).
ONNX_VLM_TYPES = {"llava"}


def supported_models() -> str:
    """Every supported ``model_type`` with its class, for error messages."""
    return ", ".join(f"{v} ({k})" for k, v in {**CAPTIONER_TYPES, **VLM_TYPES}.items())


def read_config(path: str | Path) -> dict:
    """``config.json`` of a model directory, or ``{}`` when there is none or it is not JSON."""
    file = Path(path) / "config.json"
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, ValueError):
        return {}


def is_captioner_dir(path: str | Path) -> bool:
    """Whether ``path`` is a Hugging Face directory of a captioner attnvis loads."""
    return Path(path).is_dir() and read_config(path).get("model_type") in {**CAPTIONER_TYPES, **VLM_TYPES}


def is_vlm_dir(path: str | Path) -> bool:
    """Whether ``path`` is a Hugging Face directory of a vision-language model attnvis loads (``--prompt`` applies)."""
    return Path(path).is_dir() and read_config(path).get("model_type") in VLM_TYPES
