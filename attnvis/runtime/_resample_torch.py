"""The CPU preprocessing on torch tensors, on any device: Pillow's resize, the crop and the normalization, bit for bit.

:func:`preprocess_tensors` gives the values :func:`attnvis.runtime.images.preprocess`
gives for the same pixels, so a batch decoded on the GPU feeds the model what
the CPU path would. Each resampling pass is Pillow's 22-bit fixed-point sum
(:mod:`attnvis.runtime._resample`'s coefficients), written as a matrix product
in float64: the coefficients and pixels are integers, every partial sum is an
integer far below 2**53, so the product is exact whatever the summation order
or fused multiply-adds, and ``floor((sum + 2**21) / 2**22)`` is Pillow's shift.
The passes run in Pillow 13's order with the same 8-bit clamp in between.
Images of one size are resampled together (one product per pass for all of them).
"""

from __future__ import annotations

import functools

import numpy as np

from attnvis.metadata import Preprocess
from attnvis.runtime import _resample

_ONE = float(1 << _resample._PRECISION_BITS)
_HALF = float(_resample._HALF)


def supported(pre: Preprocess) -> tuple[bool, str]:
    """(usable, why not): the model's filter is one :mod:`attnvis.runtime._resample` reproduces for this Pillow."""
    from attnvis.runtime import images

    if pre.interpolation not in _resample.FILTERS:
        return False, f"the model's {pre.interpolation!r} resize is Pillow's own, not reproduced on the device"
    if images._PILLOW_MAJOR != images._VERIFIED_PILLOW:
        return False, f"Pillow {images._PILLOW_MAJOR} resamples in another order than the one reproduced (Pillow 13)"
    return True, ""


@functools.lru_cache(maxsize=128)
def _matrix(in_size: int, out_size: int, filter: str, device: str):
    """Pillow's fixed-point weights of one axis as a dense float64 [out_size, in_size] matrix on ``device``."""
    import torch

    starts, counts, coeffs = _resample._axis(in_size, out_size, filter)
    dense = np.zeros((out_size, in_size), np.float64)
    for i, (start, count) in enumerate(zip(starts, counts)):
        dense[i, start:start + count] = coeffs[i, :count]
    return torch.from_numpy(dense).to(device)


def _settle(acc):
    """Pillow's ``clip8((acc + HALF) >> PRECISION_BITS)`` of exact integer sums (float64)."""
    return acc.add_(_HALF).div_(_ONE).floor_().clamp_(0.0, 255.0)


def _vertical(x, out_h: int, filter: str):
    """x float64 [n, H, W, 3] → [n, out_h, W, 3]."""
    n, h, w, c = x.shape
    m = _matrix(h, out_h, filter, str(x.device))
    return _settle(m @ x.reshape(n, h, w * c)).reshape(n, out_h, w, c)


def _horizontal(x, out_w: int, filter: str):
    """x float64 [n, H, W, 3] → [n, H, out_w, 3]."""
    import torch

    m = _matrix(x.shape[2], out_w, filter, str(x.device))
    return _settle(torch.einsum("ow,nhwc->nhoc", m, x))


def resize(x, size_hw: tuple[int, int], filter: str):
    """uint8 [n, H, W, 3] → float64 [n, h, w, 3] of integers 0..255: ``resize_rgb`` of each image, bit for bit."""
    out_h, out_w = size_hw
    h, w = x.shape[1:3]
    x = x.double()
    if (out_h, out_w) == (h, w):
        return x
    if out_w == w:
        return _vertical(x, out_h, filter)
    if out_h == h:
        return _horizontal(x, out_w, filter)
    if h - out_h > max(0, 2 * (w - out_w)):  # Pillow 13's order (see _resample.resize_rgb)
        return _horizontal(_vertical(x, out_h, filter), out_w, filter)
    return _vertical(_horizontal(x, out_w, filter), out_h, filter)


def plan(height: int, width: int, pre: Preprocess) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resize h, w), (crop top, left)) for an image of ``height`` × ``width``, as ``images._resize`` sizes it."""
    import math

    out_h, out_w = pre.size
    if not pre.resize_short:
        return (out_h, out_w), (0, 0)
    scale_h, scale_w = (math.floor(s / pre.crop_pct + 1e-6) for s in (out_h, out_w))
    if scale_h == scale_w:  # torchvision's Resize(int) arithmetic
        size = (int(scale_w * height / width), scale_w) if width <= height else (scale_h, int(scale_h * width / height))
    else:
        size = (scale_h, scale_w)
    return size, (int(round((size[0] - out_h) / 2.0)), int(round((size[1] - out_w) / 2.0)))


def _crop(x, top: int, left: int, out_h: int, out_w: int):
    """``images._crop`` of [n, h, w, 3]: a box past the edges is filled with zeros."""
    if (top, left) == (0, 0) and x.shape[1:3] == (out_h, out_w):
        return x
    out = x.new_zeros((x.shape[0], out_h, out_w, x.shape[3]))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + out_h, x.shape[1]), min(left + out_w, x.shape[2])
    if y1 > y0 and x1 > x0:
        out[:, y0 - top:y1 - top, x0 - left:x1 - left] = x[:, y0:y1, x0:x1]
    return out


def preprocess_tensors(images: list, pre: Preprocess):
    """RGB uint8 [H, W, 3] tensors (one device) → float32 [B, 3, h, w] on it, equal to ``images.preprocess``.

    Images of one size are resized in one product per pass.
    """
    import torch

    device = images[0].device
    out = torch.empty((len(images), 3, *pre.size), dtype=torch.float32, device=device)
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=device).view(3, 1, 1)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape[:2]), []).append(i)
    for (h, w), members in groups.items():
        size, (top, left) = plan(h, w, pre)
        x = _crop(resize(torch.stack([images[i] for i in members]), size, pre.interpolation), top, left, *pre.size)
        if pre.channel_order.upper() == "BGR":
            x = x.flip(3)
        x = x.permute(0, 3, 1, 2).to(torch.float32)  # (n, 3, h, w): integers, exact in float32
        out[members] = (x * np.float32(pre.scale).item() - mean) / std  # the CPU's float32 operations, in its order
    return out
