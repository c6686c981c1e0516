"""The maps ``attnvis evaluate --methods`` scores, by name, each a patch-grid map per image.

``attention`` and ``rollout`` come from the forward pass's attention maps (the last layer's
head-mean CLS row, as ``visualize`` draws it; the attention rollout's CLS row, as
``--rollout`` draws it); the class-specific methods (``gae``, ``grad-rollout``, ...) come from
``attnvis.explain`` where this install has it. ``random`` (uniform noise, seeded per image) is
the baseline a useful map has to beat.
"""

from __future__ import annotations

import zlib

import numpy as np

from attnvis.errors import InputError

FROM_ATTENTION = ("attention", "rollout")
EXPLAIN_METHODS = ("gae", "grad-rollout", "attn-gradcam", "transformer-attribution", "gradcam")
BASELINES = ("random",)


def available() -> tuple[str, ...]:
    """Every method name this install can compute."""
    return FROM_ATTENTION + (EXPLAIN_METHODS if _explain() is not None else ()) + BASELINES


def check_methods(methods: list[str]) -> list[str]:
    """``methods`` unchanged, or one error listing the valid names (and why an explain method is missing)."""
    if not methods:
        raise InputError(f"--methods is empty; choose from {', '.join(available())}")
    for name in methods:
        if name in EXPLAIN_METHODS and _explain() is None:
            raise InputError(f"--methods {name} needs attnvis.explain (class-specific relevance), which this attnvis "
                             f"does not have; choose from {', '.join(available())}")
        if name not in available():
            raise InputError(f"unknown method {name!r}; choose from {', '.join(available())}")
    return methods


def _explain():
    import attnvis

    try:
        return attnvis.explain
    except AttributeError:
        return None


def grid_maps(clf, x: np.ndarray, methods: list[str], keys: list[str], target: np.ndarray) -> dict[str, np.ndarray]:
    """Each method's map of each image, float32 [B, h, w] on the patch grid.

    Args:
        clf: the :class:`~attnvis.faithfulness._model.Classifier` (its session yields the attention maps).
        x: float32 [B, C, H, W] model input.
        keys: the images' keys (seed ``random``).
        target: the class each image is explained for (class-specific methods).
    """
    out = {}
    if any(m in FROM_ATTENTION for m in methods):
        out.update(_from_attention(clf.session, x, [m for m in methods if m in FROM_ATTENTION]))
    for name in methods:
        if name in EXPLAIN_METHODS:
            ex = _explain()(clf.session, x, method=name, target=target)
            out[name] = np.asarray(ex.relevance, np.float32)
        elif name == "random":
            grid = clf.metadata.tokens.grid
            out[name] = np.stack([np.random.default_rng(zlib.crc32(k.encode())).random(grid, np.float32) for k in keys])
    return out


def _from_attention(session, x: np.ndarray, methods: list[str]) -> dict[str, np.ndarray]:
    from attnvis.render.grid import attention_grid
    from attnvis.render.rollout import rollout_row

    meta = session.metadata
    if meta.tokens.grid is None or meta.tokens.kind != "grid":
        raise InputError("this model's keys are not a patch grid: its attention makes no image map to score")
    if any(layer.window is not None for layer in meta.layers):
        raise InputError("windowed attention (Swin) has no CLS row: attention and rollout maps cannot be scored")
    maps = session.run(np.ascontiguousarray(x, np.float32))
    out = {}
    if "attention" in methods:
        out["attention"] = np.stack([attention_grid(maps[-1][b], meta.tokens) for b in range(len(x))])
    if "rollout" in methods:
        if meta.reduction != "none":
            raise InputError(f"rollout needs every layer's full maps; this model was exported with --reduce {meta.reduction}")
        out["rollout"] = np.stack([rollout_row(maps.image(b), meta.tokens).reshape(meta.tokens.grid) for b in range(len(x))])
    return out
