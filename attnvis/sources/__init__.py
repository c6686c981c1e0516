"""Where models come from: a ``--model`` spec resolved to a :class:`ModelSource`.

Specs: ``default`` (the embedded tiny ViT), ``timm:NAME`` and
``torchvision:NAME`` (local ``--weights`` only; nothing is downloaded), a
Hugging Face model directory, ``package.module:factory`` (any ``nn.Module``;
needs an input shape). An ``.onnx`` file made by attnvis is not a source: the
runtime opens it directly. Each kind is one entry of
:mod:`attnvis.sources.registry`; :data:`_ORDER` says which is asked first.
"""

from __future__ import annotations

from attnvis.metadata import TokenLayout
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
) -> ModelSource:
    """Resolve a ``--model`` spec to a model in eval mode plus its layout.

    ``timm:NAME`` and ``torchvision:NAME`` need ``weights`` (a local file) or
    ``random_weights=True``: a model with random weights is never made silently.

    Raises:
        InputError: the spec names nothing that exists or can be imported.
        ModelError: the model cannot be loaded or its family is unsupported.
    """
    spec = spec or "default"
    kind = find_source(spec, _ORDER)
    return kind.load(spec, weights=weights, input_shape=input_shape, image_size=image_size, tokens=tokens,
                     random_weights=random_weights)
