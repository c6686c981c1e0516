"""Hugging Face vision transformers from a local directory (``from_pretrained``, eager attention)."""

from __future__ import annotations

import contextlib
import inspect
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnvis._optional import require
from attnvis.errors import InputError, ModelError
from attnvis.metadata import Preprocess, TokenLayout
from attnvis.sources._common import check_layout, check_patch_multiple, conv_grid, example_inputs, prefix_layout, size2
from attnvis.sources.base import ModelSource
from attnvis.sources.registry import register_source
from attnvis.sources.windows import hf_swin_layouts

#: Hugging Face ``model_type`` values whose token layout attnvis knows.
HF_MODEL_TYPES = ("vit", "deit", "beit", "data2vec-vision", "dinov2", "dinov2_with_registers", "clip",
                  "clip_vision_model")
#: Windowed-attention ``model_type`` values: each block's window maps are stitched into one map per block.
HF_WINDOWED_TYPES = ("swin", "swinv2")
#: Resampling codes of PIL (as stored in HF image processor configs) → names the runtime knows.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


@register_source("hf", lambda spec: Path(spec).is_dir())
def hf_source(spec: str, *, image_size=None, **_) -> ModelSource:
    """A model directory."""
    return load_hf(spec, image_size=image_size)


class _Interpolating(nn.Module):
    """Calls a HF vision model with ``interpolate_pos_encoding=True`` (inputs off its trained size)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> Any:
        return self.model(pixel_values=pixel_values, interpolate_pos_encoding=True)


def load_hf(path: str | Path, image_size: int | tuple[int, int] | None = None) -> ModelSource:
    """A Hugging Face vision model from a local directory (``from_pretrained``, eager attention).

    Args:
        path: directory with ``config.json`` and the weights
            (``save_pretrained`` output or a downloaded snapshot).
        image_size: input (height, width); default: the image processor's
            output size, else the config's ``image_size``.

    Raises:
        InputError: the directory holds no Hugging Face config.
        ModelError: a model type attnvis does not support, or the weights
            cannot be loaded. Swin and Swinv2 are supported: each block's
            window maps are captured with their layout (``LayerInfo.window``).
    """
    require("transformers", "a Hugging Face model directory")
    path = Path(path)
    config = _hf_config(path)
    model = _hf_model(path, config)
    vision = getattr(model.config, "vision_config", model.config)
    what = f"Hugging Face model {path} ({type(model).__name__})"
    trained = size2(getattr(vision, "image_size", 224))
    pre = hf_preprocess(path, trained, image_size)
    if image_size is not None and getattr(vision, "patch_size", None):
        check_patch_multiple(pre.size, vision.patch_size, what, multiple=False)  # the patch conv floors the rest
    windowed = config.model_type in HF_WINDOWED_TYPES
    if pre.size != trained and _takes_interpolate(model):
        model = _Interpolating(model)
    elif pre.size != trained and image_size is not None and not windowed:
        raise InputError(f"{what} takes only {trained[0]}x{trained[1]} inputs (it cannot interpolate its position "
                         f"embeddings); leave --image-size out or give {trained[0]}x{trained[1]}")
    tokens = _windowed_layout(config, pre.size) if windowed else hf_layout(model, pre.size, what)
    source = ModelSource(model.eval(), example_inputs(pre.size), tokens, pre, str(path))
    check_layout(source)
    return source


def _windowed_layout(config, size: tuple[int, int]) -> TokenLayout:
    """A Swin's patch grid (padded to whole patches, as its embedding does); no prefix tokens, no CLS row."""
    return TokenLayout(grid=hf_swin_layouts(config, size)[0].grid, kind="grid")


def _hf_config(path: Path):
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise InputError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError, KeyError) as err:
        raise ModelError(f"{path}/config.json cannot be read by transformers: {err}") from None
    kind = f"model_type {config.model_type!r} ({', '.join(config.architectures or []) or 'no architectures'})"
    if config.model_type in HF_WINDOWED_TYPES:
        return config
    if "swin" in config.model_type or hasattr(config, "window_size"):
        raise ModelError(f"{path}: {kind} uses windowed attention that attnvis cannot place on the image; windowed "
                         f"models supported: {', '.join(HF_WINDOWED_TYPES)}; or use a global-attention ViT "
                         f"({', '.join(HF_MODEL_TYPES)})")
    if config.model_type not in HF_MODEL_TYPES:
        raise ModelError(f"{path}: {kind} is not a supported vision transformer; supported model types: "
                         f"{', '.join(HF_MODEL_TYPES)}; captioners: vision-encoder-decoder "
                         "(VisionEncoderDecoderModel), blip (BlipForConditionalGeneration)")
    return config


def _hf_model(path: Path, config) -> nn.Module:
    """The architecture the config names (CLIP: its vision tower), eager attention."""
    import transformers

    arch = (config.architectures or [""])[0]
    if config.model_type == "clip" or arch == "CLIPModel":
        cls = transformers.CLIPVisionModelWithProjection if "Projection" in arch else transformers.CLIPVisionModel
    else:
        cls = getattr(transformers, arch, None) or transformers.AutoModel
    with _quiet_transformers():
        try:
            return cls.from_pretrained(path, local_files_only=True, attn_implementation="eager")
        except (OSError, ValueError, RuntimeError) as err:
            raise ModelError(f"{path}: cannot load {cls.__name__}: {err}") from None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars, and no list of every unused text weight when CLIP's vision tower is loaded."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _takes_interpolate(model: nn.Module) -> bool:
    return "interpolate_pos_encoding" in inspect.signature(model.forward).parameters


def hf_layout(model: nn.Module, size: tuple[int, int], what: str = "Hugging Face model") -> TokenLayout:
    """Prefix tokens from the embedding parameters, grid from the patch convolution.

    Order as the embeddings concatenate them: CLS, distillation, registers.
    """
    params = dict(model.named_parameters())
    count = {"cls": 0, "dist": 0, "reg": 0}
    for key, param in params.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf in ("cls_token", "class_embedding"):
            count["cls"] = 1
        elif leaf == "distillation_token":
            count["dist"] = 1
        elif leaf == "register_tokens":
            count["reg"] = param.shape[1]
    names = ["cls"] * count["cls"] + ["dist"] * count["dist"] + [f"reg{i}" for i in range(count["reg"])]
    conv = next((m for n, m in model.named_modules() if "embedding" in n and isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ModelError(f"{what} has no patch-embedding convolution; attnvis cannot place its tokens on the image")
    return prefix_layout(names, conv_grid(conv, size))


def hf_preprocess(path: Path, model_size: tuple[int, int] | None, image_size=None) -> Preprocess:
    """Preprocessing from ``preprocessor_config.json``; without one, a plain resize to the model's size."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        warnings.warn(f"{path} has no preprocessor_config.json: images are resized to the model's input size and "
                      "normalized with mean=std=0.5", stacklevel=3)
        return Preprocess(size=size2(image_size) or model_size or (224, 224))
    cfg = json.loads(file.read_text())
    resize, short = _hf_size(cfg.get("size"), model_size)
    crop = _hf_size(cfg.get("crop_size"), None)[0] if cfg.get("do_center_crop") else None
    out = size2(image_size) or crop or resize
    normalize = cfg.get("do_normalize", True)
    return Preprocess(
        size=out,
        mean=tuple(cfg.get("image_mean", (0.5,) * 3)) if normalize else (0.0,) * 3,
        std=tuple(cfg.get("image_std", (0.5,) * 3)) if normalize else (1.0,) * 3,
        interpolation=_PIL_RESAMPLE.get(cfg.get("resample", 2), "bilinear"),
        crop_pct=1.0 if crop is None else min(crop) / min(resize),
        resize_short=short or crop is not None,
        scale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0,
    )


def _hf_size(size: dict | int | None, fallback: tuple[int, int] | None) -> tuple[tuple[int, int], bool]:
    """HF size dict → ((h, w), keeps-aspect). ``shortest_edge`` keeps the aspect ratio."""
    if isinstance(size, int):
        return (size, size), True
    if isinstance(size, dict) and "height" in size:
        return (int(size["height"]), int(size["width"])), False
    if isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        return (edge, edge), True
    return fallback or (224, 224), False
