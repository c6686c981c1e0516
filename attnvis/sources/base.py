"""A model ready to export: :class:`ModelSource`, what every loader in :mod:`attnvis.sources` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnvis.errors import InputError
from attnvis.metadata import Preprocess, TokenLayout


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
