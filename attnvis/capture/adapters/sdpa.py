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


def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None, enable_gqa=False,
                      query: int | None = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask) with SDPA's conventions, (..., Q, K).

    Boolean masks keep ``True`` positions; float masks are added. Rows with
    every key masked get zero weights, as fused SDPA returns zeros there
    (plain softmax would give NaN). With ``query``, only that row is computed,
    (..., 1, K): its mask row and causal row are the full matrix's.
    """
    if enable_gqa and q.size(-3) != k.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
    first = 0 if query is None else query  # index of the first query row computed
    if query is not None:
        q = q[..., query:query + 1, :]
        if attn_mask is not None and attn_mask.dim() >= 2 and attn_mask.size(-2) > 1:
            attn_mask = attn_mask[..., query:query + 1, :]
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    q_len, k_len = q.size(-2), k.size(-2)
    if is_causal:  # SDPA's causal mask is aligned top-left: query i sees keys 0..i
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(diagonal=first)
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


def sdpa_row(row: int, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """SDPA's output and the weights of query ``row`` alone, (..., 1, K).

    The output is fused SDPA's (no (Q, K) matrix besides its own), except
    under a float mask: PyTorch's exporter fails to decompose masked CPU SDPA
    beneath a caller's reshape (Hugging Face BEiT's relative position bias),
    so that case takes the explicit math, as the full export does.
    """
    if attn_mask is not None and attn_mask.is_floating_point():
        out, _ = sdpa_math(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    else:
        # A mask broadcast over the queries, spelled out: ONNX Runtime's Attention kernel wants one row per query.
        mask = None if attn_mask is None else attn_mask.expand(*attn_mask.shape[:-2], q.size(-2), k.size(-2))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                                             scale=scale, enable_gqa=enable_gqa)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # A query that sees no key: zeros from PyTorch, uniform weights from the exported graph; keep PyTorch's.
        out = out.masked_fill(~attn_mask.any(dim=-1, keepdim=True), 0.0)
    return out, attention_weights(q, k, attn_mask, is_causal, scale, enable_gqa, query=row)


# SDPA's parameters in order, with their defaults (query, key and value have none).
_SDPA_PARAMS = {"query": None, "key": None, "value": None, "attn_mask": None, "dropout_p": 0.0, "is_causal": False,
                "scale": None, "enable_gqa": False}


def _positional(args: tuple, kwargs: dict) -> tuple:
    """SDPA's arguments in its order, however they were passed."""
    return (*args, *(kwargs.get(name, default) for name, default in list(_SDPA_PARAMS.items())[len(args):]))


class SDPAInterception(TorchFunctionMode):
    """Replaces SDPA by :func:`sdpa_math` and records the weights.

    With the recorder's ``query`` set, SDPA itself computes the output and
    only that query's row of weights is computed beside it (:func:`sdpa_row`).
    Inside a module adapter that records its own weights, SDPA runs as it is.
    """

    def __init__(self, recorder: Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.recorder
        if func is not F.scaled_dot_product_attention or rec.suppress:
            return func(*args, **kwargs)
        path = rec.current_path or "sdpa"
        module_type = rec.delegated.get(path, "scaled_dot_product_attention")
        args = _positional(args, kwargs)
        if rec.query is None:
            out, weights = sdpa_math(*args)
            rec.record(path, weights, None, module_type)
        else:  # calls from here run outside this mode: the SDPA inside is the real one
            out, weights = sdpa_row(rec.query, *args)
            rec.record(path, weights, None, module_type, q_len=args[0].size(-2))
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
