"""One attention row per layer and step, captured while the model's own attention stays fused.

A language model loaded with ``attn_implementation=ROWS`` runs every
attention through :func:`rows_attention`: the output comes from PyTorch's
``scaled_dot_product_attention`` exactly as Hugging Face's ``sdpa`` path
computes it, and for the layers a :class:`RowRecorder` watches, the softmax
of the *last query position alone* is computed beside it, as the eager path
computes that row (``q·kᵀ·scaling + mask``, softmax in float32). The prompt's
pass therefore never builds a ``[heads, N, N]`` matrix; a step's single
query costs ``[heads, N]``.
"""

from __future__ import annotations

import threading

import torch

ROWS = "attnvis_rows"

_active = threading.local()


class RowRecorder:
    """Collects, per forward pass, the last query row of each watched attention module.

    Attributes:
        steps: one list per forward pass, of ``(B, heads, keys)`` float32 tensors, one per layer in order.
    """

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.index = {id(m): i for i, m in enumerate(modules)}
        self.layers = len(modules)
        self.steps: list[list[torch.Tensor | None]] = []

    def __enter__(self) -> "RowRecorder":
        _active.recorder = self
        return self

    def __exit__(self, *exc) -> None:
        _active.recorder = None

    def add(self, module: torch.nn.Module, row: torch.Tensor) -> None:
        i = self.index.get(id(module))
        if i is None:
            return
        if i == 0 or not self.steps:
            self.steps.append([None] * self.layers)
        self.steps[-1][i] = row


def _last_row(module, query, key, attention_mask, scaling, softcap) -> torch.Tensor:
    """``(B, heads, keys)``: the eager softmax of the last query position (GQA keys repeated)."""
    groups = query.shape[1] // key.shape[1]
    k = key if groups == 1 else key.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query[:, :, -1:], k.transpose(2, 3)) * scaling  # (B, heads, 1, keys)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, -1:, :k.shape[2]]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)[:, :, 0].float()


def rows_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An attention interface: ``sdpa``'s output; the last query row recorded for watched modules."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    recorder = getattr(_active, "recorder", None)
    if recorder is not None and id(module) in recorder.index:
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        recorder.add(module, _last_row(module, query, key, attention_mask, scale, kwargs.get("softcap")))
    if kwargs.get("softcap") is not None:  # sdpa has no logit soft-capping (Gemma 2): the eager formula
        from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

        out, _ = eager_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                         scaling=scaling, softcap=kwargs["softcap"])
        return out, None
    kwargs.pop("output_attentions", None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def register() -> str:
    """Make :data:`ROWS` an attention implementation Hugging Face models can load with (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ROWS, rows_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ROWS, sdpa_mask)
    return ROWS
