"""How far to trust a map: perturbation and localisation metrics (``attnvis evaluate``).

``from attnvis import faithfulness as F``; every metric follows its anchor's code, named in its
docstring, and every perturbation metric feeds its masked copies through one batched session:

- :func:`road`, :func:`road_combined` — pytorch-grad-cam's ROAD (``metrics/road.py``).
- :func:`deletion`, :func:`insertion` — RISE's ``CausalMetric``.
- :func:`perturbation` — Chefer's positive / negative perturbation test.
- :func:`pointing_game`, :func:`relevance_mass`, :func:`relevance_rank` — Quantus' localisation metrics.
- :data:`METRICS` — the metrics by the name ``attnvis evaluate --metrics`` takes.
"""

from attnvis._lazy import lazy_attributes

_LAZY = {
    "road": "attnvis.faithfulness._road",
    "road_combined": "attnvis.faithfulness._road",
    "deletion": "attnvis.faithfulness.causal",
    "insertion": "attnvis.faithfulness.causal",
    "perturbation": "attnvis.faithfulness._perturbation",
    "pointing_game": "attnvis.faithfulness.localisation",
    "relevance_mass": "attnvis.faithfulness.localisation",
    "relevance_rank": "attnvis.faithfulness.localisation",
    "Classifier": "attnvis.faithfulness._model",
    "METRICS": "attnvis.faithfulness.metrics",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
