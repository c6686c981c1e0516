"""``torch.nn.MultiheadAttention``: force per-head weights, hand the caller what it asked for.

``nn.TransformerEncoderLayer`` calls its attention with ``need_weights=False``;
the adapter asks for ``need_weights=True, average_attn_weights=False``,
records the (B, heads, Q, K) weights and returns the output the caller
originally requested.
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


@register_adapter("torch.nn.MultiheadAttention", module_type=nn.MultiheadAttention, example=_example)
def attach_mha(module: nn.MultiheadAttention, path: str, recorder: Recorder) -> list:
    calls: list[tuple[bool, bool, str]] = []  # (need_weights, average, kind) per active call

    def pre(_m, args, kwargs):
        kwargs = {**dict(zip(_LATER_PARAMS, args[3:])), **kwargs}
        kind = "self" if args[0] is args[1] else "cross"
        calls.append((kwargs.get("need_weights", True), kwargs.get("average_attn_weights", True), kind))
        return args[:3], {**kwargs, "need_weights": True, "average_attn_weights": False}

    def post(_m, _args, _kwargs, output):
        need, average, kind = calls.pop()
        out, weights = output  # weights: (B, heads, Q, K)
        recorder.record(path, weights, kind, type(module).__name__)
        if not need:
            return out, None
        return out, weights.mean(dim=1) if average else weights

    return [
        module.register_forward_pre_hook(pre, with_kwargs=True),
        module.register_forward_hook(post, with_kwargs=True),
    ]
