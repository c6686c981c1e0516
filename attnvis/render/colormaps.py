"""256-entry RGB colormap tables (OpenCV's JET by default).

The tables were generated once by :mod:`attnvis.render._gen_colormaps` and
are stored as constants, so no plotting library is needed at run time.
"""

from __future__ import annotations

import numpy as np

from attnvis.render._colormap_data import HEX

COLORMAPS: tuple[str, ...] = ("jet", "viridis", "inferno", "magma", "turbo", "gray")
DEFAULT_COLORMAP = "jet"

_CACHE: dict[str, np.ndarray] = {}


def colormap_table(name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """The lookup table of a colormap.

    Args:
        name: one of :data:`COLORMAPS`.

    Returns:
        Read-only uint8 array [256, 3], RGB; row ``i`` is the colour of level ``i``.

    Raises:
        ValueError: unknown name.
    """
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    table = _CACHE.get(name)
    if table is None:
        table = np.frombuffer(bytes.fromhex(HEX[name]), dtype=np.uint8).reshape(256, 3)
        _CACHE[name] = table  # frombuffer on bytes is read-only: safe to share
    return table
