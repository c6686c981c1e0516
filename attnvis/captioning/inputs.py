"""Checks of what callers pass to a captioner: images and beam sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attnvis.errors import InputError


def check_beam_size(beam_size: int) -> int:
    """``beam_size`` itself when it is a positive integer; one clear line otherwise."""
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise InputError(f"--beam-size must be a positive integer (1: greedy search), got {beam_size!r}")
    return beam_size


def as_images(images) -> list[np.ndarray]:
    """File paths or RGB uint8 arrays (one, or a list) → a list of ``(H, W, 3)`` uint8 arrays."""
    from attnvis.captioning.features import read_image

    items = images if isinstance(images, (list, tuple)) else [images]
    out = []
    for item in items:
        if isinstance(item, (str, Path)):
            out.append(read_image(item))
        elif isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3:
            out.append(item)
        else:
            raise InputError(f"images must be file paths or RGB uint8 arrays (H, W, 3), got {_what(item)}")
    return out


def _what(item: Any) -> str:
    if isinstance(item, np.ndarray):
        return f"an array {item.dtype} {item.shape}"
    return type(item).__name__
