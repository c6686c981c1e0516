"""Pillow's ``Image.resize`` of RGB uint8 images, bit for bit, without PIL images.

Model preprocessing must see the pixels the model was trained on, and that is
Pillow's output. :func:`resize_rgb` reproduces Pillow 13's convolution
resampling (``libImaging/Resample.c``) for the bilinear, bicubic and Lanczos
filters: the same double-precision filter weights normalized by their
sequential sum, the same 22-bit fixed-point coefficients and rounding, the same
two passes with the same 8-bit clamping in between, in the order Pillow 13
picks from the sizes.

Both passes run as one numba kernel along the first axis, where a source row
is contiguous and the multiply-adds vectorize; the horizontal pass runs on the
transposed image (OpenCV's transpose: an exact copy). The integer sums are Pillow's, in int32
without overflow (a pixel's coefficients sum to 2**22 and their negative lobes
are small), so their order does not matter.
"""

from __future__ import annotations

import functools
import math
import operator

import cv2
import numpy as np
from numba import njit

__all__ = ["resize_rgb", "FILTERS"]

_PRECISION_BITS = 22  # Pillow's 32 - 8 - 2: 8-bit pixels, 2 bits for negative lobes and overshoot
_HALF = 1 << (_PRECISION_BITS - 1)
_KINDS = {"bilinear": (0, 1.0), "bicubic": (1, 2.0), "lanczos": (2, 3.0)}  # kind, support
FILTERS = tuple(_KINDS)


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


@njit(cache=True, nogil=True)
def _pass(src: np.ndarray, first: int, starts: np.ndarray, counts: np.ndarray, coeffs: np.ndarray,
          out: np.ndarray) -> None:
    """Resample along axis 0: ``src`` [rows, n] uint8 holds image rows ``first ..``; ``out`` [out_rows, n]."""
    n = src.shape[1]
    acc = np.empty(n, np.int32)
    for yy in range(out.shape[0]):
        acc[:] = _HALF
        y0 = starts[yy] - first
        for t in range(counts[yy]):
            k = coeffs[yy, t]
            row = src[y0 + t]
            for j in range(n):  # contiguous: vectorized
                acc[j] += np.int32(row[j]) * k
        for j in range(n):
            out[yy, j] = min(max(acc[j] >> _PRECISION_BITS, 0), 255)


@functools.lru_cache(maxsize=256)
def _axis(in_size: int, out_size: int, filter: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, counts, coeffs) of one axis; Pillow passes the box edge ``in_size`` as a float32."""
    kind, support = _KINDS[filter]
    arrays = _coefficients(float(np.float32(in_size)), in_size, out_size, kind, support)
    for a in arrays:
        a.flags.writeable = False  # shared through the cache
    return arrays


def _vertical(image: np.ndarray, first: int, in_h: int, out_h: int, filter: str) -> np.ndarray:
    """``image`` [rows, w, 3] holds rows ``first ..`` of an ``in_h``-row image; returns [out_h, w, 3]."""
    starts, counts, coeffs = _axis(in_h, out_h, filter)
    out = np.empty((out_h, *image.shape[1:]), np.uint8)
    _pass(image.reshape(image.shape[0], -1), first, starts, counts, coeffs, out.reshape(out_h, -1))
    return out


def _horizontal(image: np.ndarray, out_w: int, filter: str) -> np.ndarray:
    """[h, w, 3] → [h, out_w, 3]: the vertical pass on the transposed image."""
    flipped = cv2.transpose(image)  # (w, h, 3); ~15x numpy's copy of a transposed view
    return cv2.transpose(_vertical(flipped, 0, image.shape[1], out_w, filter))


def _check(image: np.ndarray, size: tuple[int, int], filter: str) -> tuple[int, int]:
    if not isinstance(filter, str) or filter not in _KINDS:
        raise ValueError(f"resize_rgb: unsupported filter {filter!r}; use one of {', '.join(map(repr, _KINDS))}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"resize_rgb: expected a uint8 RGB image of shape (H, W, 3), got a {what}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"resize_rgb: the image is empty (shape {image.shape})")
    try:
        out_w, out_h = (operator.index(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"resize_rgb: size must be two integers (width, height), got {size!r}") from None
    if out_w < 1 or out_h < 1:
        raise ValueError(f"resize_rgb: size must be positive, got {(out_w, out_h)}")
    return out_w, out_h


def resize_rgb(image: np.ndarray, size: tuple[int, int], filter: str) -> np.ndarray:
    """``np.asarray(Image.fromarray(image).resize(size, F))`` for F = BILINEAR / BICUBIC / LANCZOS, bit for bit.

    Args:
        image: uint8 [H, W, 3], any strides.
        size: ``(out_w, out_h)``, as PIL takes it.
        filter: one of :data:`FILTERS`.

    Returns:
        A new C-contiguous uint8 [out_h, out_w, 3] array.
    """
    out_w, out_h = _check(image, size, filter)
    image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    if (out_w, out_h) == (w, h):
        return image.copy()
    if out_w == w:
        return _vertical(image, 0, h, out_h, filter)
    if out_h == h:
        return _horizontal(image, out_w, filter)
    # Pillow 13 runs the vertical pass first when it shrinks more than twice as many rows as the
    # horizontal pass removes columns; otherwise horizontally first, over the rows the vertical pass reads.
    if h - out_h > max(0, 2 * (w - out_w)):
        return _horizontal(_vertical(image, 0, h, out_h, filter), out_w, filter)
    starts, counts, _ = _axis(h, out_h, filter)
    first, end = int(starts[0]), int(starts[-1] + counts[-1])
    return _vertical(_horizontal(image[first:end], out_w, filter), first, h, out_h, filter)
