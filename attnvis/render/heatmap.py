"""Render attention maps into heatmaps and overlays (checked wrappers over the kernels).

Everything takes and returns RGB uint8. The result equals OpenCV's chain
``cv2.resize(grid, (W, H), INTER_LINEAR)`` → min-max normalize →
``np.uint8(255 * norm)`` → colormap → ``cv2.addWeighted(image, 1 - alpha,
heat, alpha, 0)`` up to float32 rounding (see ``tests/render``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from attnvis.render.colormaps import DEFAULT_COLORMAP, colormap_table

_threading_set = False
# numba's workqueue layer (the project's choice) must not run two parallel kernels at once:
# concurrent callers of the parallel variant take turns; the serial variant needs no lock.
_PARALLEL_LOCK = threading.Lock()
_PACKED: dict[str, np.ndarray] = {}


@dataclass(frozen=True)
class Scale:
    """Normalization scope: per image (``None``) or a fixed ``(vmin, vmax)``.

    With a fixed range (e.g. global over all layers of a run) values outside
    it are clipped, and ``vmin == vmax`` renders level 0 everywhere.
    """

    vmin: float
    vmax: float


def _kernels(parallel: bool):
    """Import the numba module lazily; pick the workqueue layer before any parallel run."""
    global _threading_set
    if parallel and not _threading_set:
        import numba

        numba.config.THREADING_LAYER = "workqueue"  # never OpenMP/TBB (project rule)
        _threading_set = True
    from attnvis.render import _kernels as k

    return k


def _packed_table(colormap: str) -> np.ndarray:
    """The colormap as uint32 [256] words ``r | g << 8 | b << 16``, the kernels' table (raises on an unknown name)."""
    words = _PACKED.get(colormap)
    if words is None:
        rgb = colormap_table(colormap).astype(np.uint32)
        words = _PACKED[colormap] = rgb[:, 0] | rgb[:, 1] << 8 | rgb[:, 2] << 16
    return words


def check_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """``image`` as a C-contiguous uint8 [H, W, 3] array; ValueError naming ``what`` otherwise."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        raise ValueError(f"{what} must be uint8 [H, W, 3] RGB, got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def _check_grid(grid: np.ndarray, name: str = "grid") -> np.ndarray:
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.shape[0] == 0 or grid.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D [h, w] array, got shape {grid.shape}")
    grid = np.ascontiguousarray(grid, dtype=np.float32)
    if not np.isfinite(grid).all():
        raise ValueError(f"{name} contains NaN or infinite values; attention maps must be finite")
    return grid


def _check_out(out: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    if len(out) != 2 or any(not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.shape != shape
                            or not a.flags.c_contiguous for a in out):
        raise ValueError(f"out must be two C-contiguous uint8 arrays of the image's shape {shape}")
    if np.shares_memory(out[0], out[1]):
        raise ValueError("out's heatmap and overlay arrays must not overlap")
    return out[0], out[1]


def _check_alpha(alpha: float) -> float:
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return float(alpha)


def _range_args(scale: Scale | None) -> tuple[float, float, bool]:
    if scale is None:
        return 0.0, 0.0, False
    if not (np.isfinite(scale.vmin) and np.isfinite(scale.vmax)) or scale.vmax < scale.vmin:
        raise ValueError(f"normalization range must be finite with vmin <= vmax, got {scale}")
    return float(scale.vmin), float(scale.vmax), True


def render_map(
    grid: np.ndarray,
    image: np.ndarray,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = 0.5,
    *,
    scale: Scale | None = None,
    parallel: bool = True,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Upsample a small map to the image, colour it and blend it.

    Args:
        grid: float32 [h, w] map (e.g. the CLS row reshaped to the patch grid).
        image: uint8 [H, W, 3] RGB image; left unmodified.
        colormap: one of :data:`attnvis.render.COLORMAPS`.
        alpha: weight of the heatmap in the overlay, in [0, 1].
        scale: ``None`` to min-max normalize over this upsampled map, or a
            fixed :class:`Scale` (global normalization across maps).
        parallel: use all cores over output rows; pass ``False`` when the
            caller already parallelizes over images or layers (threads: the
            kernel releases the GIL).
        out: optional ``(heatmap, overlay)`` arrays to write into, each
            C-contiguous uint8 of the image's shape: a caller rendering map
            after map reuses memory that is already mapped and in cache.

    Returns:
        ``(heatmap, overlay)``, both uint8 [H, W, 3] RGB.

    Raises:
        ValueError: wrong dtype/shape, non-finite map, alpha or colormap out of range.
    """
    grid, image = _check_grid(grid), check_rgb(image)
    lut32, alpha = _packed_table(colormap), _check_alpha(alpha)
    vmin, vmax, use_range = _range_args(scale)
    heat, over = (np.empty_like(image), np.empty_like(image)) if out is None else _check_out(out, image.shape)
    k = _kernels(parallel)
    height = image.shape[0]
    args = (grid, image.ravel(), height, lut32, alpha, vmin, vmax, use_range, heat.ravel(), over.ravel())
    if parallel:
        with _PARALLEL_LOCK:
            k.render_grid_parallel(*args)
    else:
        k.render_grid_serial(*args)
    return heat, over


def render_heatmap(
    grid: np.ndarray,
    size_hw: tuple[int, int],
    colormap: str = DEFAULT_COLORMAP,
    *,
    scale: Scale | None = None,
    parallel: bool = True,
) -> np.ndarray:
    """The heatmap alone: uint8 [H, W, 3] RGB of ``grid`` upsampled to ``size_hw``."""
    height, width = (int(v) for v in size_hw)
    if height <= 0 or width <= 0:
        raise ValueError(f"size_hw must be two positive integers, got {size_hw}")
    blank = np.zeros((height, width, 3), np.uint8)
    return render_map(grid, blank, colormap, 1.0, scale=scale, parallel=parallel)[0]


def _check_regions(weights: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    boxes = np.ascontiguousarray(boxes, dtype=np.float32)
    if weights.ndim != 1 or boxes.shape != (weights.shape[0], 4):
        raise ValueError(f"need weights [N] and boxes [N, 4] xyxy, got {weights.shape} and {boxes.shape}")
    if not (np.isfinite(weights).all() and np.isfinite(boxes).all()):
        raise ValueError("region weights and boxes must be finite")
    return weights, boxes


def region_values(weights: np.ndarray, boxes: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Per-pixel sum of the weights of the boxes covering it: float32 [H, W].

    A pixel is covered when its centre lies in ``[x1, x2) × [y1, y2)``, so
    integer boxes paint exactly ``values[y1:y2, x1:x2]``.
    """
    weights, boxes = _check_regions(weights, boxes)
    return _kernels(False).paint_regions(weights, boxes, int(size_hw[0]), int(size_hw[1]))


def render_regions(
    weights: np.ndarray,
    boxes: np.ndarray,
    image: np.ndarray,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = 0.5,
    *,
    scale: Scale | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint region attention (e.g. bottom-up boxes of a captioner) and blend it.

    Args:
        weights: float32 [N] attention over the regions.
        boxes: float32 [N, 4] boxes ``x1, y1, x2, y2`` in image pixels.
        image: uint8 [H, W, 3] RGB image; left unmodified.
        colormap: one of :data:`attnvis.render.COLORMAPS`.
        alpha: weight of the heatmap in the overlay, in [0, 1].
        scale: ``None`` (min-max over the painted map) or a fixed :class:`Scale`.

    Returns:
        ``(heatmap, overlay)``, both uint8 [H, W, 3] RGB.
    """
    image = check_rgb(image)
    values = region_values(weights, boxes, image.shape[:2])
    lut32, alpha = _packed_table(colormap), _check_alpha(alpha)
    vmin, vmax, use_range = _range_args(scale)
    heat, over = np.empty_like(image), np.empty_like(image)
    _kernels(False).shade_values_serial(
        values, image.ravel(), lut32, alpha, vmin, vmax, use_range, heat.ravel(), over.ravel()
    )
    return heat, over


def global_scale(grids) -> Scale:
    """One :class:`Scale` spanning every map given (global normalization across layers/heads).

    Bilinear upsampling never leaves a grid's [min, max], so the grids' range
    is the upsampled maps' range.
    """
    lows, highs = zip(*((float(np.min(g)), float(np.max(g))) for g in grids)) if len(grids) else ((), ())
    if not lows:
        raise ValueError("global_scale needs at least one map")
    return Scale(vmin=min(lows), vmax=max(highs))
