"""Window attention (Swin and kin) stitched into one map over the stage's token grid.

A windowed block attends only within ``window × window`` windows, so its
captured map ``[windows, heads, w², w²]`` has no row that looks at the whole
image. The stitched map gives each position the attention it *receives*:
the mean, over heads and over the queries of its own window, of the weight
on that position as a key. It is placed at its window's position on the
padded grid, the cyclic shift of a shifted block is undone, and the padding
is cropped, which leaves a map at the stage's resolution ``(h, w)``; the
renderer resizes it to the image as for any grid.

Because every window's rows sum to 1, each window's values sum to 1 as well
(before padding is cropped): the map compares positions within a window;
across windows it shows how evenly each window spreads its attention.
"""

from __future__ import annotations

import numpy as np

from attnvis.metadata import WindowLayout


def received_attention(attn: np.ndarray, head: int | None = None) -> np.ndarray:
    """``[windows, heads, Q, K]`` → float32 ``[windows, K]``: mean over heads (or one head) and queries."""
    if head is not None:
        if not 0 <= head < attn.shape[1]:
            raise ValueError(f"head {head} out of range: this layer has {attn.shape[1]} heads (0..{attn.shape[1] - 1})")
        attn = attn[:, head : head + 1]
    return attn.mean(axis=(1, 2), dtype=np.float32)


def stitch_windows(attn: np.ndarray, layout: WindowLayout, head: int | None = None) -> np.ndarray:
    """One image's window attention → float32 ``[h, w]`` over the stage's token grid.

    Args:
        attn: ``[windows, heads, w², w²]`` as the block computed it for one
            image (a leading batch axis of 1 is accepted), or
            ``[windows, w², w²]`` already averaged over heads.
        layout: the block's windows (:class:`~attnvis.metadata.WindowLayout`).
        head: ``None`` averages the heads; an index picks one.

    Returns:
        float32 ``[h, w]`` with ``(h, w) = layout.grid``, C-contiguous.

    Raises:
        ValueError: a shape that does not match ``layout``, or ``head`` out of range.
    """
    attn = np.asarray(attn)
    if attn.ndim == 5 and attn.shape[0] == 1:
        attn = attn[0]
    if attn.ndim == 3:
        attn = attn[:, None]
    w = layout.window
    if attn.ndim != 4 or attn.shape[0] != layout.num_windows or attn.shape[-1] != w * w:
        raise ValueError(f"window attention of shape {attn.shape} does not match {layout.num_windows} windows of "
                         f"{w}x{w} on a {layout.grid[0]}x{layout.grid[1]} grid (expected [{layout.num_windows}, heads, "
                         f"{w * w}, {w * w}])")
    ph, pw = layout.padded
    keys = received_attention(attn, head).reshape(ph // w, pw // w, w, w)  # (window row, window col, y, x)
    shifted = keys.transpose(0, 2, 1, 3).reshape(ph, pw)  # the padded grid as the block saw it (rolled)
    h, w = layout.grid
    if layout.roll_before_pad:  # timm: the unpadded grid was rolled, then padded
        return np.ascontiguousarray(np.roll(shifted[:h, :w], layout.shifts, axis=(0, 1)), np.float32)
    grid = np.roll(shifted, layout.shifts, axis=(0, 1))  # undo torch.roll(x, (-rows, -columns))
    return np.ascontiguousarray(grid[:h, :w], dtype=np.float32)


def window_grid(attn: np.ndarray, layout: WindowLayout, head: int | None = None) -> np.ndarray:
    """One image's map of a windowed block, in any form an export gives it → float32 ``[h, w]``.

    Args:
        attn: ``[windows, heads, w², w²]`` (reduction ``none``),
            ``[windows, w², w²]`` (``mean-heads``) or ``[h·w]`` (``cls``: the
            stitched map itself, :mod:`attnvis.export.windows`).
        layout: the block's windows.
        head: a head index, only for ``[windows, heads, w², w²]``.

    Raises:
        ValueError: a shape that does not match ``layout``, or a head asked of a map without heads.
    """
    attn = np.asarray(attn)
    h, w = layout.grid
    if attn.ndim in (1, 3) and head is not None:
        raise ValueError(f"head={head} asked for, but the window map {attn.shape} was already averaged over heads")
    if attn.ndim == 1:
        if attn.shape[0] != h * w:
            raise ValueError(f"stitched window map of length {attn.shape[0]} does not match a {h}x{w} grid")
        return np.ascontiguousarray(attn, dtype=np.float32).reshape(h, w)
    return stitch_windows(attn, layout, head)


def window_head_grids(attn: np.ndarray, layout: WindowLayout) -> np.ndarray:
    """Every head's stitched map of one image's ``[windows, heads, w², w²]`` → float32 ``[heads, h, w]``."""
    attn = np.asarray(attn)
    if attn.ndim != 4:
        raise ValueError(f"per-head window maps need a [windows, heads, w², w²] map, got shape {attn.shape}")
    return np.stack([stitch_windows(attn, layout, head) for head in range(attn.shape[1])])
