"""numba kernels: small map → heatmap and overlay in one pass over the output.

Pure functions on arrays, compiled on first call (``cache=True``) and never at
import. Each kernel has a serial variant (for callers that parallelize over
images or layers from threads: the kernels release the GIL) and a ``prange``
variant parallel over output rows. The thin checking wrappers are in
:mod:`attnvis.render.heatmap`; plain NumPy references are in ``tests/render``.

Arithmetic follows OpenCV so that the results match its chain
``resize(INTER_LINEAR) → min-max → uint8(255 * norm) → applyColorMap →
addWeighted``: float32 throughout, half-pixel centres with clamped borders,
truncation to uint8, and ``addWeighted``'s fused multiply-add with
round-half-to-even (emulated exactly in float64).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_F1 = np.float32(1.0)
_F255 = np.float32(255.0)


@njit(cache=True, nogil=True)
def axis_coeffs(src: int, dst: int):
    """OpenCV INTER_LINEAR taps along one axis: (i0, i1, w1), each [dst]."""
    i0 = np.empty(dst, np.int64)
    i1 = np.empty(dst, np.int64)
    w1 = np.empty(dst, np.float32)
    scale = 1.0 / (dst / src)  # as cv::resize: 1 / inv_scale, in double
    for d in range(dst):
        f = np.float32((d + 0.5) * scale - 0.5)
        s = int(np.floor(f))
        f = f - np.float32(s)
        if s < 0:
            s, f = 0, np.float32(0.0)
        if s >= src - 1:
            s, f = src - 1, np.float32(0.0)
        i0[d] = s
        i1[d] = min(s + 1, src - 1)
        w1[d] = f
    return i0, i1, w1


@njit(cache=True, nogil=True)
def resize_rows(grid, width):
    """Horizontal pass: grid [h, w] float32 → [h, width] float32."""
    h, w = grid.shape
    x0, x1, fx = axis_coeffs(w, width)
    out = np.empty((h, width), np.float32)
    for r in range(h):
        for x in range(width):
            out[r, x] = grid[r, x0[x]] * (_F1 - fx[x]) + grid[r, x1[x]] * fx[x]
    return out


@njit(cache=True, nogil=True)
def _row_values(rows, r0, r1, fy, buf):
    """Vertical pass for one output row into buf [W] float32."""
    b0 = _F1 - fy
    for x in range(buf.shape[0]):
        buf[x] = rows[r0, x] * b0 + rows[r1, x] * fy


@njit(cache=True, nogil=True, fastmath={"nnan", "ninf", "nsz"})
def _minmax(buf):
    """(min, max) of a finite float32 [n] array.

    Four independent accumulators let the loop pipeline (a single one is
    latency bound, ~6x slower); compare-only, so the flags change nothing.
    """
    n = buf.shape[0]
    l0 = l1 = l2 = l3 = h0 = h1 = h2 = h3 = buf[0]
    for x in range(0, n - n % 4, 4):
        l0, l1, l2, l3 = min(l0, buf[x]), min(l1, buf[x + 1]), min(l2, buf[x + 2]), min(l3, buf[x + 3])
        h0, h1, h2, h3 = max(h0, buf[x]), max(h1, buf[x + 1]), max(h2, buf[x + 2]), max(h3, buf[x + 3])
    lo, hi = min(min(l0, l1), min(l2, l3)), max(max(h0, h1), max(h2, h3))
    for x in range(n - n % 4, n):
        lo, hi = min(lo, buf[x]), max(hi, buf[x])
    return lo, hi


@njit(cache=True, nogil=True)
def _row_minmax(rows, r0, r1, fy, buf):
    _row_values(rows, r0, r1, fy, buf)
    return _minmax(buf)


@njit(cache=True, nogil=True)
def _levels(vals, lo, span, levels):
    """levels [W] int32 = uint8(255 * clip((vals - lo) / span)); 0 when span is 0."""
    if span > 0:
        for x in range(vals.shape[0]):
            norm = (vals[x] - lo) / span  # divide (not multiply) to match NumPy bit for bit
            norm = min(max(norm, np.float32(0.0)), _F1)  # only bites with a fixed range
            levels[x] = np.int32(_F255 * norm)  # truncation, as np.uint8(255 * norm)
    else:
        levels[:] = 0


@njit(cache=True, nogil=True)
def _blend(image_row, heat_row, a_img, a_heat, over_row):
    """cv2.addWeighted(image, a_img, heat, a_heat, 0) on flat [3W] uint8 rows.

    OpenCV computes fma(img, a_img, round32(heat * a_heat)) in float32 and
    rounds half to even; float64 holds the fma exactly, then one float32
    rounding. ``a_img`` is float64 holding a float32 value. The default
    alpha 0.5 takes an integer path with the same results, 2x faster.
    """
    if a_heat == np.float32(0.5):
        for i in range(image_row.shape[0]):
            total = np.int32(image_row[i]) + np.int32(heat_row[i])
            half = total >> 1
            over_row[i] = np.uint8(half + (total & half & 1))  # .5 rounds to even, as cvRound
        return
    for i in range(image_row.shape[0]):
        hb = np.float64(np.float32(np.float32(heat_row[i]) * a_heat))
        t = np.float32(np.float64(image_row[i]) * a_img + hb)
        over_row[i] = np.uint8(np.int32(np.rint(t)))  # alpha in [0, 1]: t in [0, 255]


@njit(cache=True, nogil=True)
def _shade_row(vals, lo, span, lut, image_row, a_img, a_heat, levels, heat_row, over_row):
    """One output row: values [W] float32 → heat_row, over_row flat [3W] uint8."""
    _levels(vals, lo, span, levels)
    for x in range(vals.shape[0]):
        lv = levels[x]
        heat_row[3 * x] = lut[lv, 0]
        heat_row[3 * x + 1] = lut[lv, 1]
        heat_row[3 * x + 2] = lut[lv, 2]
    _blend(image_row, heat_row, a_img, a_heat, over_row)


@njit(cache=True, nogil=True)
def _range(rmin, rmax, vmin, vmax, use_range):
    lo = np.float32(vmin) if use_range else rmin.min()
    hi = np.float32(vmax) if use_range else rmax.max()
    return lo, hi - lo if hi > lo else np.float32(0.0)


@njit(cache=True, nogil=True)
def render_grid_serial(grid, image, lut, alpha, vmin, vmax, use_range, heat, over):
    """grid [h, w] float32, image [H, 3W] uint8 (RGB rows, flat) → heat, over [H, 3W] uint8 (in place)."""
    H, W = image.shape[0], image.shape[1] // 3
    rows = resize_rows(grid, W)
    y0, y1, fy = axis_coeffs(grid.shape[0], H)
    buf = np.empty(W, np.float32)
    rmin = np.empty(H, np.float32)
    rmax = np.empty(H, np.float32)
    if not use_range:
        for y in range(H):
            rmin[y], rmax[y] = _row_minmax(rows, y0[y], y1[y], fy[y], buf)
    lo, span = _range(rmin, rmax, vmin, vmax, use_range)
    a_img, a_heat = np.float64(np.float32(1.0 - alpha)), np.float32(alpha)
    levels = np.empty(W, np.int32)
    for y in range(H):
        _row_values(rows, y0[y], y1[y], fy[y], buf)
        _shade_row(buf, lo, span, lut, image[y], a_img, a_heat, levels, heat[y], over[y])


@njit(cache=True, nogil=True, parallel=True)
def render_grid_parallel(grid, image, lut, alpha, vmin, vmax, use_range, heat, over):
    """As :func:`render_grid_serial`, parallel over output rows."""
    H, W = image.shape[0], image.shape[1] // 3
    rows = resize_rows(grid, W)
    y0, y1, fy = axis_coeffs(grid.shape[0], H)
    rmin = np.empty(H, np.float32)
    rmax = np.empty(H, np.float32)
    if not use_range:
        for y in prange(H):
            buf = np.empty(W, np.float32)
            rmin[y], rmax[y] = _row_minmax(rows, y0[y], y1[y], fy[y], buf)
    lo, span = _range(rmin, rmax, vmin, vmax, use_range)
    a_img, a_heat = np.float64(np.float32(1.0 - alpha)), np.float32(alpha)
    for y in prange(H):
        buf = np.empty(W, np.float32)
        levels = np.empty(W, np.int32)
        _row_values(rows, y0[y], y1[y], fy[y], buf)
        _shade_row(buf, lo, span, lut, image[y], a_img, a_heat, levels, heat[y], over[y])


@njit(cache=True, nogil=True)
def paint_regions(weights, boxes, height, width):
    """Sum of box weights covering each pixel: [N], [N, 4] xyxy → [H, W] float32.

    A pixel (x, y) with centre (x + 0.5, y + 0.5) is covered when
    x1 <= x + 0.5 < x2 and y1 <= y + 0.5 < y2. Painted with a 2-D
    difference array (O(N + H*W)); float64 accumulation, float32 result.
    """
    diff = np.zeros((height + 1, width + 1), np.float64)
    for i in range(weights.shape[0]):
        c0 = min(max(int(np.ceil(boxes[i, 0] - 0.5)), 0), width)
        r0 = min(max(int(np.ceil(boxes[i, 1] - 0.5)), 0), height)
        c1 = min(max(int(np.ceil(boxes[i, 2] - 0.5)), 0), width)
        r1 = min(max(int(np.ceil(boxes[i, 3] - 0.5)), 0), height)
        if c1 > c0 and r1 > r0:
            w = np.float64(weights[i])
            diff[r0, c0] += w
            diff[r0, c1] -= w
            diff[r1, c0] -= w
            diff[r1, c1] += w
    out = np.empty((height, width), np.float32)
    acc = np.zeros(width + 1, np.float64)
    for y in range(height):
        run = 0.0
        for x in range(width):
            run += diff[y, x]
            acc[x] += run
            out[y, x] = np.float32(acc[x])
    return out


@njit(cache=True, nogil=True)
def shade_values_serial(values, image, lut, alpha, vmin, vmax, use_range, heat, over):
    """Full-size values [H, W] float32, image [H, 3W] → heat, over [H, 3W] uint8 (in place)."""
    H = values.shape[0]
    lo, hi = _minmax(values.ravel()) if not use_range else (np.float32(vmin), np.float32(vmax))
    span = hi - lo if hi > lo else np.float32(0.0)
    a_img, a_heat = np.float64(np.float32(1.0 - alpha)), np.float32(alpha)
    levels = np.empty(values.shape[1], np.int32)
    for y in range(H):
        _shade_row(values[y], lo, span, lut, image[y], a_img, a_heat, levels, heat[y], over[y])
