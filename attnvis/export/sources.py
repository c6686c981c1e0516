"""Where models come from: ``--model`` specs resolved to a :class:`ModelSource`.

Specs: ``default`` (the embedded tiny ViT), ``package.module:factory`` (any
``nn.Module``; needs an input shape), a Hugging Face model directory,
``timm:NAME`` and ``torchvision:NAME`` (local ``--weights`` only; nothing is
downloaded). An ``.onnx`` file made by attnvis is not a source: the runtime
opens it directly.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import torch
from torch import nn

from attnvis.errors import InputError, ModelError
from attnvis.export.metadata import Preprocess, TokenLayout


@dataclass
class ModelSource:
    """A PyTorch model ready to export, with what the renderer needs to know.

    ``input_name`` names the single input; models with several inputs get
    ``{input_name}_{i}`` (see :meth:`input_names`).
    """

    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    tokens: TokenLayout
    preprocess: Preprocess | None
    name: str
    input_name: str = "pixel_values"
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"classes": [...]}, kept in the metadata

    def input_names(self) -> list[str]:
        if len(self.example_inputs) == 1:
            return [self.input_name]
        return [f"{self.input_name}_{i}" for i in range(len(self.example_inputs))]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"2,3,224,224"`` → (2, 3, 224, 224); a clear error otherwise."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise InputError(f"--input-shape {text!r} is not B,C,H,W or B,N,D with positive integers")
    return shape


def default_source() -> ModelSource:
    from attnvis.models import tiny

    pre = tiny.DEFAULT_PREPROCESS
    return ModelSource(tiny.load_default_model(), (torch.zeros(2, 3, *pre.size),), tiny.DEFAULT_TOKENS, pre, "default",
                       extra={"classes": list(tiny.CLASSES)})


def factory_source(spec: str, input_shape: str | None, tokens: TokenLayout | None) -> ModelSource:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise InputError(f"--model {spec!r}: cannot import {attr!r} from {module_name!r} ({err})") from None
    if input_shape is None:
        raise InputError(f"--model {spec!r} needs --input-shape B,C,H,W (images) or B,N,D (token sequences)")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    shape = parse_shape(input_shape)
    example = (torch.randn(max(shape[0], 2), *shape[1:]),)
    tokens = tokens or getattr(model, "attnvis_tokens", None) or TokenLayout(kind="sequence")
    name = "input" if len(shape) == 3 else "pixel_values"
    return ModelSource(model.eval(), example, tokens, None, spec, name)


def load_source(
    spec: str | None,
    *,
    weights: str | None = None,
    input_shape: str | None = None,
    image_size: tuple[int, int] | None = None,
    tokens: TokenLayout | None = None,
) -> ModelSource:
    """Resolve a ``--model`` spec to a model in eval mode plus its layout.

    Raises:
        InputError: the spec names nothing that exists or can be imported.
        ModelError: the model cannot be loaded or its family is unsupported.
    """
    if spec in (None, "", "default"):
        return default_source()
    if spec.startswith(("timm:", "torchvision:")):
        from attnvis.export import zoo

        family, _, name = spec.partition(":")
        load = zoo.load_timm if family == "timm" else zoo.load_torchvision
        return load(name, weights=weights, image_size=image_size)
    path = Path(spec)
    if path.is_dir():
        from attnvis.export import zoo

        return zoo.load_hf(path, image_size=image_size)
    if path.suffix.lower() == ".onnx":
        raise InputError(f"--model {spec} is already an ONNX file; pass it to visualize/batch, not export")
    if path.suffix.lower() in (".pth", ".pt", ".bin", ".safetensors") or path.exists():
        if not path.exists():
            raise InputError(f"model file not found: {spec}")
        raise InputError(f"--model {spec}: a checkpoint alone does not say which model it is; use timm:NAME or torchvision:NAME with --weights {spec}, or add --infos_path for an AoANet checkpoint")
    if ":" in spec and not spec.startswith(":"):
        return factory_source(spec, input_shape, tokens)
    raise InputError(f"--model {spec!r} is not a file, a directory, 'default', timm:NAME, torchvision:NAME or package.module:factory")


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


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
    from attnvis.export import zoo

    kind = type(model).__module__.split(".")[0]
    if type(model).__name__ == "TinyViT" and type(model).__module__ == "attnvis.models.tiny":
        source = default_source()
        return ModelSource(model.eval(), source.example_inputs, source.tokens, source.preprocess, "TinyViT", extra=source.extra)
    if kind == "timm":
        size = _square(model.patch_embed.img_size) if getattr(model.patch_embed, "img_size", None) else (224, 224)
        tokens, pre = zoo.timm_layout(model, size), zoo.timm_preprocess(model, size)
    elif kind == "transformers":
        size = _square(getattr(model.config, "image_size", 224))
        mean, std = (0.5,) * 3, (0.5,) * 3
        tokens, pre = zoo.hf_layout(model, size), Preprocess(size=size, mean=mean, std=std)
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
