"""Plain NumPy references for the render kernels (slow, obvious, independent of numba)."""

from __future__ import annotations

import cv2
import numpy as np

F32 = np.float32


def axis_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV INTER_LINEAR taps: half-pixel centres, clamped borders, float32 weights."""
    scale = 1.0 / (dst / src)  # cv::resize uses 1 / inv_scale in double
    pos = ((np.arange(dst) + 0.5) * scale - 0.5).astype(F32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0.astype(F32)).astype(F32)
    frac[i0 < 0] = 0
    i0[i0 < 0] = 0
    clamp = i0 >= src - 1
    frac[clamp] = 0
    i0[clamp] = src - 1
    return i0, np.minimum(i0 + 1, src - 1), frac


def resize_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Separable bilinear resize, horizontal pass first, float32 (no FMA)."""
    x0, x1, fx = axis_taps(grid.shape[1], width)
    y0, y1, fy = axis_taps(grid.shape[0], height)
    rows = grid[:, x0] * (F32(1) - fx) + grid[:, x1] * fx  # (h, W)
    return rows[y0] * (F32(1) - fy)[:, None] + rows[y1] * fy[:, None]  # (H, W)


def levels(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """np.uint8(255 * min-max(values)); a constant map gives 0; a fixed range clips."""
    lo = values.min() if vmin is None else F32(vmin)
    hi = values.max() if vmax is None else F32(vmax)
    if not hi > lo:
        return np.zeros(values.shape, np.uint8)
    norm = np.clip((values - lo) / (hi - lo), F32(0), F32(1))
    return np.uint8(F32(255) * norm)


def blend(image: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    """cv2.addWeighted(image, 1 - alpha, heat, alpha, 0) emulated: fma in float64, round half even."""
    a_img = np.float64(F32(1.0 - alpha))
    hb = (heat.astype(F32) * F32(alpha)).astype(np.float64)
    return np.rint((image.astype(np.float64) * a_img + hb).astype(F32)).astype(np.uint8)


def render(grid, image, lut, alpha=0.5, vmin=None, vmax=None):
    """The whole chain in NumPy: (heatmap, overlay), RGB."""
    values = resize_bilinear(grid.astype(F32), image.shape[0], image.shape[1])
    heat = lut[levels(values, vmin, vmax)]
    return heat, blend(image, heat, alpha)


def opencv_chain(grid, image, colormap=cv2.COLORMAP_JET, alpha=0.5):
    """The OpenCV chain the issue names, RGB in and out; also returns the levels."""
    up = cv2.resize(grid, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    lo, hi = up.min(), up.max()
    norm = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    level = np.uint8(255 * norm)
    heat = np.ascontiguousarray(cv2.applyColorMap(level, colormap)[:, :, ::-1])
    return heat, cv2.addWeighted(image, 1 - alpha, heat, alpha, 0), level


def paint_regions(weights, boxes, height, width):
    """Sum of box weights over pixels whose centre is in [x1, x2) x [y1, y2)."""
    out = np.zeros((height, width), np.float64)
    centres_y = np.arange(height) + 0.5
    centres_x = np.arange(width) + 0.5
    for w, (x1, y1, x2, y2) in zip(weights, boxes):
        rows = (centres_y >= y1) & (centres_y < y2)
        cols = (centres_x >= x1) & (centres_x < x2)
        out[np.ix_(rows, cols)] += w
    return out.astype(F32)


def grid_from_full(attn, prefix, grid_hw, cls_index, head=None):
    """Reference head/query reduction the slow way: reduce full maps first, then take the row."""
    maps = attn.astype(np.float64)
    maps = maps.mean(axis=0) if head is None else maps[head]  # (Q, K)
    row = maps[cls_index] if cls_index is not None else maps.mean(axis=0)
    return row[prefix:].reshape(grid_hw).astype(F32)
