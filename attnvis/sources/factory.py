"""The embedded default model, ``package.module:factory`` specs, model objects handed over in Python,
and the specs that are not sources (an ``.onnx`` file, a bare checkpoint)."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from attnvis.errors import InputError, ModelError
from attnvis.metadata import Preprocess, TokenLayout, size2
from attnvis.sources._common import check_layout
from attnvis.sources.base import ModelSource, parse_shape
from attnvis.sources.registry import register_source

_CHECKPOINTS = (".pth", ".pt", ".bin", ".safetensors")
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@register_source("default", lambda spec: spec in ("", "default"))
def default_source(spec: str = "default", *, image_size=None, **_) -> ModelSource:
    """The embedded tiny ViT (:mod:`attnvis.models.tiny`); on ``image_size`` inputs (a multiple of its
    8-pixel patch) its position embeddings are resampled to the new grid."""
    from dataclasses import replace

    from attnvis.models import tiny
    from attnvis.sources._common import check_patch_multiple, size2

    model, pre, tokens = tiny.load_default_model(), tiny.DEFAULT_PREPROCESS, tiny.DEFAULT_TOKENS
    size = size2(image_size)
    if size is not None and size != pre.size:
        patch = model.config.patch_size
        check_patch_multiple(size, patch, "the default model")
        model = tiny.resize_positions(model, size)
        pre, tokens = replace(pre, size=size), replace(tokens, grid=(size[0] // patch, size[1] // patch))
    return ModelSource(model, (torch.zeros(2, 3, *pre.size),), tokens, pre, "default",
                       extra={"classes": list(tiny.CLASSES)})


@register_source("onnx", lambda spec: Path(spec).suffix.lower() == ".onnx")
def _onnx_is_no_source(spec: str, **_) -> ModelSource:
    if not Path(spec).is_file():
        raise InputError(f"model file not found: {spec}")
    if not _has_attnvis_metadata(spec):
        raise InputError(f"--model {spec} is an ONNX file made elsewhere: instrument it with 'attnvis export --model "
                         f"{spec} --output OUT.onnx' (attnvis.export.instrument_onnx), then pass OUT.onnx to visualize/batch")
    raise InputError(f"--model {spec} is already an ONNX file; pass it to visualize/batch, not export")


def _has_attnvis_metadata(path: str) -> bool:
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # unreadable: the message above still says what to do with an ONNX file
        return True
    return any(p.key == "attnvis.layers" for p in model.metadata_props)


@register_source("checkpoint", lambda spec: Path(spec).suffix.lower() in _CHECKPOINTS or Path(spec).exists())
def _checkpoint_is_no_source(spec: str, **_) -> ModelSource:
    if not Path(spec).exists():
        raise InputError(f"model file not found: {spec}")
    raise InputError(f"--model {spec}: a checkpoint alone does not say which model it is; use timm:NAME or "
                     f"torchvision:NAME with --weights {spec}, or add --infos_path for an AoANet checkpoint")


@register_source("factory", lambda spec: ":" in spec and not spec.startswith(":"))
def factory_source(spec: str, *, input_shape: str | None = None, tokens: TokenLayout | None = None,
                   image_size=None, **_) -> ModelSource:
    """``package.module:factory``: any ``nn.Module`` built by a function; needs ``input_shape``.

    An image model's preprocessing is the one it carries (:func:`carried_preprocess`); a layout
    given as ``tokens`` (or ``model.attnvis_tokens``) is checked against the model's key lengths.
    """
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise InputError(f"--model {spec!r}: cannot import {attr!r} from {module_name!r} ({err})") from None
    if input_shape is None:
        raise InputError(f"--model {spec!r} needs --input-shape B,C,H,W (images) or B,N,D (token sequences)")
    shape = parse_shape(input_shape)
    size = size2(image_size)
    if size is not None and (len(shape) != 4 or size != shape[2:]):
        raise InputError(f"--image-size {size[0]}x{size[1]} does not apply to --model {spec}: a factory model's input "
                         f"size is its --input-shape ({input_shape}); give B,C,H,W there")
    if len(shape) == 4:
        size2(shape[2:])  # the same bound as --image-size
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    example = (torch.randn(max(shape[0], 2), *shape[1:]),)
    tokens = tokens or getattr(model, "attnvis_tokens", None) or TokenLayout(kind="sequence")
    name = "input" if len(shape) == 3 else "pixel_values"
    pre = carried_preprocess(model, shape[2:]) if len(shape) == 4 else None
    source = ModelSource(model.eval(), example, tokens, pre, spec, name)
    if tokens.kind == "grid" and tokens.grid is not None:
        check_layout(source)  # a --grid / --prefix-tokens that does not fit is said here, not when rendering
    return source


def carried_preprocess(model: nn.Module, size: tuple[int, int]) -> Preprocess | None:
    """The preprocessing a model object carries, for ``size`` inputs; None when it carries none.

    ``model.attnvis_preprocess``; a timm model's ``pretrained_cfg`` (mean, std, interpolation,
    crop); a Hugging Face model's ``preprocessor_config.json`` beside its weights (else
    transformers' default 0.5/0.5); a torchvision model's ImageNet normalization.
    """
    from dataclasses import replace

    kind = type(model).__module__.split(".")[0]
    declared = getattr(model, "attnvis_preprocess", None)
    if declared is not None:
        return replace(declared, size=tuple(size))
    if kind == "timm":
        from attnvis.sources.timm import timm_preprocess

        return timm_preprocess(model, tuple(size))
    if kind == "transformers":
        from attnvis.sources.hf import hf_preprocess

        folder = Path(str(getattr(getattr(model, "config", None), "_name_or_path", "") or "."))
        if (folder / "preprocessor_config.json").is_file():
            return hf_preprocess(folder, tuple(size), tuple(size))
        return Preprocess(size=tuple(size), mean=(0.5,) * 3, std=(0.5,) * 3)
    if kind == "torchvision":
        return Preprocess(size=tuple(size), mean=_IMAGENET[0], std=_IMAGENET[1], resize_short=True, crop_pct=0.875)
    return None


def _square(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def module_source(model: nn.Module) -> ModelSource:
    """A :class:`ModelSource` for a model object handed over in Python.

    The embedded tiny ViT, timm, Hugging Face and torchvision ViTs are
    recognized; any other model declares ``model.attnvis_tokens`` (a
    :class:`TokenLayout`) and ``model.attnvis_preprocess`` (a :class:`Preprocess`).

    Raises:
        ModelError: the layout of an unrecognized model is not declared.
    """
    kind = type(model).__module__.split(".")[0]
    if type(model).__name__ == "TinyViT" and type(model).__module__ == "attnvis.models.tiny":
        source = default_source()
        return ModelSource(model.eval(), source.example_inputs, source.tokens, source.preprocess, "TinyViT",
                           extra=source.extra)
    if kind == "timm":
        from attnvis.sources.timm import timm_layout, timm_preprocess

        size = _square(model.patch_embed.img_size) if getattr(model.patch_embed, "img_size", None) else (224, 224)
        tokens, pre = timm_layout(model, size), timm_preprocess(model, size)
    elif kind == "transformers":
        from attnvis.sources.hf import hf_layout

        size = _square(getattr(model.config, "image_size", 224))
        tokens, pre = hf_layout(model, size), Preprocess(size=size, mean=(0.5,) * 3, std=(0.5,) * 3)
    elif kind == "torchvision" and hasattr(model, "patch_size"):
        size = _square(model.image_size)
        tokens = TokenLayout(1, (size[0] // model.patch_size, size[1] // model.patch_size), "grid", 0, ("cls",))
        pre = Preprocess(size=size, mean=_IMAGENET[0], std=_IMAGENET[1], resize_short=True, crop_pct=0.875)
    elif getattr(model, "attnvis_tokens", None) is not None and getattr(model, "attnvis_preprocess", None) is not None:
        tokens, pre = model.attnvis_tokens, model.attnvis_preprocess
    else:
        raise ModelError(f"attnvis does not know how {type(model).__name__}'s tokens map to the image: set "
                         "model.attnvis_tokens (TokenLayout) and model.attnvis_preprocess (Preprocess), or pass a --model spec")
    return ModelSource(model.eval(), (torch.zeros(2, 3, *pre.size),), tokens, pre, type(model).__name__)
