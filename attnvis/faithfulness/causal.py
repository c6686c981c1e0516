"""Deletion and insertion (Petsiuk et al., BMVC 2018), as RISE's ``evaluation.py`` (``CausalMetric``, ``gkern``, ``auc``)."""

from __future__ import annotations

import math

import numpy as np

from attnvis.errors import InputError
from attnvis.faithfulness._model import Classifier, check_inputs, softmax

KERNEL_SIZE, KERNEL_SIGMA = 11, 5.0  # RISE's insertion substrate: gkern(11, 5)


def deletion(model, x: np.ndarray, maps: np.ndarray, step: int = 224, *,
             batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RISE's deletion game: remove pixels in descending map order, ``step`` at a time.

    Convention (RISE ``CausalMetric(model, 'del', step, torch.zeros_like)`` with a softmax model):
    pixels in the order ``np.flip(np.argsort(map))``; after ``i`` steps the first ``i * step`` are
    set to 0 **in normalised (model-input) space**; ``n = ceil(H*W / step)`` steps, ``n + 1``
    points counting the start; the score is the softmax probability of the class that is top-1 on
    the clean image; the AUC is RISE's ``auc`` (trapezoid over [0, 1]). Lower is better.

    Returns:
        (curves float32 [B, n + 1], auc float32 [B]).
    """
    x, maps, _ = check_inputs(x, maps)
    return _causal(Classifier(model, batch_size), x, maps, step, x, np.zeros_like(x))


def insertion(model, x: np.ndarray, maps: np.ndarray, step: int = 224, *,
              batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RISE's insertion game: start from the blurred image and insert the original pixels in descending map order.

    Convention (RISE ``CausalMetric(model, 'ins', step, blur)``): the start is RISE's blur, a
    per-channel convolution with ``gkern(11, 5)`` (a delta smoothed by ``scipy.ndimage.gaussian_filter``,
    sigma 5, its default reflecting border) with zero padding, in normalised space; otherwise as
    :func:`deletion`. Higher is better.

    Returns:
        (curves float32 [B, n + 1], auc float32 [B]).
    """
    x, maps, _ = check_inputs(x, maps)
    return _causal(Classifier(model, batch_size), x, maps, step, blur(x), x)


def auc(curves: np.ndarray) -> np.ndarray:
    """RISE's ``auc``: ``(sum - first/2 - last/2) / (n - 1)`` along the last axis (the trapezoid rule on [0, 1])."""
    curves = np.asarray(curves, np.float64)
    return ((curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / (curves.shape[-1] - 1)).astype(np.float32)


def gkern(size: int = KERNEL_SIZE, sigma: float = KERNEL_SIGMA) -> np.ndarray:
    """RISE's ``gkern`` kernel, float32 [size, size]: ``gaussian_filter`` of a centred delta.

    ``gaussian_filter`` (truncate 4, mode ``reflect``) is separable and the delta is the outer product
    of two 1-D deltas, so the kernel is the outer product of the filtered 1-D delta; ``reflect``
    mirrors about the edges (``d c b a | a b c d | d c b a``) as often as the Gaussian's radius needs.
    """
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    line = np.zeros(size)
    for i in range(size):
        for offset in range(-radius, radius + 1):
            m = (i + offset) % (2 * size)
            if (m if m < size else 2 * size - 1 - m) == size // 2:
                line[i] += taps[offset + radius]
    return np.outer(line, line).astype(np.float32)


def blur(x: np.ndarray) -> np.ndarray:
    """RISE's insertion substrate: each channel convolved with :func:`gkern`, zero padding, float32 [B, C, H, W]."""
    import cv2

    kernel = gkern().astype(np.float64)
    out = np.empty_like(x)
    for b in range(len(x)):
        for c in range(x.shape[1]):
            out[b, c] = cv2.filter2D(x[b, c].astype(np.float64), -1, kernel, borderType=cv2.BORDER_CONSTANT)
    return out


def salient_order(maps: np.ndarray) -> np.ndarray:
    """Each map's pixels in RISE's order, int [B, H*W]: ``np.flip(np.argsort(map.reshape(-1)))``."""
    return np.flip(np.argsort(maps.reshape(len(maps), -1), axis=1), axis=-1)


def _causal(clf: Classifier, x, maps, step: int, start: np.ndarray, finish: np.ndarray):
    count, channels = len(x), x.shape[1]
    pixels = maps.shape[1] * maps.shape[2]
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise InputError(f"step must be a positive number of pixels, got {step!r}")
    steps = math.ceil(pixels / step)
    rank = np.empty((count, pixels), np.int64)  # rank[b, pixel]: its position in the order
    rank[np.arange(count)[:, None], salient_order(maps)] = np.arange(pixels)
    top = clf.logits(x).argmax(1)

    def build(b: int, ks: np.ndarray) -> np.ndarray:
        changed = rank[b][None] < (ks * step)[:, None]  # [k, H*W]: pixels replaced after k steps
        copies = np.where(changed[:, None], finish[b].reshape(channels, -1)[None], start[b].reshape(channels, -1)[None])
        return copies.reshape(len(ks), *x.shape[1:])

    probs = softmax(clf.copies(count, steps + 1, build))
    curves = np.take_along_axis(probs, top[:, None, None], axis=2)[:, :, 0]
    return curves.astype(np.float32), auc(curves)
