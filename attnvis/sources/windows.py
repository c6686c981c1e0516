"""Window layouts of Swin-style models: which windows each block attends within, at which stage resolution.

Pure arithmetic from the model's configuration and the input size, as the
models compute it in their forward pass (so that a layout also holds for an
input size other than the one the model was configured for).
"""

from __future__ import annotations

from attnvis.metadata import WindowLayout


def swin_layouts(grid: tuple[int, int], depths: list[int] | tuple[int, ...], window: int) -> list[WindowLayout]:
    """Every block's :class:`WindowLayout`, in call order, for a Swin whose patch grid is ``grid``.

    Blocks alternate unshifted and shifted by ``window // 2``; where a
    stage's grid is no larger than the window, the window shrinks to the
    grid's short side and the block is not shifted (as Hugging Face's
    ``SwinLayer.set_shift_and_window_size`` does). Patch merging halves the
    grid between stages, rounding up (odd sides are padded first).
    """
    layouts, (h, w) = [], grid
    for stage, depth in enumerate(depths):
        for block in range(depth):
            size, shift = window, (0 if block % 2 == 0 else window // 2)
            if min(h, w) <= window:
                size, shift = min(h, w), 0
            layouts.append(WindowLayout(stage, (h, w), size, shift))
        h, w = (h + 1) // 2, (w + 1) // 2
    return layouts


def hf_swin_layouts(config, size: tuple[int, int]) -> list[WindowLayout]:
    """The layouts of a Hugging Face ``SwinModel`` (``SwinConfig``) on an ``size`` input.

    The patch embedding pads the image to whole patches, so the grid is
    ``ceil(H / patch) × ceil(W / patch)``.
    """
    patch = int(config.patch_size)
    grid = (-(-size[0] // patch), -(-size[1] // patch))
    return swin_layouts(grid, list(config.depths), int(config.window_size))
