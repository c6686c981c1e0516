"""The embedded tiny models and their assets.

Paths here need no PyTorch: the default ViT ships as ONNX too, so ``attnvis
demo``, ``visualize`` and ``batch`` with it run on ONNX Runtime alone. The
networks themselves are in :mod:`attnvis.models.tiny` (the ViT) and
:mod:`attnvis.captioning.tiny` (the captioner).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_NAME = "sample_scene.png"
DEFAULT_ONNX_NAME = "tiny_vit.onnx"


def sample_image_path() -> Path:
    """Path of the bundled sample image (the tiny ViT's held-out scene, PNG)."""
    return ASSETS / SAMPLE_NAME


def default_onnx_path() -> Path:
    """The default model exported by ``attnvis export --model default`` (all maps, no reduction).

    A test checks that it equals a fresh export of ``assets/tiny_vit.pt``.
    """
    return ASSETS / DEFAULT_ONNX_NAME
