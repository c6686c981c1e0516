"""Render attention maps: heatmaps, overlays, figures, files.

Importing this package is cheap: numba, OpenCV and the kernels load on first
use of a name that needs them, and nothing is compiled at import.

Public API:

- :func:`render_map` — grid [h, w] + image → (heatmap, overlay), fused numba kernel.
- :func:`render_heatmap`, :func:`render_regions`, :func:`region_values`.
- :class:`Scale`, :func:`global_scale` — normalization per image or over many maps.
- :func:`attention_grid`, :func:`attention_grids`, :func:`head_grids` — captured maps → grid.
- :func:`stitch_windows`, :func:`window_grid`, :func:`window_head_grids` — a windowed block's maps
  (Swin) → one grid at its stage's resolution.
- :data:`COLORMAPS`, :func:`colormap_table`.
- :data:`FORMATS`, :func:`encode_image`, :func:`write_image`.
- :func:`attention_rollout`, :func:`threshold_mask`.
- :func:`contact_sheet`, :func:`layers_gif`.
"""

from __future__ import annotations

from attnvis._lazy import lazy_attributes

_LAZY = {
    "COLORMAPS": "attnvis.render.colormaps",
    "DEFAULT_COLORMAP": "attnvis.render.colormaps",
    "colormap_table": "attnvis.render.colormaps",
    "render_map": "attnvis.render.heatmap",
    "render_heatmap": "attnvis.render.heatmap",
    "render_regions": "attnvis.render.heatmap",
    "region_values": "attnvis.render.heatmap",
    "Scale": "attnvis.render.heatmap",
    "global_scale": "attnvis.render.heatmap",
    "attention_grid": "attnvis.render.grid",
    "attention_grids": "attnvis.render.grid",
    "head_grids": "attnvis.render.grid",
    "stitch_windows": "attnvis.render.windows",
    "window_grid": "attnvis.render.windows",
    "window_head_grids": "attnvis.render.windows",
    "FORMATS": "attnvis.render.writers",
    "encode_image": "attnvis.render.writers",
    "write_image": "attnvis.render.writers",
    "attention_rollout": "attnvis.render.rollout",
    "threshold_mask": "attnvis.render.rollout",
    "contact_sheet": "attnvis.render.figures",
    "layers_gif": "attnvis.render.figures",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
