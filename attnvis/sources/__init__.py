"""Where models come from: a ``--model`` spec resolved to a :class:`ModelSource`.

Specs: ``default`` (the embedded tiny ViT), ``timm:NAME`` and
``torchvision:NAME`` (local ``--weights`` only; nothing is downloaded), a
Hugging Face model directory, ``package.module:factory`` (any ``nn.Module``;
needs an input shape). An ``.onnx`` file made by attnvis is not a source: the
runtime opens it directly. Each kind is one entry of
:mod:`attnvis.sources.registry`; :data:`_ORDER` says which is asked first.
"""

from __future__ import annotations

import math

from attnvis.errors import InputError
from attnvis.metadata import Preprocess, TokenLayout
from attnvis.sources import factory, hf, timm, torchvision  # noqa: F401 - each registers its kind
from attnvis.sources.base import ModelSource, parse_shape
from attnvis.sources.factory import default_source, module_source
from attnvis.sources.registry import find_source

__all__ = ["ModelSource", "default_source", "load_source", "module_source", "parse_shape"]

# Which test is asked first: a directory is a Hugging Face model before it is "a path that exists".
_ORDER = ("default", "timm", "torchvision", "hf", "onnx", "checkpoint", "factory")


def load_source(
    spec: str | None,
    *,
    weights: str | None = None,
    input_shape: str | None = None,
    image_size: tuple[int, int] | None = None,
    tokens: TokenLayout | None = None,
    random_weights: bool = False,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> ModelSource:
    """Resolve a ``--model`` spec to a model in eval mode plus its layout.

    ``timm:NAME`` and ``torchvision:NAME`` need ``weights`` (a local file) or
    ``random_weights=True``: a model with random weights is never made silently.
    ``mean``/``std`` replace the normalization the model carries (recorded in
    its preprocessing); a model that carries none gets ``mean`` (default 0)
    and ``std`` (default 1) at its input size.

    Raises:
        InputError: the spec names nothing that exists or can be imported.
        ModelError: the model cannot be loaded or its family is unsupported.
    """
    spec = spec or "default"
    kind = find_source(spec, _ORDER)
    _check_normalization(mean, std)
    if tokens is not None and kind.name != "factory":
        raise InputError(f"--grid/--prefix-tokens give a package.module:factory model's token layout; --model {spec} "
                         "has its own (leave them out)")
    source = kind.load(spec, weights=weights, input_shape=input_shape, image_size=image_size, tokens=tokens,
                       random_weights=random_weights)
    if mean is not None or std is not None:
        source.preprocess = _normalized(source, mean, std)
    return source


def _check_normalization(mean, std) -> None:
    for flag, values in (("--mean", mean), ("--std", std)):
        if values is not None and (len(values) != 3 or not all(math.isfinite(v) for v in values)):
            raise InputError(f"{flag} {values} is not three finite numbers R,G,B")
    if std is not None and min(std) <= 0:
        raise InputError(f"--std {','.join(map(str, std))}: every value must be positive (images are divided by it)")


def _normalized(source: ModelSource, mean, std) -> Preprocess:
    """``source``'s preprocessing with ``mean``/``std`` where given."""
    from dataclasses import replace

    if source.preprocess is not None:
        return replace(source.preprocess, mean=tuple(mean or source.preprocess.mean),
                       std=tuple(std or source.preprocess.std))
    inputs = source.example_inputs
    if len(inputs) != 1 or inputs[0].dim() != 4:
        raise InputError(f"--mean/--std normalize images; --model {source.name} does not take one (N, C, H, W) image "
                         "input")
    return Preprocess(size=tuple(inputs[0].shape[-2:]), mean=tuple(mean or (0.0,) * 3), std=tuple(std or (1.0,) * 3))
