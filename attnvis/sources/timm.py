"""timm ViTs by name, random weights or a local state dict; never downloaded."""

from __future__ import annotations

import difflib
import sys

from torch import nn

from attnvis._optional import require
from attnvis.capture.adapters.windows import has_window_blocks
from attnvis.errors import InputError, ModelError
from attnvis.metadata import Preprocess, TokenLayout
from attnvis.sources._common import (check_layout, check_patch_multiple, conv_grid, example_inputs, load_weights,
                                     no_weights_error, prefix_layout, read_state_dict, reject_windowed, size2)
from attnvis.sources.base import ModelSource
from attnvis.sources.registry import register_source


@register_source("timm", lambda spec: spec.startswith("timm:"))
def timm_source(spec: str, *, weights: str | None = None, image_size=None, random_weights: bool = False,
                **_) -> ModelSource:
    """``timm:NAME``: needs ``--weights`` or, explicitly, ``random_weights``."""
    if weights is None and not random_weights:
        raise no_weights_error(spec)
    return load_timm(spec.partition(":")[2], weights=weights, image_size=image_size)


def load_timm(name: str, weights: str | None = None, image_size: int | tuple[int, int] | None = None) -> ModelSource:
    """A timm model by name, random weights or ``weights`` (a local state dict), never downloaded.

    Args:
        name: a timm model name, e.g. ``vit_tiny_patch16_224``.
        weights: local ``.pth``/``.safetensors`` state dict for that model.
        image_size: input (height, width); other than the model's default it
            turns on timm's dynamic image size (position embeddings resampled
            in the graph), so non-square inputs work and weights load as saved.

    Raises:
        InputError: unknown name or missing weights file.
        ModelError: not a patch-token ViT (no patch embedding, windowed
            attention other than ``swin_*``) or the weights do not fit.
    """
    timm = require("timm", "--model timm:NAME")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise InputError(f"timm has no model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    size = size2(image_size)
    model = _create_timm(timm, name, size)
    what = f"timm model {name!r} ({type(model).__name__})"
    reject_windowed(model, what)
    if size is not None and getattr(getattr(model, "patch_embed", None), "patch_size", None) is not None:
        check_patch_multiple(size, model.patch_embed.patch_size, f"timm:{name}")
    if weights is not None:
        state = read_state_dict(weights)
        load_weights(model, _timm_filter(model, state), what)
    size = size or tuple(model.pretrained_cfg.get("input_size", (3, 224, 224))[-2:])
    tokens = window_layout(model, size) if has_window_blocks(model) else timm_layout(model, size, what)
    source = ModelSource(model.eval(), example_inputs(size), tokens, timm_preprocess(model, size), f"timm:{name}")
    check_layout(source)
    return source


def _create_timm(timm, name: str, size: tuple[int, int] | None) -> nn.Module:
    """``create_model(pretrained=False)``; a non-default size asks for dynamic image size."""
    default = tuple(timm.get_pretrained_cfg_value(name, "input_size") or (3, 224, 224))[-2:]
    if size is None or size == default:
        return timm.create_model(name, pretrained=False)
    try:
        return timm.create_model(name, pretrained=False, dynamic_img_size=True)
    except TypeError:  # the architecture has no dynamic size: build it for this size instead
        pass
    try:
        return timm.create_model(name, pretrained=False, img_size=size)
    except (AssertionError, RuntimeError, ValueError) as err:  # timm asserts on sizes its layers cannot cut
        raise InputError(f"timm:{name} cannot be built for {size[0]}x{size[1]} inputs ({str(err).splitlines()[0]}); "
                         f"give another --image-size, e.g. its default {default[0]}x{default[1]}") from None


def _timm_filter(model: nn.Module, state: dict) -> dict:
    """Apply the architecture's own checkpoint filter (pos-embed resampling, key renames)."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except Exception:  # a filter for another checkpoint format: load the keys as they are
        return state


def window_layout(model: nn.Module, size: tuple[int, int]) -> TokenLayout:
    """A timm Swin's patch grid; no prefix tokens, no CLS row (each block's windows are stitched)."""
    embed = model.patch_embed
    grid = tuple(embed.dynamic_feat_size(size)) if hasattr(embed, "dynamic_feat_size") else conv_grid(embed.proj, size)
    return TokenLayout(grid=grid, kind="grid")


def timm_layout(model: nn.Module, size: tuple[int, int], what: str = "timm model") -> TokenLayout:
    """Prefix tokens (``cls``, ``dist``, ``reg*``) and patch grid of a timm ViT on ``size`` inputs."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None or not hasattr(model, "num_prefix_tokens"):
        raise ModelError(f"{what} has no patch embedding with prefix tokens: attnvis renders token attention "
                         "of ViT-style models (VisionTransformer, DeiT, EVA, BEiT, ...)")
    if hasattr(patch_embed, "dynamic_feat_size"):
        grid = tuple(patch_embed.dynamic_feat_size(size))
    else:
        grid = conv_grid(patch_embed.proj, size)
    names = ["cls"] if getattr(model, "cls_token", None) is not None else []
    names += ["dist"] if getattr(model, "dist_token", None) is not None else []
    reg = getattr(model, "reg_token", None)
    names += [f"reg{i}" for i in range(0 if reg is None else reg.shape[1])]
    if len(names) != model.num_prefix_tokens:
        raise ModelError(f"{what} has {model.num_prefix_tokens} prefix tokens but attnvis identified {names}")
    return prefix_layout(names, grid)


def timm_preprocess(model: nn.Module, size: tuple[int, int]) -> Preprocess:
    """Eval preprocessing from timm's ``resolve_data_config`` (resize short side, center-crop)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    interpolation = cfg.get("interpolation", "bicubic")
    return Preprocess(size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bicubic",
                      crop_pct=float(cfg.get("crop_pct", 1.0)), resize_short=True)
