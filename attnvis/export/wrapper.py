"""The module that is exported: the user's model plus its attention maps as outputs."""

from __future__ import annotations

import torch
from torch import nn

from attnvis.capture.context import capture_attention, no_maps_error
from attnvis.capture.outputs import flatten_outputs
from attnvis.metadata import REDUCTIONS, LayerInfo, TokenLayout
from attnvis.capture.registry import Recorder
from attnvis.export.windows import reduce_window_map


def reduce_map(weights: torch.Tensor, reduction: str, tokens: TokenLayout) -> torch.Tensor:
    """Apply an in-graph reduction to one layer's (B, heads, Q, K) weights.

    ``mean-heads`` gives (B, Q, K); ``cls`` gives (B, K - prefix): the CLS row
    averaged over heads without the prefix columns, or the mean over query
    rows when the model has no CLS token. For ``cls`` the weights may be the
    CLS row alone, (B, heads, 1, K), as :func:`capture_for` records them.
    """
    if reduction == "none":
        return weights
    if reduction == "mean-heads":
        return weights.mean(dim=1)
    if reduction == "cls":
        if tokens.cls_index is None:
            return weights.mean(dim=(1, 2))[:, tokens.prefix_tokens:]
        row = weights[:, :, 0] if weights.size(2) == 1 else weights[:, :, tokens.cls_index]  # (B, heads, K)
        return row[..., tokens.prefix_tokens:].mean(dim=1)
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")


def capture_for(model: nn.Module, reduction: str, tokens: TokenLayout):
    """:func:`capture_attention` as an export with ``reduction`` needs it.

    For ``cls`` on a model with a CLS token only the CLS query's row is
    captured, computed from each layer's q and k: the exported graph then
    holds no (N, N) weights besides the model's own fused attention
    (12 layers × 6 heads × 1,370² floats, 540 MB an image, for a DINOv2-S at 518 px).
    """
    query = tokens.cls_index if reduction == "cls" else None
    return capture_attention(model, query=query)


class AttentionOutputs(nn.Module):
    """``forward(*inputs) -> (*model_outputs, attn_0, …, attn_{L-1})``.

    Use inside :func:`capture_for` on the same model with the same reduction:
    the recorder passed in is filled by the adapters during ``self.model(*inputs)``.
    """

    def __init__(self, model: nn.Module, recorder: Recorder, tokens: TokenLayout, reduction: str = "none"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        self.model, self.recorder, self.tokens, self.reduction = model, recorder, tokens, reduction

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.recorder.clear()
        outputs = [t for _, t in flatten_outputs(self.model(*inputs))]
        maps = [reduce_map(w, self.reduction, self.tokens) if info.window is None
                else reduce_window_map(w, self.reduction, info.window)  # Swin: (B, windows, heads, w², w²)
                for w, info in zip(self.recorder.weights, self.recorder.layers)]
        return (*outputs, *maps)


def probe(model: nn.Module, inputs: tuple, reduction: str, tokens: TokenLayout) -> tuple[list[str], list[LayerInfo]]:
    """Run once eagerly: the model's output names and the captured layers."""
    with capture_for(model, reduction, tokens) as recorder, torch.no_grad():
        names = [name for name, _ in flatten_outputs(model(*inputs))]
    if not recorder.layers:
        raise no_maps_error(model)
    return names, list(recorder.layers)
