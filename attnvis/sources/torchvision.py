"""torchvision ViTs (``vit_b_16`` ...), random weights or a local state dict; never downloaded."""

from __future__ import annotations

from attnvis._optional import require
from attnvis.errors import InputError, ModelError
from attnvis.metadata import Preprocess
from attnvis.sources._common import (check_layout, conv_grid, example_inputs, load_weights, no_weights_error,
                                     prefix_layout, read_state_dict, reject_windowed, size2)
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
    """A torchvision ViT (``vit_b_16`` ...), random weights or ``weights`` (local state dict).

    Its ``nn.MultiheadAttention`` layers are captured by the registry's MHA
    adapter. torchvision ViTs take square inputs of one fixed size.

    Raises:
        InputError: unknown name, non-square size or missing weights file.
        ModelError: not a torchvision ``VisionTransformer`` or the weights do not fit.
    """
    require("torchvision", "--model torchvision:NAME")
    from torchvision import models
    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    if name not in models.list_models():
        raise InputError(f"torchvision has no model {name!r}; its ViTs: {', '.join(models.list_models(include='vit_*'))}")
    size = size2(image_size)
    if size is not None and size[0] != size[1]:
        raise InputError(f"torchvision ViTs take square inputs; got image size {size[0]}x{size[1]}")
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


def torchvision_preprocess(name: str, size: tuple[int, int]) -> Preprocess:
    """The DEFAULT weights' eval transforms (no download: they are metadata), kept in ratio for other sizes."""
    from torchvision.models import get_model_weights

    transforms = get_model_weights(name).DEFAULT.transforms()
    crop, resize = transforms.crop_size[0], transforms.resize_size[0]
    return Preprocess(size=size, mean=tuple(transforms.mean), std=tuple(transforms.std),
                      interpolation=transforms.interpolation.value, crop_pct=crop / resize, resize_short=True)
