"""Figures over many maps of one image: a layers × heads contact sheet, a GIF through layers."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnvis.metadata import TokenLayout
from attnvis.render.colormaps import DEFAULT_COLORMAP
from attnvis.render.grid import attention_grid
from attnvis.render.heatmap import Scale, global_scale, render_map

NORMALIZE = ("image", "global")


def _scale_for(grids: Sequence[np.ndarray], normalize: str) -> Scale | None:
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
    return global_scale(grids) if normalize == "global" else None


def _resize_to_height(image: np.ndarray, height: int) -> np.ndarray:
    import cv2

    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """Draw white text with a dark outline in the top-left corner (in place)."""
    import cv2

    scale = max(0.3, tile.shape[0] / 320)
    origin = (3, 3 + int(12 * scale))
    cv2.putText(tile, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _sheet_grids(maps: Sequence[np.ndarray], tokens: TokenLayout, mean_column: bool) -> list[list[np.ndarray]]:
    """Per layer: [mean, head 0, head 1, ...] grids (mean only if asked)."""
    rows = []
    for layer in maps:
        layer = np.asarray(layer)
        if layer.ndim != 3:
            raise ValueError(f"contact_sheet needs per-layer maps [heads, Q, K], got shape {layer.shape}")
        heads = [attention_grid(layer, tokens, head=h) for h in range(layer.shape[0])]
        rows.append(([attention_grid(layer, tokens)] if mean_column else []) + heads)
    return rows


def contact_sheet(
    maps: Sequence[np.ndarray],
    tokens: TokenLayout,
    image: np.ndarray,
    *,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = 0.5,
    tile_height: int = 128,
    normalize: str = "image",
    mean_column: bool = True,
) -> np.ndarray:
    """One image's attention, layers × heads, as one picture.

    Args:
        maps: per layer in call order, ``[heads, Q, K]`` for this image.
        tokens: the model's token layout.
        image: uint8 [H, W, 3] RGB.
        colormap: one of :data:`attnvis.render.COLORMAPS`.
        alpha: heatmap weight in each overlay.
        tile_height: height of each tile in pixels (width keeps the aspect).
        normalize: ``"image"`` (each tile its own min-max) or ``"global"``
            (one range over all tiles, so strengths compare across tiles).
        mean_column: put the head mean first in each row.

    Returns:
        uint8 RGB sheet, rows = layers, columns = (mean,) heads, 2-pixel white gaps,
        each tile labelled ``L{layer} H{head}`` (or ``mean``).
    """
    if len(maps) == 0:
        raise ValueError("contact_sheet needs at least one layer's map")
    rows = _sheet_grids(maps, tokens, mean_column)
    scale = _scale_for([g for row in rows for g in row], normalize)
    tile_image = _resize_to_height(image, int(tile_height))
    th, tw = tile_image.shape[:2]
    columns = max(len(row) for row in rows)
    gap = 2
    sheet = np.full((len(rows) * (th + gap) - gap, columns * (tw + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, grid in enumerate(row):
            tile = render_map(grid, tile_image, colormap, alpha, scale=scale, parallel=False)[1]
            head = "mean" if mean_column and j == 0 else f"H{j - int(mean_column)}"
            y, x = i * (th + gap), j * (tw + gap)
            sheet[y : y + th, x : x + tw] = _label(tile, f"L{i} {head}")
    return sheet


def layers_gif(
    path: str | os.PathLike,
    maps: Sequence[np.ndarray],
    tokens: TokenLayout,
    image: np.ndarray,
    *,
    head: int | None = None,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = 0.5,
    duration_ms: int = 500,
    normalize: str = "image",
) -> Path:
    """Write an animated GIF stepping through the layers' overlays (written atomically).

    Args:
        path: destination ``.gif``; its folder must exist.
        maps: per layer in call order, any input :func:`attention_grid` takes.
        tokens: the model's token layout.
        image: uint8 [H, W, 3] RGB.
        head: ``None`` for the head mean, else one head.
        colormap, alpha: as :func:`attnvis.render.render_map`.
        duration_ms: time each frame is shown; the GIF loops forever.
        normalize: ``"image"`` (per frame) or ``"global"`` (one range over layers).

    Returns:
        The path written.
    """
    from PIL import Image

    from attnvis.render.writers import write_bytes_atomic

    if len(maps) == 0:
        raise ValueError("layers_gif needs at least one layer's map")
    if not Path(path).parent.is_dir():
        raise FileNotFoundError(f"output folder {str(Path(path).parent)!r} does not exist; create it first")
    grids = [attention_grid(layer, tokens, head=head) for layer in maps]
    scale = _scale_for(grids, normalize)
    frames = [
        Image.fromarray(_label(render_map(g, image, colormap, alpha, scale=scale)[1], f"layer {i}"))
        for i, g in enumerate(grids)
    ]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=int(duration_ms), loop=0)
    return write_bytes_atomic(path, buffer.getvalue())
