"""Attention rollout (Abnar & Zuidema, 2020) and DINO-style mass thresholding.

Rollout, per layer in call order: fuse the heads of ``[heads, Q, K]`` into
``A`` (mean, max or min), optionally discard the weakest links, add the
identity for the residual path, re-normalize every row to sum 1 and chain
``R = Â_L · … · Â_2 · Â_1`` (a later layer multiplies from the left, since
token ``i`` of layer ``L`` mixes the tokens of layer ``L - 1``).

Choices, where published tools differ:

- Rows are normalized with the row sum broadcast along the row
  (``sum(-1, keepdims=True)``); normalizing by a broadcast row vector of sums
  scales columns instead, a known bug of the popular reference code.
- ``discard_ratio`` removes, in each query row of the fused map, the
  ``floor(ratio * K)`` smallest weights (ties: the later key first). Per row,
  because every row is a distribution of the same mass; a threshold over the
  whole matrix would wipe out whole rows of diffuse queries. Nothing is
  protected: the reference code spares only entry (0, 0), the CLS token's
  attention to itself, which the identity added next restores anyway for
  every token, so the special case is not needed; a discarded row still keeps
  its residual path and normalizes to a valid distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

HEAD_FUSIONS = ("mean", "max", "min")


def _fuse(layer: np.ndarray, head_fusion: str, dtype=np.float64) -> np.ndarray:
    """[heads, Q, K] (or [Q, K]) → [Q, K] of ``dtype`` (read-only use: may be ``layer`` itself).

    The mean is summed in ``dtype`` as the heads are read: no copy of every head.
    """
    layer = np.asarray(layer)
    if layer.ndim == 2:
        return layer.astype(dtype, copy=False)
    if head_fusion == "mean":
        return np.add.reduce(layer, axis=0, dtype=dtype) / dtype(layer.shape[0])
    return {"max": np.max, "min": np.min}[head_fusion](layer, axis=0).astype(dtype, copy=False)


def _discard(fused: np.ndarray, ratio: float) -> np.ndarray:
    """Zero the floor(ratio * K) smallest weights of every row (a copy)."""
    count = int(np.floor(ratio * fused.shape[-1]))
    if count == 0:
        return fused
    keys = np.arange(fused.shape[-1])[::-1]  # ties: the later key is dropped first
    order = np.lexsort((np.broadcast_to(keys, fused.shape), fused), axis=-1)  # ascending by weight
    out = fused.copy()
    np.put_along_axis(out, order[:, :count], 0.0, axis=-1)
    return out


def _check_rollout_args(maps: Sequence[np.ndarray], head_fusion: str, discard_ratio: float) -> None:
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio <= 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1], got {discard_ratio}")
    if len(maps) == 0:
        raise ValueError("attention_rollout needs at least one layer's map")
    shapes = sorted({tuple(np.shape(layer)) for layer in maps})
    squares = {shape[-2:] for shape in shapes if len(shape) in (2, 3) and shape[-1] == shape[-2]}
    if len(squares) != 1 or any(len(shape) not in (2, 3) or shape[-1] != shape[-2] for shape in shapes):
        raise ValueError(f"rollout needs square self-attention maps [heads, T, T] of one size T, got shapes {shapes}")


def attention_rollout(
    maps: Sequence[np.ndarray], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> np.ndarray:
    """Attention rollout over layers.

    Args:
        maps: per layer in call order, ``[heads, T, T]`` (or ``[T, T]`` if the
            heads were already reduced) for one image.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        discard_ratio: share of each row's weakest weights set to zero before
            the identity is added (0 keeps all).

    Returns:
        float32 ``[T, T]`` joint attention, rows summing to 1. Row ``cls_index``
        with the prefix columns dropped is the map to draw: pass the result to
        :func:`attnvis.render.attention_grid`.

    Raises:
        ValueError: bad fusion name or ratio, no layers, non-square or mismatched maps.
    """
    _check_rollout_args(maps, head_fusion, discard_ratio)
    tokens = np.shape(maps[0])[-1]
    result = np.eye(tokens)
    identity = np.eye(tokens)
    for layer in maps:
        fused = _discard(_fuse(layer, head_fusion), discard_ratio) + identity  # residual path
        fused /= fused.sum(axis=-1, keepdims=True)  # rows sum to 1
        result = fused @ result  # later layers on the left
    return result.astype(np.float32)


def threshold_mask(values: np.ndarray, keep: float = 0.6) -> np.ndarray:
    """Keep the smallest set of highest values holding ``keep`` of the total mass (as DINO's figures).

    Args:
        values: non-negative array of any shape (e.g. a [h, w] attention grid).
        keep: share of the total mass to keep, in [0, 1].

    Returns:
        bool array of ``values.shape``: True for the kept entries. Ties are
        broken by position (earlier first); zeros are never needed, so never kept.

    Raises:
        ValueError: ``keep`` outside [0, 1], negative or non-finite values.
    """
    values = np.asarray(values)
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be in [0, 1], got {keep}")
    flat = values.astype(np.float64).ravel()
    if not np.isfinite(flat).all() or (flat < 0).any():
        raise ValueError("threshold_mask needs finite, non-negative values (attention weights)")
    order = np.argsort(-flat, kind="stable")  # largest first
    sorted_vals = flat[order]
    mass_before = np.concatenate(([0.0], np.cumsum(sorted_vals)[:-1]))  # mass of strictly larger-ranked entries
    mask = np.zeros(flat.shape, bool)
    mask[order] = mass_before < keep * flat.sum()
    mask &= flat > 0
    return mask.reshape(values.shape)


def rollout_row(maps: Sequence[np.ndarray], tokens, head_fusion: str = "mean") -> np.ndarray:
    """The row of :func:`attention_rollout` that is drawn, without computing the whole [T, T] product.

    The CLS row of ``Â_L · … · Â_1`` is ``e_cls · Â_L · … · Â_1``: a vector
    times each layer's matrix, T² work per layer instead of T³ (for a model
    without CLS, the mean over query rows: the uniform vector instead).

    Args:
        maps: per layer ``[heads, T, T]`` or ``[T, T]`` for one image.
        tokens: the model's :class:`attnvis.metadata.TokenLayout`.
        head_fusion: as :func:`attention_rollout` (no discarding).

    Returns:
        float32 [T - prefix]: the prefix columns dropped, reshapeable to the patch grid.
    """
    _check_rollout_args(maps, head_fusion, 0.0)
    size = np.shape(maps[0])[-1]
    vector = np.full(size, 1.0 / size)
    if tokens.cls_index is not None:
        vector = np.zeros(size)
        vector[tokens.cls_index] = 1.0
    for layer in reversed(maps):  # later layers multiply from the left: the vector meets them first
        if head_fusion == "mean":
            heads = np.asarray(layer, np.float32)
            vector = _mean_step(np.ascontiguousarray(heads if heads.ndim == 3 else heads[None]), vector)
            continue
        fused = _fuse(layer, head_fusion, np.float32)
        weights = vector / (fused.sum(axis=-1, dtype=np.float64) + 1.0)  # the identity adds 1 to every row's sum
        vector = weights @ fused + weights  # vector · (fused + I) / row sums, without forming either
    return vector[tokens.prefix_tokens:].astype(np.float32)


def cls_rows_with_rollout(maps: Sequence[np.ndarray], tokens) -> tuple[np.ndarray, np.ndarray] | None:
    """Every layer's head-mean CLS row and the rollout row of one image, in one compiled call.

    What a map store keeps per image (:mod:`attnvis.batch.store`), where
    calling :func:`attnvis.render.attention_grid` per layer and
    :func:`rollout_row` costs more in Python than in arithmetic: row ``i``
    equals ``attention_grid(maps[i], tokens).ravel()`` (the heads' float32 sum
    in head order, divided once, as ``np.add.reduce``), and the rollout row
    equals ``rollout_row(maps, tokens)``, bit for bit.

    Args:
        maps: per layer ``[heads, T, T]`` float32 for one image.
        tokens: the model's :class:`attnvis.metadata.TokenLayout`.

    Returns:
        (float32 [layers, T - prefix], float32 [T - prefix]), or ``None`` where
        this path does not apply: no CLS token, no patch grid, or maps that are
        not all float32 ``[heads, T, T]`` of one shape (the general functions then).
    """
    if tokens.cls_index is None or tokens.grid is None or not maps:
        return None
    shape = np.shape(maps[0])
    if len(shape) != 3 or shape[1] != shape[2] or shape[2] != tokens.prefix_tokens + tokens.grid[0] * tokens.grid[1]:
        return None
    if any(not isinstance(m, np.ndarray) or m.dtype != np.float32 or m.shape != shape for m in maps):
        return None
    if not 0 <= tokens.cls_index < shape[1]:
        return None
    layers = tuple(np.ascontiguousarray(m) for m in maps)  # one array type: numba's homogeneous tuple
    rows = np.empty((len(layers), shape[2] - tokens.prefix_tokens), np.float32)
    vector = _rows_and_rollout(layers, tokens.cls_index, tokens.prefix_tokens, rows)
    return rows, vector[tokens.prefix_tokens:].astype(np.float32)


@njit(cache=True, nogil=True)
def _rows_and_rollout(layers, cls, prefix, rows):
    """Fill ``rows`` [layers, T - prefix] with each layer's head-mean CLS row; return the rollout's vector (float64 [T])."""
    heads, size = layers[0].shape[0], layers[0].shape[2]
    for i in range(len(layers)):
        layer = layers[i]
        for k in range(prefix, size):
            total = layer[0, cls, k]  # float32 sums in head order, as np.add.reduce over the head axis
            for h in range(1, heads):
                total += layer[h, cls, k]
            rows[i, k - prefix] = total / np.float32(heads)
    vector = np.zeros(size)
    vector[cls] = 1.0
    for i in range(len(layers) - 1, -1, -1):  # as rollout_row: the last layer meets the vector first
        vector = _mean_step(layers[i], vector)
    return vector


@njit(cache=True, nogil=True)
def _mean_step(layer, vector):
    """``vector · (mean_h layer[h] + I)`` with every row divided by its sum, in one pass over ``layer`` [heads, T, T].

    Row by row: the heads' sum (float64), its total (+1 for the identity),
    then the row's share of the product. Neither the fused matrix nor the
    normalized one is ever stored: one read of the maps, in cache. The total
    runs in four independent sums, so that it is not one long chain of
    dependent additions (LLVM keeps IEEE order and would not split it).
    """
    heads, size = layer.shape[0], layer.shape[2]
    out = np.zeros(size)
    row = np.empty(size)
    for q in range(layer.shape[1]):
        for k in range(size):
            row[k] = layer[0, q, k]
        for h in range(1, heads):
            for k in range(size):
                row[k] += layer[h, q, k]
        t0 = t1 = t2 = t3 = 0.0
        k = 0
        while k + 4 <= size:
            t0 += row[k]
            t1 += row[k + 1]
            t2 += row[k + 2]
            t3 += row[k + 3]
            k += 4
        while k < size:
            t0 += row[k]
            k += 1
        weight = vector[q] / (((t0 + t1) + (t2 + t3)) / heads + 1.0)
        scale = weight / heads  # the mean's 1/heads, applied once per row
        for k in range(size):
            out[k] += scale * row[k]
        out[q] += weight
    return out
