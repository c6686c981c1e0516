"""Modules that keep their last softmax weights in ``.attn``.

The Annotated Transformer's ``MultiHeadedAttention`` and AoANet's
``MultiHeadedDotAttention`` assign ``self.attn`` (B, heads, Q, K) on every
forward; a forward hook reads it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnvis.capture.registry import Recorder, register_adapter

CLASS_NAMES = ("MultiHeadedAttention", "MultiHeadedDotAttention")


def keeps_attn(module: nn.Module) -> bool:
    return type(module).__name__ in CLASS_NAMES and hasattr(module, "attn")


class MultiHeadedAttention(nn.Module):
    """A small Annotated-Transformer-style attention, the adapter's test example."""

    def __init__(self, h: int, d_model: int):
        super().__init__()
        self.d_k, self.h = d_model // h, h
        self.linears = nn.ModuleList([nn.Linear(d_model, d_model) for _ in range(4)])
        self.attn = None

    def forward(self, query, key, value, mask=None):
        b = query.size(0)
        q, k, v = [lin(x).view(b, -1, self.h, self.d_k).transpose(1, 2) for lin, x in zip(self.linears, (query, key, value))]
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)  # (B, h, Q, K)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e9)
        self.attn = scores.softmax(dim=-1)
        x = (self.attn @ v).transpose(1, 2).reshape(b, -1, self.h * self.d_k)
        return self.linears[-1](x)


class _TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([MultiHeadedAttention(2, 8) for _ in range(2)])

    def forward(self, x, memory):
        x = x + self.layers[0](x, x, x)
        return x + self.layers[1](x, memory, memory)


def _example() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return _TwoLayers().eval(), (torch.randn(2, 4, 8), torch.randn(2, 6, 8))


@register_adapter("MultiHeadedAttention/.attn", predicate=keeps_attn, example=_example)
def attach_dot(module: nn.Module, path: str, recorder: Recorder) -> list:
    def post(m, _args, _out):
        recorder.record(path, m.attn, None, type(m).__name__)

    return [module.register_forward_hook(post)]
