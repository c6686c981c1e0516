"""Checks of what callers pass to a captioner: images, beam sizes and caption lengths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attnvis.errors import InputError


def check_beam_size(beam_size: int, vocab_size: int | None = None) -> int:
    """``beam_size`` itself when it is a positive integer, at most ``vocab_size``; one clear line otherwise."""
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise InputError(f"--beam-size must be a positive integer (1: greedy search), got {beam_size!r}")
    if vocab_size is not None and beam_size > vocab_size:
        raise InputError(f"--beam-size {beam_size} is larger than the captioner's vocabulary ({vocab_size} tokens): "
                         f"give 1..{vocab_size}")
    return beam_size


def check_max_new_tokens(max_new_tokens: int | None) -> int | None:
    """``max_new_tokens`` itself when it is None or a positive integer; one clear line otherwise."""
    if max_new_tokens is None:
        return None
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer (tokens after the start token), "
                         f"got {max_new_tokens!r}")
    return int(max_new_tokens)


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
