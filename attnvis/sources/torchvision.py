"""torchvision ViTs (``vit_b_16`` ...) and Swins (``swin_t`` ...): random weights or a local state dict, no download."""

from __future__ import annotations

import re

from attnvis._optional import require
from attnvis.errors import InputError, ModelError
from attnvis.metadata import Preprocess, TokenLayout
from attnvis.sources._common import (check_layout, check_patch_multiple, conv_grid, example_inputs, load_weights,
                                     no_weights_error, prefix_layout, read_state_dict, reject_windowed, size2)
from attnvis.sources.base import ModelSource
from attnvis.sources.registry import register_source


@register_source("torchvision", lambda spec: spec.startswith("torchvision:"))
def torchvision_source(spec: str, *, weights: str | None = None, image_size=None, random_weights: bool = False,
                **_) -> ModelSource:
    """``torchvision:NAME``: needs ``--weights`` or, explicitly, ``random_weights``."""
    if weights is None and not random_weights:
        raise no_weights_error(spec)
    return load_torchvision(spec.partition(":")[2], weights=weights, image_size=image_size)


def load_torchvision(name: str, weights: str | None = None,
                     image_size: int | tuple[int, int] | None = None) -> ModelSource:
    """A torchvision ViT (``vit_b_16`` ...) or Swin (``swin_t`` ...), random weights or ``weights`` (a state dict).

    A ViT's ``nn.MultiheadAttention`` layers are captured by the registry's MHA
    adapter. torchvision ViTs take square inputs of one fixed size; Swins any
    size (:func:`load_torchvision_swin`).

    Raises:
        InputError: unknown name, non-square size or missing weights file.
        ModelError: not a torchvision ``VisionTransformer`` or the weights do not fit.
    """
    require("torchvision", "--model torchvision:NAME")
    from torchvision import models
    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    if name not in models.list_models():
        raise InputError(f"torchvision has no model {name!r}; its ViTs and Swins: "
                         f"{', '.join(models.list_models(include=['vit_*', 'swin_*']))}")
    size = size2(image_size)
    if name.startswith("swin"):  # Swins take any input size (the windows are padded): no size to build for
        return load_torchvision_swin(name, weights, size)
    if size is not None and size[0] != size[1]:
        raise InputError(f"torchvision ViTs take square inputs; got image size {size[0]}x{size[1]}")
    patch = re.search(r"_(\d+)$", name)  # vit_b_16: 16-pixel patches
    if size is not None and patch:
        check_patch_multiple(size, int(patch.group(1)), f"torchvision:{name}")
    model = models.get_model(name, weights=None, **({} if size is None else {"image_size": size[0]}))
    what = f"torchvision model {name!r} ({type(model).__name__})"
    reject_windowed(model, what)
    if not isinstance(model, VisionTransformer):
        raise ModelError(f"{what} is not a VisionTransformer; attnvis supports torchvision's vit_* models")
    if weights is not None:
        state = read_state_dict(weights)
        if state.get("encoder.pos_embedding", model.encoder.pos_embedding).shape != model.encoder.pos_embedding.shape:
            state = interpolate_embeddings(model.image_size, model.patch_size, state)
        load_weights(model, state, what)
    size = (model.image_size, model.image_size)
    layout = prefix_layout(["cls"], conv_grid(model.conv_proj, size))
    source = ModelSource(model.eval(), example_inputs(size), layout, torchvision_preprocess(name, size),
                         f"torchvision:{name}")
    check_layout(source)
    return source


def load_torchvision_swin(name: str, weights: str | None = None, size: tuple[int, int] | None = None) -> ModelSource:
    """A torchvision ``SwinTransformer`` (``swin_t/s/b``, ``swin_v2_*``) on ``size`` inputs (default: its crop).

    Its ``ShiftedWindowAttention`` modules are captured per block with their
    window layout (:mod:`attnvis.capture.adapters.torchvision_swin`); there is
    no CLS token, each block's windows are stitched into a map.

    Raises:
        ModelError: not a ``SwinTransformer`` (``swin3d_*`` is refused by its
            windowed attention) or the weights do not fit.
    """
    from torchvision import models
    from torchvision.models.swin_transformer import SwinTransformer

    model = models.get_model(name, weights=None)
    what = f"torchvision model {name!r} ({type(model).__name__})"
    reject_windowed(model, what)
    if not isinstance(model, SwinTransformer):
        raise ModelError(f"{what} is not a SwinTransformer; attnvis supports torchvision's vit_* and swin_* models")
    if weights is not None:
        load_weights(model, read_state_dict(weights), what)
    if size is None:
        size = (models.get_model_weights(name).DEFAULT.transforms().crop_size[0],) * 2
    tokens = TokenLayout(grid=conv_grid(model.features[0][0], size), kind="grid")  # features[0]: patch embedding
    source = ModelSource(model.eval(), example_inputs(size), tokens, torchvision_preprocess(name, size),
                         f"torchvision:{name}")
    check_layout(source)
    return source


def torchvision_preprocess(name: str, size: tuple[int, int]) -> Preprocess:
    """The DEFAULT weights' eval transforms (no download: they are metadata), kept in ratio for other sizes."""
    from torchvision.models import get_model_weights

    transforms = get_model_weights(name).DEFAULT.transforms()
    crop, resize = transforms.crop_size[0], transforms.resize_size[0]
    return Preprocess(size=size, mean=tuple(transforms.mean), std=tuple(transforms.std),
                      interpolation=transforms.interpolation.value, crop_pct=crop / resize, resize_short=True)
