"""Any module that calls ``F.scaled_dot_product_attention``.

A ``TorchFunctionMode`` intercepts the call wherever it was imported from
(monkeypatching ``F`` misses ``from torch.nn.functional import
scaled_dot_product_attention``) and computes the explicit math, so the
softmax weights exist as a tensor that can be recorded and exported.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from attnvis.capture.registry import Recorder, register_context_adapter


def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None, enable_gqa=False) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask) with SDPA's conventions, (..., Q, K).

    Boolean masks keep ``True`` positions; float masks are added. Rows with
    every key masked get zero weights, as fused SDPA returns zeros there
    (plain softmax would give NaN).
    """
    if enable_gqa and q.size(-3) != k.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    q_len, k_len = q.size(-2), k.size(-2)
    if is_causal:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    weights = scores.softmax(dim=-1)
    if attn_mask is None:  # unmasked or causal: every row keeps at least one key
        return weights
    all_masked = scores.amax(dim=-1, keepdim=True) == float("-inf")
    return weights.masked_fill(all_masked, 0.0)


def sdpa_math(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """The explicit computation; returns (output, weights). Dropout is not applied (eval only)."""
    weights = attention_weights(q, k, attn_mask, is_causal, scale, enable_gqa)
    if enable_gqa and v.size(-3) != weights.size(-3):
        v = v.repeat_interleave(weights.size(-3) // v.size(-3), dim=-3)
    return weights @ v, weights


class SDPAInterception(TorchFunctionMode):
    """Replaces SDPA by :func:`sdpa_math` and records the weights."""

    def __init__(self, recorder: Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        out, weights = sdpa_math(*args, **kwargs)
        if self.recorder.suppress == 0:  # not already captured by a module adapter
            self.recorder.record(self.recorder.current_path or "sdpa", weights, None, "scaled_dot_product_attention")
        return out


class _SDPABlock(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)


def _example() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return nn.Sequential(_SDPABlock(), _SDPABlock()).eval(), (torch.randn(2, 5, 16),)


@contextlib.contextmanager
def _intercept(recorder: Recorder):
    with SDPAInterception(recorder):
        yield


register_context_adapter("torch.nn.functional.scaled_dot_product_attention", _intercept, example=_example)
