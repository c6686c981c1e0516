"""The module that is exported: the user's model plus its attention maps as outputs."""

from __future__ import annotations

import torch
from torch import nn

from attnvis.capture.context import capture_attention, no_maps_error
from attnvis.metadata import REDUCTIONS, LayerInfo, TokenLayout
from attnvis.capture.registry import Recorder


def reduce_map(weights: torch.Tensor, reduction: str, tokens: TokenLayout) -> torch.Tensor:
    """Apply an in-graph reduction to one layer's (B, heads, Q, K) weights.

    ``mean-heads`` gives (B, Q, K); ``cls`` gives (B, K - prefix): the CLS row
    averaged over heads without the prefix columns, or the mean over query
    rows when the model has no CLS token.
    """
    if reduction == "none":
        return weights
    if reduction == "mean-heads":
        return weights.mean(dim=1)
    if reduction == "cls":
        keys = weights[..., tokens.prefix_tokens:]  # (B, heads, Q, K - prefix)
        if tokens.cls_index is None:
            return keys.mean(dim=(1, 2))
        return keys[:, :, tokens.cls_index, :].mean(dim=1)
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")


def flatten_outputs(out) -> list[tuple[str, torch.Tensor]]:
    """The model's own tensor outputs with stable names (HF ModelOutput keys kept)."""
    if isinstance(out, torch.Tensor):
        return [("output", out)]
    if isinstance(out, dict):  # includes Hugging Face ModelOutput
        return [(k, v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [(f"output_{i}", v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    raise TypeError(f"model returned {type(out).__name__}; expected a tensor, a tuple of tensors or a dict")


class AttentionOutputs(nn.Module):
    """``forward(*inputs) -> (*model_outputs, attn_0, …, attn_{L-1})``.

    Use inside :func:`capture_attention` on the same model: the recorder
    passed in is filled by the adapters during ``self.model(*inputs)``.
    """

    def __init__(self, model: nn.Module, recorder: Recorder, tokens: TokenLayout, reduction: str = "none"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        self.model, self.recorder, self.tokens, self.reduction = model, recorder, tokens, reduction

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.recorder.clear()
        outputs = [t for _, t in flatten_outputs(self.model(*inputs))]
        maps = [reduce_map(w, self.reduction, self.tokens) for w in self.recorder.weights]
        return (*outputs, *maps)


def probe(model: nn.Module, inputs: tuple) -> tuple[list[str], list[LayerInfo]]:
    """Run once eagerly: the model's output names and the captured layers."""
    with capture_attention(model) as recorder, torch.no_grad():
        names = [name for name, _ in flatten_outputs(model(*inputs))]
    if not recorder.layers:
        raise no_maps_error(model)
    return names, list(recorder.layers)
