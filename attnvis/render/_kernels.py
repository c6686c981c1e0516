"""numba kernels: small map → heatmap and overlay, block by block over the output.

Pure functions on arrays, compiled on first call (``cache=True``) and never at
import. Each kernel has a serial variant (for callers that parallelize over
images or layers from threads: the kernels release the GIL) and a ``prange``
variant parallel over blocks of output rows. The thin checking wrappers are in
:mod:`attnvis.render.heatmap`; plain NumPy references are in ``tests/render``.

Arithmetic follows OpenCV so that the results match its chain
``resize(INTER_LINEAR) → min-max → uint8(255 * norm) → applyColorMap →
addWeighted``: float32 throughout, half-pixel centres with clamped borders,
truncation to uint8, and ``addWeighted``'s fused multiply-add with
round-half-to-even (emulated exactly in float64).

Layout: images, heatmaps and overlays travel as flat uint8 [3 * H * W] (RGB
pixels in row order). Work goes in blocks of ``BLOCK`` rows: each block's
values are recomputed from the horizontally resized rows (cheaper than
storing a float map), turned into levels, painted and blended while they
are in cache. Every inner loop is written so that LLVM vectorizes it; the
colour lookup, which cannot be, writes four pixels with three 32-bit stores.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from attnvis.render._loads import scalar_load, scalar_store

BLOCK = 32  # rows per block; a multiple of 4, so every block's first heat byte (3*y*W) is 4-aligned
_F0 = np.float32(0.0)
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
def _lerp_row(top, bottom, fy, out):
    """Vertical pass for one output row: out [W] = top * (1 - fy) + bottom * fy (no FMA, as OpenCV)."""
    b0 = _F1 - fy
    for x in range(out.shape[0]):
        out[x] = top[x] * b0 + bottom[x] * fy


@njit(cache=True, nogil=True)
def _key_range(keys, lo, hi):
    """Running (min, max) of float32 values given as order-preserving int32 keys.

    Integer min/max vectorizes where float min/max (NaN rules) does not; the
    key of a finite float's bits ``b`` is ``b ^ ((b >> 31) & 0x7FFFFFFF)``,
    which orders like the float (and is its own inverse).
    """
    for x in range(keys.shape[0]):
        b = keys[x]
        k = b ^ ((b >> 31) & 0x7FFFFFFF)
        lo = min(lo, k)
        hi = max(hi, k)
    return lo, hi


@njit(cache=True, nogil=True)
def _key_to_float(lo, hi):
    pair = np.empty(2, np.int32)
    pair[0] = lo ^ ((lo >> 31) & 0x7FFFFFFF)
    pair[1] = hi ^ ((hi >> 31) & 0x7FFFFFFF)
    floats = pair.view(np.float32)
    return floats[0], floats[1]


@njit(cache=True, nogil=True)
def _row_runs(y0):
    """Output rows grouped by their pair of source rows: [k, 2] first and last row of each run."""
    runs = np.empty((y0.shape[0], 2), np.int64)
    k = 0
    for y in range(y0.shape[0]):
        if y == 0 or y0[y] != y0[y - 1]:
            runs[k, 0] = y
            k += 1
        runs[k - 1, 1] = y
    return runs[:k]


@njit(cache=True, nogil=True)
def _upsampled_range(rows, y0, y1, fy):
    """Exact (min, max) of the upsampled map without computing all of it.

    Within a run of output rows interpolating the same two source rows, each
    column's value is linear in ``fy``, so its extremes lie on the run's
    first or last row -- up to float32 rounding. The endpoint rows give a
    candidate range; then only columns whose endpoint values come within a
    rounding bound of it (a few, near the extremes) are computed on every
    row of the run. The result equals the min/max over all H x W values.
    """
    W = rows.shape[1]
    runs = _row_runs(y0)
    a, b = np.empty(W, np.float32), np.empty(W, np.float32)
    lo, hi = np.int32(0x7FFFFFFF), np.int32(-0x80000000)
    for r in range(runs.shape[0]):
        for y in (runs[r, 0], runs[r, 1]):
            _lerp_row(rows[y0[y]], rows[y1[y]], fy[y], a)
            lo, hi = _key_range(a.view(np.int32), lo, hi)
    lo, hi = _key_to_float(lo, hi)
    for r in range(runs.shape[0]):
        first, last = runs[r, 0], runs[r, 1]
        if last - first < 2:
            continue
        top, bottom = rows[y0[first]], rows[y1[first]]
        _lerp_row(top, bottom, fy[first], a)
        _lerp_row(top, bottom, fy[last], b)
        for x in range(W):
            # |computed - exact| <= 3 * 2^-24 * (|top| + |bottom|) on every row; twice that, rounded up
            tol = np.float32(2.0**-21) * (abs(top[x]) + abs(bottom[x]))
            if min(a[x], b[x]) - tol <= lo or max(a[x], b[x]) + tol >= hi:
                for y in range(first + 1, last):
                    v = top[x] * (_F1 - fy[y]) + bottom[x] * fy[y]  # as _lerp_row (no FMA)
                    lo, hi = min(lo, v), max(hi, v)
    return lo, hi


@njit(cache=True, nogil=True)
def _levels(vals, lo, span, out):
    """out [n] uint8 = uint8(255 * clip((vals - lo) / span)); 0 when span is 0."""
    if span > 0:
        for x in range(vals.shape[0]):
            norm = (vals[x] - lo) / span  # divide (not multiply) to match NumPy bit for bit
            norm = min(max(norm, _F0), _F1)  # only bites with a fixed range
            out[x] = np.uint8(np.int32(_F255 * norm))  # truncation, as np.uint8(255 * norm)
    else:
        out[:] = 0


@njit(cache=True, nogil=True)
def _paint(levels, lut32, heat):
    """heat [3n] uint8 = colours of levels [n], four pixels per three 32-bit stores.

    ``lut32[i]`` is colour ``i`` as ``r | g << 8 | b << 16``; storing words
    assumes a little-endian machine (every platform numba supports).
    """
    n = levels.shape[0]
    n4 = n // 4
    words = heat[: 12 * n4].view(np.uint32)
    quads = levels[: 4 * n4].view(np.uint32)  # four levels per load
    for i in range(n4):  # scalar loads: LLVM would make these gathers, slower (see _loads)
        q = scalar_load(quads, i)
        c0, c1 = scalar_load(lut32, q & 0xFF), scalar_load(lut32, (q >> 8) & 0xFF)
        c2, c3 = scalar_load(lut32, (q >> 16) & 0xFF), scalar_load(lut32, q >> 24)
        scalar_store(words, 3 * i, c0 | (c1 << 24))  # r0 g0 b0 r1
        scalar_store(words, 3 * i + 1, (c1 >> 8) | (c2 << 16))  # g1 b1 r2 g2
        scalar_store(words, 3 * i + 2, (c2 >> 16) | (c3 << 8))  # b2 r3 g3 b3
    for p in range(4 * n4, n):  # the last n % 4 pixels, byte by byte
        colour = lut32[levels[p]]
        for c in range(3):
            heat[3 * p + c] = (colour >> (8 * c)) & 0xFF


@njit(cache=True, nogil=True)
def _blend(image, heat, a_img, a_heat, over):
    """cv2.addWeighted(image, a_img, heat, a_heat, 0) on flat uint8 arrays.

    OpenCV computes fma(img, a_img, round32(heat * a_heat)) in float32 and
    rounds half to even; float64 holds the fma exactly, then one float32
    rounding. ``a_img`` is float64 holding a float32 value. The default
    alpha 0.5 takes an 8-bit path with the same results, ~10x faster.
    """
    if a_heat == np.float32(0.5):
        for i in range(image.shape[0]):
            a, b = image[i], heat[i]
            low = np.uint8((a & b) + ((a ^ b) >> 1))  # floor((a + b) / 2) without overflow
            over[i] = np.uint8(low + ((a ^ b) & low & 1))  # .5 rounds to even, as cvRound
        return
    for i in range(image.shape[0]):
        hb = np.float64(np.float32(np.float32(heat[i]) * a_heat))
        t = np.float32(np.float64(image[i]) * a_img + hb)
        over[i] = np.uint8(np.int32(np.rint(t)))  # alpha in [0, 1]: t in [0, 255]


@njit(cache=True, nogil=True)
def _finish_block(levels, lut32, image, a_img, a_heat, heat, over, start, stop):
    """Paint and blend pixels [start, stop) (flat pixel indices) from their levels."""
    s, e = 3 * start, 3 * stop
    _paint(levels, lut32, heat[s:e])
    _blend(image[s:e], heat[s:e], a_img, a_heat, over[s:e])


@njit(cache=True, nogil=True)
def _grid_block(rows, y0, y1, fy, lo, span, lut32, image, a_img, a_heat, heat, over, start, stop):
    """Output rows [start, stop) of the grid path: values → levels → heat, over."""
    W = rows.shape[1]
    buf = np.empty(W, np.float32)
    levels = np.empty((stop - start) * W, np.uint8)
    for y in range(start, stop):
        _lerp_row(rows[y0[y]], rows[y1[y]], fy[y], buf)
        _levels(buf, lo, span, levels[(y - start) * W : (y - start + 1) * W])
    _finish_block(levels, lut32, image, a_img, a_heat, heat, over, start * W, stop * W)


@njit(cache=True, nogil=True)
def _span(lo, hi):
    return hi - lo if hi > lo else np.float32(0.0)


@njit(cache=True, nogil=True)
def _weights(alpha):
    return np.float64(np.float32(1.0 - alpha)), np.float32(alpha)


@njit(cache=True, nogil=True)
def render_grid_serial(grid, image, height, lut32, alpha, vmin, vmax, use_range, heat, over):
    """grid [h, w] float32, image flat [3HW] uint8 RGB → heat, over flat [3HW] uint8 (in place)."""
    width = image.shape[0] // (3 * height)
    rows = resize_rows(grid, width)
    y0, y1, fy = axis_coeffs(grid.shape[0], height)
    lo, hi = _upsampled_range(rows, y0, y1, fy) if not use_range else (np.float32(vmin), np.float32(vmax))
    a_img, a_heat = _weights(alpha)
    for start in range(0, height, BLOCK):
        stop = min(start + BLOCK, height)
        _grid_block(rows, y0, y1, fy, lo, _span(lo, hi), lut32, image, a_img, a_heat, heat, over, start, stop)


@njit(cache=True, nogil=True, parallel=True)
def render_grid_parallel(grid, image, height, lut32, alpha, vmin, vmax, use_range, heat, over):
    """As :func:`render_grid_serial`, parallel over blocks of rows."""
    width = image.shape[0] // (3 * height)
    rows = resize_rows(grid, width)
    y0, y1, fy = axis_coeffs(grid.shape[0], height)
    blocks = (height + BLOCK - 1) // BLOCK
    lo, hi = _upsampled_range(rows, y0, y1, fy) if not use_range else (np.float32(vmin), np.float32(vmax))
    a_img, a_heat = _weights(alpha)
    span = _span(lo, hi)
    for b in prange(blocks):
        start, stop = b * BLOCK, min((b + 1) * BLOCK, height)
        _grid_block(rows, y0, y1, fy, lo, span, lut32, image, a_img, a_heat, heat, over, start, stop)


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
def shade_values_serial(values, image, lut32, alpha, vmin, vmax, use_range, heat, over):
    """Full-size values [H, W] float32, image flat [3HW] → heat, over flat [3HW] uint8 (in place)."""
    flat = values.ravel()
    lo, hi = np.float32(vmin), np.float32(vmax)
    if not use_range:
        klo, khi = _key_range(flat.view(np.int32), np.int32(0x7FFFFFFF), np.int32(-0x80000000))
        lo, hi = _key_to_float(klo, khi)
    levels = np.empty(flat.shape[0], np.uint8)
    _levels(flat, lo, _span(lo, hi), levels)
    a_img, a_heat = _weights(alpha)
    _finish_block(levels, lut32, image, a_img, a_heat, heat, over, 0, flat.shape[0])
