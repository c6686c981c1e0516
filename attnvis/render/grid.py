"""From captured attention to a 2-D map over the patch grid.

The rendered row is the CLS token's attention with the prefix columns
(CLS, distillation, registers) dropped, or the mean over query rows when the
model has no CLS token. Heads are reduced on that row only: averaging the
full [heads, Q, K] maps first would cost Q times more for the same result.
"""

from __future__ import annotations

import numpy as np

from attnvis.metadata import TokenLayout


def _layout_grid(tokens: TokenLayout) -> tuple[int, int]:
    if tokens.grid is None:
        raise ValueError(f"token layout has no patch grid (kind {tokens.kind!r}); use render_regions for region keys")
    return int(tokens.grid[0]), int(tokens.grid[1])


def _check_keys(k_len: int, tokens: TokenLayout) -> None:
    h, w = _layout_grid(tokens)
    if k_len != tokens.prefix_tokens + h * w:
        raise ValueError(f"key length {k_len} does not match {tokens.prefix_tokens} prefix + {h}x{w} grid")


def _select_heads(attn: np.ndarray, head: int | None) -> np.ndarray:
    """[heads, ...] → the chosen head, or every head for a later mean (axis 0 kept)."""
    if head is None:
        return attn
    if not 0 <= head < attn.shape[0]:
        raise ValueError(f"head {head} out of range: this layer has {attn.shape[0]} heads (0..{attn.shape[0] - 1})")
    return attn[head : head + 1]


def _query_row(attn: np.ndarray, tokens: TokenLayout) -> np.ndarray:
    """[..., Q, K] → [..., K - prefix]: the CLS row, or the mean over queries."""
    patches = attn[..., tokens.prefix_tokens :]
    if tokens.cls_index is None:
        return patches.mean(axis=-2, dtype=np.float32)
    if not 0 <= tokens.cls_index < attn.shape[-2]:
        raise ValueError(f"cls_index {tokens.cls_index} out of range for {attn.shape[-2]} query rows")
    return patches[..., tokens.cls_index, :]


def attention_grid(attn: np.ndarray, tokens: TokenLayout, head: int | None = None) -> np.ndarray:
    """One image's captured attention → float32 map [h, w] over the patch grid.

    Args:
        attn: ``[heads, Q, K]`` (full capture), ``[Q, K]`` (already averaged
            over heads: reduction ``"mean-heads"``) or ``[K - prefix]``
            (reduction ``"cls"``: the CLS row averaged over heads, prefix
            columns dropped). A leading batch axis of 1 is accepted.
        tokens: the model's token layout (prefix tokens, grid, CLS index).
        head: ``None`` averages the heads; an index picks one head (only for
            ``[heads, Q, K]`` input, since other inputs have no head axis).

    Returns:
        float32 [h, w], C-contiguous.

    Raises:
        ValueError: shapes that do not match ``tokens``, or ``head`` out of range.
    """
    attn = np.asarray(attn)
    if attn.ndim == 4 and attn.shape[0] == 1:
        attn = attn[0]  # (1, heads, Q, K) as the runtime returns it per image
    h, w = _layout_grid(tokens)
    if attn.ndim == 1:
        row = _reduced_row(attn, tokens, head)
    elif attn.ndim in (2, 3):
        if attn.ndim == 2 and head is not None:
            raise ValueError(f"head={head} asked for, but the map [Q, K] {attn.shape} was already averaged over heads")
        _check_keys(attn.shape[-1], tokens)
        full = attn if attn.ndim == 3 else attn[None]  # (heads, Q, K)
        row = _head_mean(_query_row(_select_heads(full, head), tokens))
    else:
        raise ValueError(f"attention must be [heads, Q, K], [Q, K] or [K - prefix], got shape {attn.shape}")
    return np.ascontiguousarray(row, dtype=np.float32).reshape(h, w)


def head_grids(attn: np.ndarray, tokens: TokenLayout) -> np.ndarray:
    """Every head's grid of one image's ``[heads, Q, K]`` map → float32 [heads, h, w].

    The same values as :func:`attention_grid` with ``head=0, 1, ...``, from
    one slice of the map instead of one call per head.
    """
    attn = np.asarray(attn)
    if attn.ndim == 4 and attn.shape[0] == 1:
        attn = attn[0]
    if attn.ndim != 3:
        raise ValueError(f"per-head grids need a [heads, Q, K] map, got shape {attn.shape}")
    h, w = _layout_grid(tokens)
    _check_keys(attn.shape[-1], tokens)
    return np.ascontiguousarray(_query_row(attn, tokens), dtype=np.float32).reshape(attn.shape[0], h, w)


def _head_mean(rows: np.ndarray) -> np.ndarray:
    """``rows.mean(axis=0)`` in float32, bit for bit, without ``np.mean``'s Python overhead.

    ``np.mean`` sums along the axis in float32 and divides the sum by the
    count once; so does this (a float32 quotient equals the float64 one
    rounded to float32, so the count's type does not matter).
    """
    return np.add.reduce(rows, axis=0, dtype=np.float32) / np.float32(rows.shape[0])


def _reduced_row(attn: np.ndarray, tokens: TokenLayout, head: int | None) -> np.ndarray:
    """A ``cls``-reduced row [K - prefix] (the export dropped the prefix columns)."""
    if head is not None:
        raise ValueError(f"head={head} asked for, but the map was reduced in-graph ('cls'): export with --reduce none")
    h, w = _layout_grid(tokens)
    if attn.shape[0] != h * w:
        raise ValueError(f"reduced row length {attn.shape[0]} does not match a {h}x{w} grid ({h * w} patches)")
    return attn


def attention_grids(attn: np.ndarray, tokens: TokenLayout, head: int | None = None) -> np.ndarray:
    """Batched :func:`attention_grid`: ``[B, heads, Q, K]``/``[B, Q, K]``/``[B, K - prefix]`` → float32 [B, h, w]."""
    attn = np.asarray(attn)
    if attn.ndim not in (2, 3, 4):
        raise ValueError(f"batched attention must be [B, heads, Q, K], [B, Q, K] or [B, K - prefix], got {attn.shape}")
    h, w = _layout_grid(tokens)
    out = np.empty((attn.shape[0], h, w), np.float32)
    for b in range(attn.shape[0]):
        out[b] = attention_grid(attn[b], tokens, head)
    return out
