"""A model's own outputs as named tensors, whatever container it returns them in."""

from __future__ import annotations

import torch


def flatten_outputs(out) -> list[tuple[str, torch.Tensor]]:
    """The model's own tensor outputs with stable names (HF ModelOutput keys kept)."""
    if isinstance(out, torch.Tensor):
        return [("output", out)]
    if isinstance(out, dict):  # includes Hugging Face ModelOutput
        return [(k, v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [(f"output_{i}", v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    raise TypeError(f"model returned {type(out).__name__}; expected a tensor, a tuple of tensors or a dict")
