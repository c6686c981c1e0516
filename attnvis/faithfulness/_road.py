"""ROAD: RemOve And Debias (Rong et al., ICML 2022), as pytorch-grad-cam 1.5.7's ``metrics/road.py``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnvis.errors import InputError
from attnvis.faithfulness._model import Classifier, check_inputs, softmax

ORDERS = ("morf", "lerf")
DEFAULT_PERCENTILES = (20, 40, 60, 80)


def removed_pixels(maps: np.ndarray, percentile: float, order: str) -> np.ndarray:
    """The pixels ROAD imputes, bool [B, H, W]: grad-cam's ``RemoveMostRelevantFirst(percentile)``.

    MoRF removes every pixel whose map value is ``>= np.percentile(map, p)`` (so p = 20 removes the
    top 80%, and every pixel tied at the threshold goes); LeRF does the same on ``1 - map``.
    """
    values = maps if order == "morf" else np.float32(1.0) - maps
    flat = values.reshape(len(values), -1)
    thresholds = np.array([np.percentile(v, percentile) for v in flat]).astype(np.float32)  # compared in float32, as torch
    return ~(values < thresholds[:, None, None])


def road(model, x: np.ndarray, maps: np.ndarray, target, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
         order: str = "morf", noise: float = 0.0, *, batch_size: int | None = None, seed: int = 0) -> np.ndarray:
    """ROAD at each percentile: softmax p(target) after imputing the removed pixels, minus before.

    Convention (grad-cam ``ROADMostRelevantFirst(p)`` / ``ROADLeastRelevantFirst(p)`` with
    ``ClassifierOutputSoftmaxTarget``): see :func:`removed_pixels` for which pixels go; they are
    imputed in model-input space by the noisy linear imputer (each the weighted mean of its 8
    neighbours, 1/6 edge and 1/12 diagonal, out-of-image neighbours dropped and the weights
    renormalised; one linear system per image and percentile), then ``noise * N(0, 1)`` is added
    to each imputed value. With ``noise=0`` the result is deterministic and equals grad-cam's.

    Args:
        model: any spec attnvis opens, an open session, or a :class:`Classifier`.
        x: float32 [B, C, H, W] model input.
        maps: float32 [B, H, W] (a [B, h, w] patch grid is upsampled bilinearly).
        target: int [B] (or one int) class whose probability is read.
        percentiles: the percentiles p (0..100).
        order: ``morf`` (most relevant first) or ``lerf`` (least relevant first).
        noise: standard deviation of the imputation noise (grad-cam's default is 0.01).
        batch_size: copies per inference call.
        seed: the noise generator's seed.

    Returns:
        float32 [B, len(percentiles)].
    """
    if order not in ORDERS:
        raise InputError(f"order {order!r} is not one of {', '.join(ORDERS)}")
    scores = _road_probs(Classifier(model, batch_size), x, maps, target, percentiles, (order,), noise, seed)
    return scores[order]


def road_combined(model, x: np.ndarray, maps: np.ndarray, target, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
                  noise: float = 0.01, *, batch_size: int | None = None, seed: int = 0) -> np.ndarray:
    """grad-cam's ``ROADCombined``: (mean over percentiles of LeRF − mean of MoRF) / 2, float32 [B].

    Higher is better: removing the least relevant pixels should keep the score, the most relevant
    should drop it. Same conventions as :func:`road`; the noise defaults to grad-cam's 0.01.
    """
    scores = _road_probs(Classifier(model, batch_size), x, maps, target, percentiles, ORDERS, noise, seed)
    lerf = np.mean(scores["lerf"], axis=1, dtype=np.float32)
    morf = np.mean(scores["morf"], axis=1, dtype=np.float32)
    return ((lerf - morf) / np.float32(2)).astype(np.float32)


def _road_probs(clf: Classifier, x, maps, target, percentiles, orders, noise: float, seed: int) -> dict[str, np.ndarray]:
    """Per order, float32 [B, P]: p(target | imputed) − p(target | x); all copies in one batched run."""
    x, maps, target = check_inputs(x, maps, target)
    if target is None:
        raise InputError("road needs a target class per image")
    percentiles = [float(p) for p in percentiles]
    if not percentiles or not all(0 <= p <= 100 for p in percentiles):
        raise InputError(f"percentiles must be in [0, 100], got {percentiles}")
    from attnvis.faithfulness._impute import impute

    rng = np.random.default_rng(seed)
    count, per_image = len(x), len(orders) * len(percentiles)
    removed = np.stack([removed_pixels(maps, p, o) for o in orders for p in percentiles], axis=1)  # [B, O*P, H, W]
    imputed: dict[int, np.ndarray] = {}

    def build(b: int, ks: np.ndarray) -> np.ndarray:
        if b not in imputed:  # one image's systems solved together (in parallel), then its copies consumed
            imputed.clear()
            imputed[b] = impute(np.repeat(x[b:b + 1], per_image, axis=0), removed[b], noise, rng)
        return imputed[b][ks]

    before = softmax(clf.logits(x))[np.arange(count), target]
    after = _pick(softmax(clf.copies(count, per_image, build)), target)
    diff = (after - before[:, None]).reshape(count, len(orders), len(percentiles))
    return {o: diff[:, i].astype(np.float32) for i, o in enumerate(orders)}


def _pick(probs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """probs [B, n, K] → [B, n] of each image's target class."""
    return np.take_along_axis(probs, target[:, None, None].astype(np.int64), axis=2)[:, :, 0]
