"""In-graph reductions of a windowed block's maps (Swin and kin).

A windowed block's capture is ``(B, windows, heads, w², w²)``
(:mod:`attnvis.capture.adapters.windows`). ``mean-heads`` averages the heads,
``(B, windows, w², w²)``; ``cls`` has no CLS row to take, so it gives what
the renderer draws for the block: the stitched map of
:func:`attnvis.render.windows.stitch_windows` (attention each position
receives, shift undone, padding cropped), flattened to ``(B, h·w)`` at the
stage's resolution ``layout.grid``.
"""

from __future__ import annotations

import torch

from attnvis.metadata import REDUCTIONS, WindowLayout


def stitch_windows_torch(received: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """``(B, windows, w²)`` received attention → ``(B, h·w)``, as :func:`attnvis.render.windows.stitch_windows` places it."""
    w, (ph, pw) = layout.window, layout.padded
    keys = received.reshape(-1, ph // w, pw // w, w, w)  # (B, window row, window col, y, x)
    grid = keys.permute(0, 1, 3, 2, 4).reshape(-1, ph, pw)  # the padded grid as the block saw it (rolled)
    if layout.roll_before_pad:  # timm: the unpadded grid was rolled, then padded
        grid = grid[:, : layout.grid[0], : layout.grid[1]]
    if layout.shift:
        grid = torch.roll(grid, layout.shifts, dims=(1, 2))  # undo torch.roll(x, (-rows, -columns))
    return grid[:, : layout.grid[0], : layout.grid[1]].reshape(grid.size(0), -1)


def reduce_window_map(weights: torch.Tensor, reduction: str, layout: WindowLayout) -> torch.Tensor:
    """Apply an in-graph reduction to one windowed block's ``(B, windows, heads, w², w²)`` weights."""
    if reduction == "none":
        return weights
    if reduction == "mean-heads":
        return weights.mean(dim=2)  # (B, windows, w², w²)
    if reduction == "cls":
        return stitch_windows_torch(weights.mean(dim=(2, 3)), layout)  # (B, h·w)
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
