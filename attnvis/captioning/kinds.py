"""Which model directories are captioners: a look at ``config.json``, no PyTorch needed.

The command line asks this before it decides between the captioning path and
the ViT path, so it must not import torch (``pip install attnvis`` has none).
"""

from __future__ import annotations

import json
from pathlib import Path

#: ``model_type`` values of the captioners attnvis loads, and the class each names.
CAPTIONER_TYPES = {"vision-encoder-decoder": "VisionEncoderDecoderModel", "blip": "BlipForConditionalGeneration"}


def read_config(path: str | Path) -> dict:
    """``config.json`` of a model directory, or ``{}`` when there is none or it is not JSON."""
    file = Path(path) / "config.json"
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, ValueError):
        return {}


def is_captioner_dir(path: str | Path) -> bool:
    """Whether ``path`` is a Hugging Face directory of a captioner attnvis loads."""
    return Path(path).is_dir() and read_config(path).get("model_type") in CAPTIONER_TYPES
