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
BASELINES = ("random",)


def _explain_table() -> tuple[str, ...]:
    """The class-specific methods of ``attnvis.explain`` (none where this install lacks it)."""
    try:
        from attnvis.explain import METHODS
    except ImportError:
        return ()
    return tuple(name for name in METHODS if name not in FROM_ATTENTION)


EXPLAIN_METHODS = _explain_table() or ("gae", "grad-rollout")


def available() -> tuple[str, ...]:
    """Every method name this install can compute."""
    return FROM_ATTENTION + _explain_table() + BASELINES


def check_methods(methods: list[str]) -> list[str]:
    """``methods`` unchanged, or one error listing the valid names (and why an explain method is missing)."""
    if not methods:
        raise InputError(f"--methods is empty; choose from {', '.join(available())}")
    for name in methods:
        if name in EXPLAIN_METHODS and not _explain_table():
            raise InputError(f"--methods {name} needs attnvis.explain (class-specific relevance), which this attnvis "
                             f"does not have; choose from {', '.join(available())}")
        if name not in available():
            raise InputError(f"unknown method {name!r}; choose from {', '.join(available())}")
    return methods


def open_explainer(spec: str, methods: list[str], device: str):
    """The explanation session for the class-specific ``methods`` (``None`` when none is asked); refuses a model
    that cannot be explained with ``attnvis.explain``'s own one-line errors, before any work."""
    wanted = [m for m in methods if m in EXPLAIN_METHODS]
    if not wanted:
        return None
    from attnvis.runtime.explain import open_explainer as open_

    return open_(spec, wanted, device=device)


def grid_maps(clf, x: np.ndarray, methods: list[str], keys: list[str], target: np.ndarray,
              explainer=None) -> dict[str, np.ndarray]:
    """Each method's map of each image, float32 [B, h, w] on the patch grid.

    Args:
        clf: the :class:`~attnvis.faithfulness._model.Classifier` (its session yields the attention maps).
        x: float32 [B, C, H, W] model input.
        keys: the images' keys (seed ``random``).
        target: the class each image is explained for (class-specific methods).
        explainer: from :func:`open_explainer`, for the class-specific methods.
    """
    out = {}
    if any(m in FROM_ATTENTION for m in methods):
        out.update(_from_attention(clf.session, x, [m for m in methods if m in FROM_ATTENTION]))
    if explainer is not None:
        from attnvis.runtime.explain import run_explanation

        ex = run_explanation(explainer, x, np.asarray(target, np.int64))
        out.update({name: np.asarray(ex.maps[name], np.float32) for name in methods if name in EXPLAIN_METHODS})
    for name in methods:
        if name == "random":
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
