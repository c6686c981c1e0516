"""numba-cuda kernels: the fused render (bilinear → min-max → colormap → blend) on the GPU.

The levels, colours and blend equal the CPU kernels' (:mod:`attnvis.render._kernels`)
bit for bit:

- the resize taps (``i0, i1, w1`` per axis) are computed on the host by the
  CPU kernel's own :func:`~attnvis.render._kernels.axis_coeffs`;
- every product and sum of the interpolation goes through ``fmul_rn`` /
  ``fadd_rn``, so that NVVM cannot contract ``a * b + c * d`` into a fused
  multiply-add (the CPU code has none; numba-cuda contracts by default);
- the range is the exact min / max over every upsampled value (as the CPU's
  ``_upsampled_range`` guarantees), reduced per block, then atomically;
- the division of the normalization is IEEE (numba-cuda's default without
  ``fastmath``), truncation to uint8 and ``addWeighted``'s round-half-to-even
  are written out in integer and float64 arithmetic that has one result.

Under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, how CI runs these
kernels) ``libdevice`` does not exist; there the products and sums are NumPy
float32 operations, which are correctly rounded and never fused either.

Launches are over (pixels, maps): one call renders every layer of one image.
"""

from __future__ import annotations

import numpy as np

from attnvis._optional import require

require("numba_cuda", "GPU rendering (numba-cuda)")
from numba import cuda  # noqa: E402 - after the check that numba-cuda (not numba's deprecated built-in) is there
from numba.core import config  # noqa: E402

SIMULATOR = bool(config.ENABLE_CUDASIM)
THREADS = 256  # threads per block: pixels of one map
_KEY_MAX, _KEY_MIN = 0x7FFFFFFF, -0x80000000

if SIMULATOR:
    @cuda.jit(device=True)
    def _mul(a, b):
        return np.float32(np.float32(a) * np.float32(b))

    @cuda.jit(device=True)
    def _add(a, b):
        return np.float32(np.float32(a) + np.float32(b))

    @cuda.jit(device=True)
    def _float_bits(v):
        return np.array([v], np.float32).view(np.int32)[0]

    @cuda.jit(device=True)
    def _bits_float(b):
        return np.array([b], np.int32).view(np.float32)[0]
else:  # pragma: no cover - needs a GPU
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def _mul(a, b):
        return libdevice.fmul_rn(a, b)

    @cuda.jit(device=True)
    def _add(a, b):
        return libdevice.fadd_rn(a, b)

    @cuda.jit(device=True)
    def _float_bits(v):
        return libdevice.float_as_int(v)

    @cuda.jit(device=True)
    def _bits_float(b):
        return libdevice.int_as_float(b)


@cuda.jit(device=True)
def _lerp(a, b, w):
    """a * (1 - w) + b * w in float32, no FMA: the CPU kernels' ``_lerp_row``."""
    return _add(_mul(a, np.float32(1.0) - w), _mul(b, w))


@cuda.jit(device=True)
def _value(grids, m, y, x, x0, x1, fx, y0, y1, fy):
    """Upsampled value of map ``m`` at (y, x): the horizontal pass on both source rows, then the vertical one."""
    top = _lerp(grids[m, y0[y], x0[x]], grids[m, y0[y], x1[x]], fx[x])
    bottom = _lerp(grids[m, y1[y], x0[x]], grids[m, y1[y], x1[x]], fx[x])
    return _lerp(top, bottom, fy[y])


@cuda.jit(device=True)
def _key(v):
    """float32 → int32 key ordered like the float (the CPU's ``_key_range`` trick): atomics on int32."""
    b = _float_bits(v)
    return np.int32(b ^ ((b >> 31) & 0x7FFFFFFF))


@cuda.jit
def range_kernel(grids, x0, x1, fx, y0, y1, fy, keys):
    """keys [n, 2] int32 (preset to (max, min)) ← min / max key of every upsampled value of each map."""
    m = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    width, height = x0.shape[0], y0.shape[0]
    lo = cuda.shared.array(THREADS, np.int32)
    hi = cuda.shared.array(THREADS, np.int32)
    lo[tid], hi[tid] = _KEY_MAX, _KEY_MIN
    step = cuda.gridDim.x * cuda.blockDim.x
    p = cuda.blockIdx.x * cuda.blockDim.x + tid
    while p < width * height:
        k = _key(_value(grids, m, p // width, p % width, x0, x1, fx, y0, y1, fy))
        lo[tid], hi[tid] = min(lo[tid], k), max(hi[tid], k)
        p += step
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:  # tree reduction in shared memory
        if tid < half:
            lo[tid], hi[tid] = min(lo[tid], lo[tid + half]), max(hi[tid], hi[tid + half])
        cuda.syncthreads()
        half //= 2
    if tid == 0:
        cuda.atomic.min(keys, (m, 0), lo[0])
        cuda.atomic.max(keys, (m, 1), hi[0])


@cuda.jit(device=True)
def _level(v, lo, span):
    """uint8(255 * clip((v - lo) / span)), 0 when span is 0: the CPU's ``_levels``."""
    if span <= np.float32(0.0):
        return 0
    norm = (v - lo) / span
    norm = min(max(norm, np.float32(0.0)), np.float32(1.0))
    return np.int32(np.float32(255.0) * norm)


@cuda.jit(device=True)
def _blend(a, b, a_img, a_heat, half):
    """cv2.addWeighted of one byte pair: the CPU's ``_blend`` (8-bit path at alpha 0.5)."""
    if half:
        low = (a & b) + ((a ^ b) >> 1)
        return low + ((a ^ b) & low & 1)
    hb = np.float64(np.float32(np.float32(b) * a_heat))
    t = np.float64(np.float32(np.float64(a) * a_img + hb))  # exact product: FMA or not, one result
    f = np.float64(int(t))  # t in [0, 255]: truncation is floor
    d = t - f
    if d > 0.5 or (d == 0.5 and int(f) % 2 == 1):
        f += 1.0
    return int(f)


@cuda.jit
def shade_kernel(grids, x0, x1, fx, y0, y1, fy, ranges, lut, image, a_img, a_heat, half, heat, over):
    """heat, over [n, H, W, 3] uint8 ← map m's colours and their blend with image [H, W, 3].

    ranges [n, 2] float32: each map's (lo, hi) (fixed or from :func:`range_kernel`).
    """
    m = cuda.blockIdx.y
    width, height = x0.shape[0], y0.shape[0]
    p = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if p >= width * height:
        return
    y, x = p // width, p % width
    lo, hi = ranges[m, 0], ranges[m, 1]
    span = hi - lo if hi > lo else np.float32(0.0)
    level = _level(_value(grids, m, y, x, x0, x1, fx, y0, y1, fy), lo, span)
    for c in range(3):
        colour = lut[level, c]
        heat[m, y, x, c] = colour
        over[m, y, x, c] = _blend(np.int32(image[y, x, c]), np.int32(colour), a_img, a_heat, half)


@cuda.jit
def keys_to_ranges(keys, ranges):
    """ranges [n, 2] float32 ← the floats of keys [n, 2] int32 (the key map is its own inverse)."""
    m = cuda.grid(1)
    if m < keys.shape[0]:
        for j in range(2):
            b = keys[m, j]
            ranges[m, j] = _bits_float(np.int32(b ^ ((b >> 31) & 0x7FFFFFFF)))


@cuda.jit
def upsample_kernel(grids, x0, x1, fx, y0, y1, fy, out):
    """out [n, H, W] float32 ← the upsampled maps themselves (the values the levels are made of)."""
    m = cuda.blockIdx.y
    width, height = x0.shape[0], y0.shape[0]
    p = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if p < width * height:
        out[m, p // width, p % width] = _value(grids, m, p // width, p % width, x0, x1, fx, y0, y1, fy)
