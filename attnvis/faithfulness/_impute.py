"""ROAD's noisy linear imputation (Rong et al. 2022, as pytorch-grad-cam's ``NoisyLinearImputer``), batched.

Each removed pixel becomes the weighted mean of its 8 neighbours (1/6 along an
edge, 1/12 diagonally; neighbours outside the image are dropped and the
weights renormalised), kept pixels are fixed: one sparse, symmetric positive
definite system per image and mask, the same for every channel. grad-cam
solves it with SuperLU (``spsolve``); here each system is solved by conjugate
gradients on the removed pixels only, all channels at once, systems in
parallel, to a relative residual of 1e-10 (the imputed pixels agree with the
direct solve within ~1e-7).
"""

from __future__ import annotations

import numba
import numpy as np

# (dy, dx, weight) of the 8 neighbours, as grad-cam's ``neighbors_weights``
NEIGHBOURS = np.array([(1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12),
                       (0, -1, 1 / 6), (-1, -1, 1 / 12), (1, 0, 1 / 6), (-1, 0, 1 / 6)])
TOLERANCE = 1e-10  # relative residual at which conjugate gradients stop
MAX_ITERATIONS = 20_000


def impute(x: np.ndarray, removed: np.ndarray, noise: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Copies of ``x`` whose ``removed`` pixels are linearly imputed from the kept ones.

    Args:
        x: float32 [N, C, H, W] (model-input space).
        removed: bool [N, H, W].
        noise: standard deviation of the Gaussian noise added to each imputed value (0: none).
        rng: the noise's generator (default: a fresh ``default_rng(0)``).

    Returns:
        float32 [N, C, H, W]. An image with every pixel removed has nothing to impute from: its pixels become 0.
    """
    x = np.ascontiguousarray(x, np.float32)
    removed = np.ascontiguousarray(removed, np.bool_)
    if removed.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"removed must be [N, H, W] = {(x.shape[0], *x.shape[2:])}, got {removed.shape}")
    out = _solve(x, removed, NEIGHBOURS, TOLERANCE, MAX_ITERATIONS)
    if noise:
        rng = rng or np.random.default_rng(0)
        out += (np.float32(noise) * rng.standard_normal(out.shape, np.float32)) * removed[:, None]
    return out



@numba.njit(cache=True)
def _system(removed, neighbours):
    """Unknowns' flat pixel index, neighbour table (unknown index or -1) and diagonal."""
    height, width = removed.shape
    index = -np.ones(height * width, np.int64)
    pixels = np.flatnonzero(removed.ravel())
    for i in range(pixels.size):
        index[pixels[i]] = i
    table = -np.ones((pixels.size, 8), np.int64)
    known = np.zeros((pixels.size, 8), np.int64)  # flat pixel of a kept neighbour, or -1
    diag = np.zeros(pixels.size)
    for i in range(pixels.size):
        y, x = divmod(pixels[i], width)
        for k in range(8):
            yy, xx = y + int(neighbours[k, 0]), x + int(neighbours[k, 1])
            known[i, k] = -1
            if 0 <= yy < height and 0 <= xx < width:
                diag[i] += neighbours[k, 2]
                j = index[yy * width + xx]
                if j >= 0:
                    table[i, k] = j
                else:
                    known[i, k] = yy * width + xx
    return pixels, table, known, diag


@numba.njit(cache=True)
def _apply(table, diag, weights, p, out):
    n, channels = p.shape
    for i in range(n):
        for c in range(channels):
            out[i, c] = diag[i] * p[i, c]
        for k in range(8):
            j = table[i, k]
            if j >= 0:
                for c in range(channels):
                    out[i, c] -= weights[k] * p[j, c]


@numba.njit(cache=True)
def _solve_one(image, removed, neighbours, tolerance, max_iterations, out):
    channels = image.shape[0]
    flat = image.reshape(channels, -1)
    pixels, table, known, diag = _system(removed, neighbours)
    n = pixels.size
    target = out.reshape(channels, -1)
    if n == 0:
        return
    if n == flat.shape[1]:  # nothing kept: nothing to impute from
        target[:] = 0.0
        return
    weights = neighbours[:, 2].copy()
    rhs = np.zeros((n, channels))
    for i in range(n):
        for k in range(8):
            j = known[i, k]
            if j >= 0:
                for c in range(channels):
                    rhs[i, c] += weights[k] * flat[c, j]
    solution = np.zeros((n, channels))
    residual = rhs.copy()
    direction = rhs.copy()
    product = np.zeros((n, channels))
    rr = np.zeros(channels)
    stop = np.zeros(channels)
    for c in range(channels):
        rr[c] = np.sum(residual[:, c] ** 2)
        stop[c] = tolerance * tolerance * rr[c]
    for _ in range(max_iterations):
        if np.all(rr <= stop):
            break
        _apply(table, diag, weights, direction, product)
        for c in range(channels):
            if rr[c] <= stop[c]:
                continue
            alpha = rr[c] / np.sum(direction[:, c] * product[:, c])
            new = 0.0
            for i in range(n):
                solution[i, c] += alpha * direction[i, c]
                residual[i, c] -= alpha * product[i, c]
                new += residual[i, c] * residual[i, c]
            beta = new / rr[c]
            rr[c] = new
            for i in range(n):
                direction[i, c] = residual[i, c] + beta * direction[i, c]
    for i in range(n):
        for c in range(channels):
            target[c, pixels[i]] = solution[i, c]


@numba.njit(cache=True, parallel=True)
def _solve(images, removed, neighbours, tolerance, max_iterations):
    out = images.copy()
    for b in numba.prange(images.shape[0]):
        _solve_one(images[b], removed[b], neighbours, tolerance, max_iterations, out[b])
    return out
