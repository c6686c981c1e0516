"""Pillow's ``Image.resize`` for RGB uint8 images, bit for bit, without PIL images.

Model preprocessing must see the pixels the model was trained on, and that is
Pillow's output. :func:`resize_rgb` reproduces Pillow 13's convolution
resampling (``libImaging/Resample.c``) exactly for the bilinear, bicubic and
Lanczos filters: the same double-precision filter weights normalized by their
sequential sum, the same 22-bit fixed-point coefficients and rounding, the same
two passes with the same 8-bit clamping in between, in the order Pillow 13
picks from the sizes. It skips the round trip through ``Image.fromarray``, is
several times faster and releases the GIL.

Each pass is a numba kernel (compiled on first call, cached on disk) around a
small LLVM-IR intrinsic, because numba's pipeline does not vectorize short
fixed-length dot products by itself:

* horizontal: four output pixels at a time. A window of ``5 * groups`` source
  pixels is read as 16-byte loads of five RGB pixels (the 16th byte is weighted
  by zero), widened to 16 int32 lanes and multiplied by a coefficient table
  laid out the same way; the lanes of the four pixels are then summed with
  shuffles into one vector of their 12 channel values, clamped and stored.
  A window reads ``15 * groups + 1`` bytes from its first pixel on, whatever
  its tap count (the bytes past the taps are weighted by zero): past the end of
  a row that is the next row, and a row too close to the end of the image is
  copied into a zero-padded buffer first.
* vertical: 32 columns at a time, taps inner, accumulators in registers.

The integer sums are those of Pillow, in int32 without overflow (a pixel's
coefficients sum to 2**22 and their negative lobes are small, so 255 times
their absolute sum stays below 2**31); their order does not matter.
"""

from __future__ import annotations

import functools
import math
import operator

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["resize_rgb"]

_PRECISION_BITS = 22  # Pillow's 32 - 8 - 2: 8-bit pixels, 2 bits for negative lobes and overshoot
_HALF = 1 << (_PRECISION_BITS - 1)
_FILTERS = {"bilinear": (0, 1.0), "bicubic": (1, 2.0), "lanczos": (2, 3.0)}  # kind, support
_GROUP = 5  # source pixels per 16-byte load in the horizontal pass
_QUAD = 4  # output pixels per step of the horizontal pass

# --------------------------------------------------------------------------- coefficients


@njit(cache=True, nogil=True)
def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


@njit(cache=True, nogil=True)
def _filter(kind: int, x: float) -> float:
    """Pillow's bilinear (0), bicubic with a = -0.5 (1) and Lanczos-3 (2), same operation order."""
    if kind == 2:
        if -3.0 <= x < 3.0:
            return _sinc(x) * _sinc(x / 3)
        return 0.0
    if x < 0.0:
        x = -x
    if kind == 0:
        return 1.0 - x if x < 1.0 else 0.0
    if x < 1.0:
        return (1.5 * x - 2.5) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * -0.5
    return 0.0


@njit(cache=True, nogil=True)
def _coefficients(extent: float, in_size: int, out_size: int, kind: int,
                  support: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the box (0, extent).

    Returns per output pixel the first source pixel, the number of source
    pixels, and the fixed-point weights ([out_size, ksize] int32, zero past
    the count).
    """
    scale = extent / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ksize = math.ceil(support) * 2 + 1
    starts = np.empty(out_size, np.int64)
    counts = np.empty(out_size, np.int64)
    coeffs = np.zeros((out_size, ksize), np.int32)
    weights = np.empty(ksize, np.float64)
    ss = 1.0 / filterscale
    one = float(1 << _PRECISION_BITS)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        # int() truncates toward zero like C's (int) cast
        xmin = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - xmin
        ww = 0.0
        for x in range(count):
            weights[x] = _filter(kind, ((x + xmin) - center + 0.5) * ss)
            ww += weights[x]
        for x in range(count):
            w = weights[x] / ww if ww != 0.0 else weights[x]
            coeffs[xx, x] = int(-0.5 + w * one) if w < 0 else int(0.5 + w * one)
        starts[xx] = xmin
        counts[xx] = count
    return starts, counts, coeffs


def _readonly(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.flags.writeable = False
    return arrays


@functools.lru_cache(maxsize=256)
def _axis(in_size: int, out_size: int, filter: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, counts, coeffs) of one axis; Pillow passes the box edge ``in_size`` as a float32."""
    kind, support = _FILTERS[filter]
    return _readonly(*_coefficients(float(np.float32(in_size)), in_size, out_size, kind, support))


@functools.lru_cache(maxsize=256)
def _horizontal_table(in_size: int, out_size: int, filter: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(starts, expanded coefficients, groups) for the horizontal kernel, at least ``_QUAD`` outputs.

    Output ``xx``, group ``g`` holds 16 int32: lane ``3 * i + c`` weights pixel
    ``start + 5 * g + i``, channel ``c``; lane 15 is zero. Padding outputs
    repeat the last start with zero weights.
    """
    starts, _, coeffs = _axis(in_size, out_size, filter)
    ksize = coeffs.shape[1]
    groups = -(-ksize // _GROUP)
    n = max(out_size, _QUAD)
    table = np.zeros((n, _GROUP * groups + 1), np.int32)  # the last column stays zero
    table[:out_size, :ksize] = coeffs
    lanes = np.arange(16)
    index = _GROUP * np.arange(groups)[:, None] + lanes // 3
    index[:, 15] = _GROUP * groups
    padded = np.full(n, starts[-1], np.int64)
    padded[:out_size] = starts
    return *_readonly(padded, np.ascontiguousarray(table[:, index].reshape(-1))), groups


# --------------------------------------------------------------------------- LLVM IR

_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_V16 = ir.VectorType(_I32, 16)
_B16 = ir.VectorType(_I8, 16)
_ZERO_LANE = 15  # lane 15 of every horizontal product vector is weighted by zero


def _constant(vtype: ir.Type, values: list[int]) -> ir.Constant:
    return ir.Constant(vtype, values)


def _load(builder: ir.IRBuilder, ptr: ir.Value, index: ir.Value, vtype: ir.Type, align: int) -> ir.Value:
    return builder.load(builder.bitcast(builder.gep(ptr, [index]), vtype.as_pointer()), align=align)


def _store(builder: ir.IRBuilder, value: ir.Value, ptr: ir.Value, index: ir.Value) -> None:
    builder.store(value, builder.bitcast(builder.gep(ptr, [index]), value.type.as_pointer()), align=1)


def _pick(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, lanes: list[int]) -> ir.Value:
    """Lanes of the concatenation ``a ++ b``; the rest are ``a``'s zero-weighted lane."""
    return builder.shuffle_vector(a, b, _constant(_V16, lanes + [_ZERO_LANE] * (16 - len(lanes))))


def _sum_quad(builder: ir.IRBuilder, sums: list[ir.Value]) -> ir.Value:
    """Four per-pixel vectors (lane 3i+c: tap i, channel c) → lane 3p+c: pixel p, channel c."""

    def pair(a: ir.Value, b: ir.Value) -> ir.Value:
        # taps {0, 2, 4} and {1, 3} of a in lanes 0..5, of b in lanes 6..11
        s = builder.add(_pick(builder, a, b, [0, 1, 2, 3, 4, 5, 16, 17, 18, 19, 20, 21]),
                        _pick(builder, a, b, [6, 7, 8, 9, 10, 11, 22, 23, 24, 25, 26, 27]))
        return builder.add(s, _pick(builder, a, b, [12, 13, 14] + [_ZERO_LANE] * 3 + [28, 29, 30]))

    u, w = pair(sums[0], sums[1]), pair(sums[2], sums[3])
    return builder.add(_pick(builder, u, w, [0, 1, 2, 6, 7, 8, 16, 17, 18, 22, 23, 24]),
                       _pick(builder, u, w, [3, 4, 5, 9, 10, 11, 19, 20, 21, 25, 26, 27]))


def _clip8(builder: ir.IRBuilder, acc: ir.Value) -> ir.Value:
    """Pillow's ``clip8`` on <16 x i32> sums (without the rounding half) → <16 x i8>."""
    v = builder.ashr(builder.add(acc, _constant(_V16, [_HALF] * 16)), _constant(_V16, [_PRECISION_BITS] * 16))
    zero, top = _constant(_V16, [0] * 16), _constant(_V16, [255] * 16)
    v = builder.select(builder.icmp_signed("<", v, zero), zero, v)
    v = builder.select(builder.icmp_signed(">", v, top), top, v)
    return builder.trunc(v, _B16)


def _c_array(t: types.Type, dtype: types.Type) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == dtype


@intrinsic
def _resample_rows(typingctx, src, bases, starts, table, groups, out, out_bases, out_w):
    """Horizontal pass over a few rows at once (``bases``: their byte offsets in ``src``).

    Writes ``out_w >= 4`` RGB pixels at each of ``out_bases`` in ``out``; pixel
    ``xx`` weights the ``5 * groups`` pixels from ``starts[xx]`` by ``table``.
    """
    if not (_c_array(src, types.uint8) and _c_array(starts, types.int64) and _c_array(table, types.int32)
            and _c_array(out, types.uint8) and isinstance(bases, types.UniTuple)
            and isinstance(out_bases, types.UniTuple) and bases.count == out_bases.count):
        return None
    nrows = bases.count
    tuple_type = types.UniTuple(types.intp, nrows)
    sig = types.void(src, tuple_type, starts, table, types.intp, out, tuple_type, types.intp)

    def codegen(context, builder, signature, args):
        src_ptr, starts_ptr, table_ptr, out_ptr = (
            context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 2, 3, 5))
        bases = cgutils.unpack_tuple(builder, args[1], nrows)
        out_bases = cgutils.unpack_tuple(builder, args[6], nrows)
        groups, out_w = args[4], args[7]
        stride = builder.mul(groups, _I64(16))
        last = builder.sub(out_w, _I64(_QUAD))
        accs = [[cgutils.alloca_once(builder, _V16) for _ in range(_QUAD)] for _ in range(nrows)]
        steps = builder.udiv(builder.add(out_w, _I64(_QUAD - 1)), _I64(_QUAD))
        with cgutils.for_range(builder, steps) as quad:
            # the last quad may overlap the one before it: it recomputes the same values
            x0 = builder.mul(quad.index, _I64(_QUAD))
            x0 = builder.select(builder.icmp_signed(">", x0, last), last, x0)
            firsts = [builder.mul(builder.load(builder.gep(starts_ptr, [builder.add(x0, _I64(p))])), _I64(3))
                      for p in range(_QUAD)]
            rows = [builder.mul(builder.add(x0, _I64(p)), stride) for p in range(_QUAD)]
            for row_accs in accs:
                for acc in row_accs:
                    builder.store(ir.Constant(_V16, None), acc)
            with cgutils.for_range(builder, groups) as group:
                g = group.index
                byte = builder.mul(g, _I64(3 * _GROUP))
                for p in range(_QUAD):
                    k = _load(builder, table_ptr, builder.add(rows[p], builder.mul(g, _I64(16))), _V16, 4)
                    for r in range(nrows):
                        at = builder.add(builder.add(bases[r], firsts[p]), byte)
                        pixels = builder.zext(_load(builder, src_ptr, at, _B16, 1), _V16)
                        builder.store(builder.add(builder.load(accs[r][p]), builder.mul(pixels, k)), accs[r][p])
            for r in range(nrows):
                values = builder.bitcast(_clip8(builder, _sum_quad(builder, [builder.load(a) for a in accs[r]])),
                                         ir.VectorType(_I32, 4))
                at = builder.add(out_bases[r], builder.mul(x0, _I64(3)))
                # 12 bytes: 8 + 4
                low = builder.shuffle_vector(values, values, _constant(ir.VectorType(_I32, 2), [0, 1]))
                _store(builder, builder.bitcast(low, _I64), out_ptr, at)
                _store(builder, builder.extract_element(values, _I32(2)), out_ptr, builder.add(at, _I64(8)))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _resample_columns(typingctx, src, first, n, coeffs, k0, count, out, out_base):
    """Vertical pass for one output row of ``n >= 32`` bytes.

    ``out[out_base + j]`` weights ``src[(first + t) * n + j]`` by ``coeffs[k0 + t]``
    for ``t < count``.
    """
    if not (_c_array(src, types.uint8) and _c_array(coeffs, types.int32) and _c_array(out, types.uint8)):
        return None
    sig = types.void(src, types.intp, types.intp, coeffs, types.intp, types.intp, out, types.intp)
    chunks = 2  # 16 columns each

    def codegen(context, builder, signature, args):
        src_ptr, coeff_ptr, out_ptr = (
            context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 3, 6))
        first, n, k0, count, out_base = args[1], args[2], args[4], args[5], args[7]
        width = 16 * chunks
        last = builder.sub(n, _I64(width))
        accs = [cgutils.alloca_once(builder, _V16) for _ in range(chunks)]
        steps = builder.udiv(builder.add(n, _I64(width - 1)), _I64(width))
        with cgutils.for_range(builder, steps) as step:
            # the last step may overlap the one before it: it recomputes the same values
            j = builder.mul(step.index, _I64(width))
            j = builder.select(builder.icmp_signed(">", j, last), last, j)
            for acc in accs:
                builder.store(ir.Constant(_V16, None), acc)
            with cgutils.for_range(builder, count) as tap:
                t = tap.index
                k = builder.load(builder.gep(coeff_ptr, [builder.add(k0, t)]))
                k = builder.shuffle_vector(builder.insert_element(ir.Constant(_V16, None), k, _I32(0)),
                                           ir.Constant(_V16, None), _constant(_V16, [0] * 16))
                row = builder.add(builder.mul(builder.add(first, t), n), j)
                for c, acc in enumerate(accs):
                    pixels = builder.zext(_load(builder, src_ptr, builder.add(row, _I64(16 * c)), _B16, 1), _V16)
                    builder.store(builder.add(builder.load(acc), builder.mul(pixels, k)), acc)
            for c, acc in enumerate(accs):
                at = builder.add(builder.add(out_base, j), _I64(16 * c))
                _store(builder, _clip8(builder, builder.load(acc)), out_ptr, at)
        return context.get_dummy_value()

    return sig, codegen


# --------------------------------------------------------------------------- kernels


@njit(cache=True, nogil=True)
def _horizontal(src: np.ndarray, first: int, starts: np.ndarray, table: np.ndarray, groups: int,
                out: np.ndarray) -> None:
    """Rows ``first ..`` of ``src`` [h, w, 3] resampled along x into ``out`` [rows, len(starts), 3]."""
    rows, out_w = out.shape[0], out.shape[1]
    rowlen = src.shape[1] * 3
    flat = src.reshape(-1)
    dst = out.reshape(-1)
    out_row = 3 * out_w
    reach = 3 * starts[out_w - 1] + 3 * _GROUP * groups + 1  # bytes read from the start of a row, at most
    padded = np.zeros(max(reach, rowlen), np.uint8)
    r = 0
    while r < rows:
        base = (first + r) * rowlen
        if r + 1 < rows and base + rowlen + reach <= flat.size:
            outs = (r * out_row, (r + 1) * out_row)
            _resample_rows(flat, (base, base + rowlen), starts, table, groups, dst, outs, out_w)
            r += 2
        elif base + reach <= flat.size:
            _resample_rows(flat, (base,), starts, table, groups, dst, (r * out_row,), out_w)
            r += 1
        else:
            padded[:rowlen] = flat[base:base + rowlen]
            _resample_rows(padded, (0,), starts, table, groups, dst, (r * out_row,), out_w)
            r += 1


@njit(cache=True, nogil=True)
def _vertical(src: np.ndarray, first: int, starts: np.ndarray, counts: np.ndarray, coeffs: np.ndarray,
              out: np.ndarray) -> None:
    """``src`` [rows, n] uint8, whose row 0 is image row ``first``, resampled along y into ``out`` [out_h, n]."""
    n = src.shape[1]
    flat = src.reshape(-1)
    kflat = coeffs.reshape(-1)
    dst = out.reshape(-1)
    ksize = coeffs.shape[1]
    for yy in range(out.shape[0]):
        y0 = starts[yy] - first
        if n >= 32:
            _resample_columns(flat, y0, n, kflat, yy * ksize, counts[yy], dst, yy * n)
        else:  # fewer than 11 pixels a row
            for j in range(n):
                acc = _HALF
                for t in range(counts[yy]):
                    acc += src[y0 + t, j] * coeffs[yy, t]
                v = acc >> _PRECISION_BITS
                dst[yy * n + j] = max(0, min(v, 255))


# --------------------------------------------------------------------------- public


def _horizontal_pass(src: np.ndarray, first: int, rows: int, out_w: int, filter: str) -> np.ndarray:
    starts, table, groups = _horizontal_table(src.shape[1], out_w, filter)
    out = np.empty((rows, starts.size, 3), np.uint8)
    _horizontal(src, first, starts, table, groups, out)
    return out if starts.size == out_w else np.ascontiguousarray(out[:, :out_w])


def _vertical_pass(src: np.ndarray, first: int, in_h: int, out_h: int, filter: str) -> np.ndarray:
    """``src`` holds rows ``first ..`` of an ``in_h``-row image."""
    starts, counts, coeffs = _axis(in_h, out_h, filter)
    out = np.empty((out_h, src.shape[1], 3), np.uint8)
    _vertical(src.reshape(src.shape[0], -1), first, starts, counts, coeffs, out.reshape(out_h, -1))
    return out


def resize_rgb(image: np.ndarray, size: tuple[int, int], filter: str) -> np.ndarray:
    """``np.asarray(Image.fromarray(image).resize(size, F))`` for F = BILINEAR / BICUBIC / LANCZOS, bit for bit.

    ``image`` is uint8 [H, W, 3] (any strides), ``size`` is ``(out_w, out_h)`` as
    PIL takes it and ``filter`` one of "bilinear", "bicubic", "lanczos". Returns a
    new C-contiguous uint8 [out_h, out_w, 3] array.
    """
    if not isinstance(filter, str) or filter not in _FILTERS:
        raise ValueError(f"resize_rgb: unsupported filter {filter!r}; use one of {', '.join(map(repr, _FILTERS))}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                else type(image).__name__)
        raise ValueError(f"resize_rgb: expected a uint8 RGB image of shape (H, W, 3), got a {what}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"resize_rgb: the image is empty (shape {image.shape})")
    try:
        out_w, out_h = (operator.index(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"resize_rgb: size must be two integers (width, height), got {size!r}") from None
    if out_w < 1 or out_h < 1:
        raise ValueError(f"resize_rgb: size must be positive, got {(out_w, out_h)}")

    image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    if (out_w, out_h) == (w, h):
        return image.copy()
    if out_w == w:
        return _vertical_pass(image, 0, h, out_h, filter)
    if out_h == h:
        return _horizontal_pass(image, 0, h, out_w, filter)
    # Pillow 13 runs the vertical pass first when it shrinks more than twice as many rows as the
    # horizontal pass removes columns; otherwise horizontally first, over the rows the vertical pass reads.
    if h - out_h > max(0, 2 * (w - out_w)):
        return _horizontal_pass(_vertical_pass(image, 0, h, out_h, filter), 0, out_h, out_w, filter)
    starts, counts, _ = _axis(h, out_h, filter)
    first, end = int(starts[0]), int(starts[-1] + counts[-1])
    return _vertical_pass(_horizontal_pass(image, first, end - first, out_w, filter), first, h, out_h, filter)
