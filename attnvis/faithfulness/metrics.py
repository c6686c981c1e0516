"""The metrics ``attnvis evaluate --metrics`` takes, by name: one table, every entry the same call shape.

Each entry scores a batch: ``score(clf, x, maps, target, masks) -> (values float [B], curves [B, n] or None)``
with ``maps`` at the input's resolution and ``masks`` bool [B, H, W] (``None`` without
``--boxes``/``--masks``). ``higher`` says which way is better.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from attnvis.errors import InputError
from attnvis.faithfulness import _perturbation as perturbation
from attnvis.faithfulness import _road as road
from attnvis.faithfulness import causal, localisation

ROAD_SEED = 0  # evaluate's ROAD noise: reproducible from run to run


@dataclass(frozen=True)
class Metric:
    """One metric of ``attnvis evaluate``.

    Attributes:
        name: the ``--metrics`` name (a column of scores.parquet).
        higher: whether a higher value means a more faithful map.
        needs_masks: a localisation metric (``--boxes`` or ``--masks``).
        curve: what the curve's x axis is (``None``: no curve).
        score: ``(clf, x, maps, target, masks) -> (values [B], curves [B, n] or None)``.
        anchor: the code it equals.
    """

    name: str
    higher: bool
    needs_masks: bool
    curve: str | None
    score: Callable
    anchor: str


def _deletion(clf, x, maps, target, masks):
    curves, auc = causal.deletion(clf, x, maps)
    return auc, curves


def _insertion(clf, x, maps, target, masks):
    curves, auc = causal.insertion(clf, x, maps)
    return auc, curves


def _perturbation(negative: bool):
    def score(clf, x, maps, target, masks):
        hits, _ = perturbation.perturbation(clf, x, maps, target, negative=negative)
        return np.array([perturbation.area(h[None]) for h in hits], np.float32), hits.astype(np.float32)
    return score


def _road(clf, x, maps, target, masks):
    return road.road_combined(clf, x, maps, target, seed=ROAD_SEED), None


def _local(fn):
    def score(clf, x, maps, target, masks):
        return np.asarray(fn(maps, masks), np.float32), None
    return score


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("deletion", False, False, "pixels deleted", _deletion, "RISE CausalMetric('del'), auc"),
    Metric("insertion", True, False, "pixels inserted", _insertion, "RISE CausalMetric('ins', blur), auc"),
    Metric("perturbation", False, False, "pixels removed (most relevant first)", _perturbation(False),
           "Chefer pertubation_eval_from_hdf5.py, positive"),
    Metric("perturbation-negative", True, False, "pixels removed (least relevant first)", _perturbation(True),
           "Chefer pertubation_eval_from_hdf5.py, --neg"),
    Metric("road", True, False, None, _road, "grad-cam ROADCombined (percentiles 20-80, noise 0.01)"),
    Metric("pointing-game", True, True, None, _local(localisation.pointing_game), "Quantus PointingGame"),
    Metric("relevance-mass", True, True, None, _local(localisation.relevance_mass), "Quantus RelevanceMassAccuracy"),
    Metric("relevance-rank", True, True, None, _local(localisation.relevance_rank), "Quantus RelevanceRankAccuracy"),
)}


def check_metrics(names: list[str], have_masks: bool) -> list[Metric]:
    """The :class:`Metric` s named, or one error listing the valid names."""
    if not names:
        raise InputError(f"--metrics is empty; choose from {', '.join(METRICS)}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise InputError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    chosen = [METRICS[n] for n in dict.fromkeys(names)]
    local = [m.name for m in chosen if m.needs_masks]
    if local and not have_masks:
        raise InputError(f"--metrics {local[0]} needs ground truth: give --boxes boxes.json or --masks DIR")
    return chosen
