"""``torch.nn.MultiheadAttention``: force per-head weights, hand the caller what it asked for.

``nn.TransformerEncoderLayer`` calls its attention with ``need_weights=False``;
the adapter asks for ``need_weights=True, average_attn_weights=False``,
records the (B, heads, Q, K) weights and returns the output the caller
originally requested. For one query row (``recorder.query``) a call without
weights keeps its fused path, and the row is computed beside it from the
query token alone.
"""

from __future__ import annotations

import torch
from torch import nn

from attnvis.capture.registry import Recorder, register_adapter

# MultiheadAttention.forward's parameters after (query, key, value), in order.
_LATER_PARAMS = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


def _example() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    return model, (torch.randn(2, 5, 16),)


def _query_row(module: nn.MultiheadAttention, query: torch.Tensor, row: int) -> torch.Tensor:
    """Query token ``row`` alone, in the module's layout ((B, L, E), (L, B, E) or unbatched (L, E))."""
    batched_first = module.batch_first and query.dim() == 3
    return query[:, row:row + 1] if batched_first else query[row:row + 1]


def _weights_row(module: nn.MultiheadAttention, row: int, query, key, value, kwargs: dict) -> torch.Tensor:
    """Per-head weights of query ``row`` alone, (B, heads, 1, S), by the module's own code.

    ``forward`` is called directly (no hooks) on the one query token: its key
    and value projections run again, but no (L, S) matrix is made.
    """
    mask = kwargs.get("attn_mask")  # is_causal is only a hint beside it: the mask's row says it all
    if mask is not None and mask.dim() >= 2 and mask.size(-2) > 1:
        mask = mask[..., row:row + 1, :]
    _, weights = module.forward(_query_row(module, query, row), key, value, key_padding_mask=kwargs.get("key_padding_mask"),
                                need_weights=True, attn_mask=mask, average_attn_weights=False, is_causal=False)
    return weights


@register_adapter("torch.nn.MultiheadAttention", module_type=nn.MultiheadAttention, example=_example)
def attach_mha(module: nn.MultiheadAttention, path: str, recorder: Recorder) -> list:
    calls: list[tuple[bool, bool, str, tuple, dict]] = []  # (need_weights, average, kind, args, kwargs) per active call
    row = recorder.query

    def pre(_m, args, kwargs):
        kwargs = {**dict(zip(_LATER_PARAMS, args[3:])), **kwargs}
        need, average = kwargs.get("need_weights", True), kwargs.get("average_attn_weights", True)
        calls.append((need, average, "self" if args[0] is args[1] else "cross", args[:3], kwargs))
        if row is not None and not need:  # the caller's fused call stays; the row is computed after it
            return args[:3], kwargs
        return args[:3], {**kwargs, "need_weights": True, "average_attn_weights": False}

    def post(_m, _args, _kwargs, output):
        need, average, kind, args, kwargs = calls.pop()
        out, weights = output  # weights: (B, heads, Q, K), or None for a fused call
        if weights is None:
            q_len = args[0].size(1 if module.batch_first and args[0].dim() == 3 else 0)
            recorder.record(path, _weights_row(module, row, *args, kwargs), kind, type(module).__name__, q_len=q_len)
            return output
        recorder.record(path, weights, kind, type(module).__name__)
        if not need:
            return out, None
        return out, weights.mean(dim=1) if average else weights

    return [
        module.register_forward_pre_hook(pre, with_kwargs=True),
        module.register_forward_hook(post, with_kwargs=True),
    ]
