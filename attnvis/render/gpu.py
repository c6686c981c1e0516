"""Render on the GPU: every layer of one image in two launches, levels equal to :func:`render_map`'s.

:func:`render_maps_cuda` takes a stack of small maps and one image, NumPy or
CUDA arrays (numba device arrays, or anything with ``__cuda_array_interface__``
such as a torch CUDA tensor), and returns the heatmaps and overlays, on the
host or left on the device. The kernels are in :mod:`attnvis.render._cuda`
(numba-cuda: ``pip install "attnvis[gpu]"``); PNG encoding stays on CPU
threads. :func:`cuda_render_usable` says whether a GPU (or numba's CUDA
simulator) is there to run them.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from attnvis.render.colormaps import DEFAULT_COLORMAP, colormap_table
from attnvis.render.heatmap import Scale, _check_alpha, _check_grid, _range_args, check_rgb

_SIM_LOCK = threading.Lock()
_RANGE_BLOCKS = 128  # blocks per map of the range pass (grid-stride): one atomic pair per block


def cuda_render_usable() -> bool:
    """Whether numba-cuda is installed and sees a GPU (or runs its simulator)."""
    try:
        import numba_cuda  # noqa: F401 - the package that provides numba.cuda
        from numba import cuda
    except ImportError:
        return False
    return bool(cuda.is_available())


def sim_threads() -> int | None:
    """Threads per block for :func:`render_maps_cuda`: 32 under numba's CUDA simulator (a Python thread each), else its default."""
    from numba.core import config

    return 32 if config.ENABLE_CUDASIM else None


def _k():
    from attnvis.render import _cuda

    return _cuda


@functools.lru_cache(maxsize=64)
def _taps(src: int, dst: int):
    """Device copies of the CPU kernel's resize taps along one axis (i0, i1, w1)."""
    from attnvis.render._kernels import axis_coeffs

    cuda = _k().cuda
    return tuple(cuda.to_device(a) for a in axis_coeffs(src, dst))


@functools.lru_cache(maxsize=16)
def _lut(colormap: str):
    """The colormap as a device array uint8 [256, 3] RGB (raises on an unknown name)."""
    table = np.ascontiguousarray(colormap_table(colormap), dtype=np.uint8)
    return _k().cuda.to_device(table)


def _on_device(array, what: str, dtype, ndim: int):
    """A numba device array of ``array`` (copied when it is host memory), shape and dtype checked."""
    cuda = _k().cuda
    if _is_device(array):
        array = array if hasattr(array, "copy_to_host") else cuda.as_cuda_array(array)  # torch, CuPy: no copy
    elif what == "grids":
        array = np.stack([_check_grid(g, f"grids[{i}]") for i, g in enumerate(np.asarray(array))]) \
            if np.ndim(array) == 3 and len(array) else np.asarray(array)
    else:
        array = check_rgb(array, what)
    if array.ndim != ndim or array.dtype != dtype or 0 in array.shape:
        raise ValueError(f"{what} must be non-empty {np.dtype(dtype).name} with {ndim} dimensions, "
                         f"got {array.dtype} {array.shape}")
    if what == "image" and array.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {array.shape}")
    return array if _is_device(array) else cuda.to_device(np.ascontiguousarray(array))


def _is_device(array) -> bool:
    """A numba device array (real or simulated) or another CUDA array."""
    return hasattr(array, "copy_to_host") or hasattr(array, "__cuda_array_interface__")


def _ranges(k, grids, taps, n: int, scale: Scale | None, threads: int):
    """Each map's (lo, hi) as a device array [n, 2] float32: fixed, or the exact min / max."""
    vmin, vmax, use_range = _range_args(scale)
    if use_range:
        return k.cuda.to_device(np.tile(np.float32([vmin, vmax]), (n, 1)))
    keys = k.cuda.to_device(np.tile(np.int32([0x7FFFFFFF, -0x80000000]), (n, 1)))
    width, height = taps[0][0].shape[0], taps[1][0].shape[0]
    blocks = min(-(-width * height // threads), _RANGE_BLOCKS)
    k.range_kernel[(blocks, n), threads](grids, *taps[0], *taps[1], keys)
    ranges = k.cuda.device_array((n, 2), np.float32)
    k.keys_to_ranges[-(-n // 32), 32](keys, ranges)
    return ranges


def render_maps_cuda(grids, image, colormap: str = DEFAULT_COLORMAP, alpha: float = 0.5, *,
                     scale: Scale | None = None, to_host: bool = True, threads: int | None = None):
    """Upsample, colour and blend ``n`` maps over one image on the GPU.

    Args:
        grids: float32 [n, h, w] maps (e.g. every layer's CLS row on the patch grid).
        image: uint8 [H, W, 3] RGB; left unmodified.
        colormap: one of :data:`attnvis.render.COLORMAPS`.
        alpha: weight of the heatmap in the overlay, in [0, 1].
        scale: ``None``: min-max per map, as :func:`render_map`; or one fixed :class:`Scale`.
        to_host: return NumPy arrays; ``False`` leaves them on the device (numba device arrays).
        threads: threads per block, a power of two ≤ 256 (default 256; tests use fewer).

    Returns:
        ``(heatmaps, overlays)``, each uint8 [n, H, W, 3]; map ``i``'s equal
        ``render_map(grids[i], image, colormap, alpha, scale=scale)``.

    Raises:
        ValueError: wrong dtype/shape, non-finite host maps, alpha, scale or colormap out of range.
        MissingExtraError: numba-cuda is not installed.
    """
    alpha = _check_alpha(alpha)
    k = _k()
    if k.SIMULATOR:  # the simulator swaps the kernels' module globals while one runs: one call at a time there
        with _SIM_LOCK:
            return _render(k, grids, image, colormap, alpha, scale, to_host, threads)
    return _render(k, grids, image, colormap, alpha, scale, to_host, threads)


def _render(k, grids, image, colormap: str, alpha: float, scale, to_host: bool, threads: int | None):
    lut = _lut(colormap)  # an unknown colormap raises before any upload
    threads = threads or k.THREADS
    if threads > k.THREADS or threads & (threads - 1):
        raise ValueError(f"threads must be a power of two ≤ {k.THREADS}, got {threads}")
    grids, image = _on_device(grids, "grids", np.float32, 3), _on_device(image, "image", np.uint8, 3)
    n, (h, w), (height, width) = grids.shape[0], grids.shape[1:], image.shape[:2]
    taps = (_taps(w, width), _taps(h, height))
    ranges = _ranges(k, grids, taps, n, scale, threads)
    heat = k.cuda.device_array((n, height, width, 3), np.uint8)
    over = k.cuda.device_array((n, height, width, 3), np.uint8)
    a_img, a_heat = np.float64(np.float32(1.0 - alpha)), np.float32(alpha)
    blocks = -(-height * width // threads)
    k.shade_kernel[(blocks, n), threads](grids, *taps[0], *taps[1], ranges, lut, image,
                                        a_img, a_heat, bool(a_heat == np.float32(0.5)), heat, over)
    return (heat.copy_to_host(), over.copy_to_host()) if to_host else (heat, over)


def upsample_cuda(grids, size_hw: tuple[int, int], threads: int | None = None) -> np.ndarray:
    """The bilinear upsampling alone, float32 [n, H, W] on the host: the CPU kernels' values bit for bit."""
    k = _k()
    threads = threads or k.THREADS
    grids = _on_device(grids, "grids", np.float32, 3)
    (n, h, w), (height, width) = grids.shape, (int(size_hw[0]), int(size_hw[1]))
    taps = (_taps(w, width), _taps(h, height))
    out = k.cuda.device_array((n, height, width), np.float32)
    k.upsample_kernel[(-(-height * width // threads), n), threads](grids, *taps[0], *taps[1], out)
    return out.copy_to_host()
