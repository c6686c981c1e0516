"""Positive and negative perturbation (Chefer et al., CVPR 2021), as Transformer-Explainability's
``baselines/ViT/pertubation_eval_from_hdf5.py`` with ``scale='per'``."""

from __future__ import annotations

import numpy as np

from attnvis.errors import InputError
from attnvis.faithfulness._model import Classifier, check_inputs

FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # share of pixels removed at each step


def perturbation(model, x: np.ndarray, maps: np.ndarray, target, negative: bool = False, baseline="black", *,
                 batch_size: int | None = None) -> tuple[np.ndarray, float]:
    """Chefer's perturbation test: is the model still right with the most (or least) relevant pixels gone?

    Convention (the script above, ``scale='per'``): at step ``i`` the ``int(H*W * 0.1*i)`` pixels
    with the highest map values (``negative=True``: the lowest) are removed from the **clean**
    image (steps are not cumulative), all channels, and set to ``baseline``; ``hits[b, i]`` says
    whether the top-1 class then equals ``target[b]`` (step 0: the clean image). The AUC is
    ``np.trapezoid(hits.mean(0), x=[0, .1, ..., .9]) * 100``, the author's rule
    (Transformer-Explainability issue #31). Positive: lower is better; negative: higher is better.

    Args:
        baseline: ``"black"``: a pixel of value 0 **in image space**, i.e. ``(0 - mean) / std`` per
            channel through the model's recorded preprocessing (the script's ``_data.scatter_(-1, idx, 0)``
            before ``normalize``); a float: that value in model-input space.

    Returns:
        (hits bool [B, 10], auc float).
    """
    clf = Classifier(model, batch_size)
    x, maps, target = check_inputs(x, maps, target)
    if target is None:
        raise InputError("perturbation needs a target class per image")
    fill = _baseline(clf, baseline, x.shape[1])
    count, pixels = len(x), maps.shape[1] * maps.shape[2]
    values = maps.reshape(count, -1)
    order = np.argsort(values if negative else -values, axis=1, kind="stable")  # most (least) relevant first
    rank = np.empty((count, pixels), np.int64)
    rank[np.arange(count)[:, None], order] = np.arange(pixels)
    removed = np.array([int(pixels * f) for f in FRACTIONS])

    def build(b: int, ks: np.ndarray) -> np.ndarray:
        gone = rank[b][None] < removed[ks][:, None]  # [k, H*W]
        flat = x[b].reshape(x.shape[1], -1)
        copies = np.where(gone[:, None], fill[None, :, None], flat[None])
        return copies.reshape(len(ks), *x.shape[1:]).astype(np.float32)

    predicted = clf.copies(count, len(FRACTIONS), build).argmax(-1)  # top-1 of the logits
    hits = predicted == target[:, None]
    return hits, area(hits)


def area(hits: np.ndarray) -> float:
    """``np.trapezoid(hits.mean(0), x=FRACTIONS) * 100`` (written out: ``np.trapz`` is gone from NumPy 2.x)."""
    y = hits.mean(0)
    dx = np.diff(np.asarray(FRACTIONS))
    return float((dx * (y[1:] + y[:-1]) / 2.0).sum() * 100)


def _baseline(clf: Classifier, baseline, channels: int) -> np.ndarray:
    """The value a removed pixel takes in model-input space, float32 [C]."""
    if isinstance(baseline, str):
        if baseline != "black":
            raise InputError(f"baseline {baseline!r} is not 'black' or a number (a value in model-input space)")
        pre = clf.metadata.preprocess
        if pre is None:
            raise InputError("baseline 'black' needs the model's recorded preprocessing (mean, std); this model has "
                             "none: give the baseline as a number in model-input space")
        mean, std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
        return ((np.float32(0) - mean) / std).astype(np.float32)
    return np.full(channels, baseline, np.float32)
