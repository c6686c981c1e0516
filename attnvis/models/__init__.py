"""The embedded tiny models and their assets.

Paths here need no PyTorch: the default ViT ships as ONNX too, so ``attnvis
demo``, ``visualize`` and ``batch`` with it run on ONNX Runtime alone. The
networks themselves are in :mod:`attnvis.models.tiny` (the ViT) and
:mod:`attnvis.captioning.tiny` (the captioner).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_NAME = "sample_scene.png"
DEFAULT_ONNX_NAME = "tiny_vit.onnx"
DEFAULT_EXPLAIN_NAME = "tiny_vit_explain.onnx"


def sample_image_path() -> Path:
    """Path of the bundled sample image (the tiny ViT's held-out scene, PNG)."""
    return ASSETS / SAMPLE_NAME


def default_onnx_path() -> Path:
    """The default model exported by ``attnvis export --model default`` (all maps, no reduction).

    A test checks that it equals a fresh export of ``assets/tiny_vit.pt``.
    """
    return ASSETS / DEFAULT_ONNX_NAME


def default_explain_path() -> Path:
    """The default model exported by ``attnvis export --model default --explain ...`` (``tools/export_default.py``).

    ``attnvis demo --method gae`` and ``visualize``/``batch --method`` with the
    default model run it on ONNX Runtime alone. A test checks that it equals a
    fresh export of ``assets/tiny_vit.pt``.
    """
    return ASSETS / DEFAULT_EXPLAIN_NAME


@cache
def default_explain_methods() -> tuple[str, ...]:
    """The methods the shipped explain graph computes (read from its metadata; ``()`` if it is missing)."""
    import json

    import onnx

    path = default_explain_path()
    if not path.is_file():
        return ()
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return tuple((json.loads(props.get("attnvis.explain", "null")) or {}).get("methods") or ())
