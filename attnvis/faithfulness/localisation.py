"""Localisation against ground truth, as Quantus 0.6.0 computes it with its defaults.

Quantus prepares attributions before any localisation metric: ``normalise=True`` divides the
whole batch by its largest absolute value (``normalise_by_max`` over every axis, skipped when all
are 0) and ``abs=False`` keeps the signs; masks are taken as ``bool``. The functions here do the
same, so their results equal Quantus' exactly for the same batch.
"""

from __future__ import annotations

import numpy as np

from attnvis.errors import InputError
from attnvis.faithfulness._model import input_maps


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Quantus ``PointingGame``: a hit when any pixel where the map is maximal lies in the mask, bool [B].

    As in Quantus, an empty mask scores ``True`` (it writes NaN into a bool array).
    """
    a, s = _prepare(maps, masks)
    hit = np.any(s & (a == a.max(axis=-1, keepdims=True)), axis=-1)
    hit[s.sum(-1) == 0] = True
    return hit


def relevance_mass(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Quantus ``RelevanceMassAccuracy``: relevance inside the mask over all relevance, float32 [B] (NaN: empty mask)."""
    a, s = _prepare(maps, masks)
    with np.errstate(invalid="ignore", divide="ignore"):
        mass = (a * s).sum(-1) / a.sum(-1)
    mass[s.sum(-1) == 0] = np.nan
    return mass.astype(np.float32)


def relevance_rank(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Quantus ``RelevanceRankAccuracy``: share of the top-|mask| pixels (by map) inside the mask, float32 [B].

    Ties are ordered as Quantus orders them (``np.argsort(-map)``); NaN for an empty mask.
    """
    a, s = _prepare(maps, masks)
    sizes = s.sum(-1)
    order = np.argsort(-a, axis=-1)
    inside = np.take_along_axis(s, order, axis=-1) & (np.arange(a.shape[1])[None] < sizes[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        rank = inside.sum(-1) / sizes
    rank[sizes == 0] = np.nan
    return rank.astype(np.float32)


def _prepare(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened [B, H*W] maps (normalised as Quantus does) and bool masks."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise InputError(f"masks must be [B, H, W] (bool or uint8), got shape {masks.shape}")
    maps = input_maps(maps, masks.shape[1:], len(masks))
    if not np.all(maps == 0.0):
        maps = np.divide(maps, np.max(np.abs(maps), keepdims=True))
    return maps.reshape(len(maps), -1), masks.astype(bool).reshape(len(masks), -1)
