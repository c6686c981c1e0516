"""Ground truth for the localisation metrics: ``--boxes`` JSON and ``--masks DIR``, mapped to the model input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from attnvis.errors import InputError

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".gif", ".pgm", ".ppm")


def load_boxes(path: str) -> dict[str, list[list[float]]]:
    """``{"image key or path": [[x0, y0, x1, y1], ...]}`` from a JSON file, each box checked for its form."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"--boxes {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"--boxes {path}: not a JSON file ({err})") from None
    if not isinstance(doc, dict):
        raise InputError(f"--boxes {path}: expected an object {{\"image\": [[x0, y0, x1, y1], ...]}}, got {type(doc).__name__}")
    for key, boxes in doc.items():
        ok = isinstance(boxes, list) and all(isinstance(b, list) and len(b) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b) for b in boxes)
        if not ok:
            raise InputError(f"--boxes {path}: {key!r} must be a list of [x0, y0, x1, y1] boxes of numbers, got {boxes!r}")
    return doc


def boxes_for(boxes: dict, key: str, source: str) -> list | None:
    """The boxes given for an image, looked up by its key, its path as given, or its absolute path."""
    for name in (key, source, str(Path(source).resolve())):
        if name in boxes:
            return boxes[name]
    return None


def check_boxes(boxes: list, size: tuple[int, int], key: str) -> None:
    """Every box inside the ``(height, width)`` image, with x0 < x1 and y0 < y1."""
    height, width = size
    for x0, y0, x1, y1 in boxes:
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise InputError(f"--boxes: box {[x0, y0, x1, y1]} of {key} is outside the {width}x{height} image "
                             "(boxes are [x0, y0, x1, y1] in the original image's pixels, x0 < x1, y0 < y1)")


def box_mask(boxes: list, size: tuple[int, int]) -> np.ndarray:
    """The union of the boxes as a bool mask of the original image (a pixel is in when its centre is)."""
    height, width = size
    mask = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, math.ceil(y0 - 0.5)):math.ceil(y1 - 0.5), max(0, math.ceil(x0 - 0.5)):math.ceil(x1 - 0.5)] = True
    return mask


def find_mask(folder: str, key: str) -> Path | None:
    """``DIR/<stem>.<image suffix>`` for the image ``key`` (its stem), else ``None``."""
    stem = Path(key).stem
    for suffix in MASK_SUFFIXES:
        candidate = Path(folder) / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_mask(path: Path, size: tuple[int, int], key: str) -> np.ndarray:
    """A binary mask image (any non-zero pixel is in), checked to be the image's size."""
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise InputError(f"--masks: cannot read {path} as an image")
    if mask.shape != tuple(size):
        raise InputError(f"--masks: {path.name} is {mask.shape[1]}x{mask.shape[0]} but the image {key} is "
                         f"{size[1]}x{size[0]}; a mask must have its image's size")
    return mask > 0


def to_input(mask: np.ndarray, pre) -> np.ndarray:
    """An original-image mask on the model input's pixels, bool [H, W]: nearest pixel through the preprocessing's
    geometry (a plain resize, or resize then centre crop), pixels the crop adds are out."""
    h0, w0 = mask.shape
    out_h, out_w = pre.size
    if not pre.resize_short:
        sizes, top, left = (out_w, out_h), 0, 0
    else:
        scale_h, scale_w = (math.floor(s / pre.crop_pct + 1e-6) for s in (out_h, out_w))
        if scale_h == scale_w:
            sizes = (scale_w, int(scale_w * h0 / w0)) if w0 <= h0 else (int(scale_h * w0 / h0), scale_h)
        else:
            sizes = (scale_w, scale_h)
        left, top = int(round((sizes[0] - out_w) / 2.0)), int(round((sizes[1] - out_h) / 2.0))
    ys = np.floor((np.arange(out_h) + top + 0.5) * h0 / sizes[1]).astype(np.int64)
    xs = np.floor((np.arange(out_w) + left + 0.5) * w0 / sizes[0]).astype(np.int64)
    inside = (ys[:, None] >= 0) & (ys[:, None] < h0) & (xs[None] >= 0) & (xs[None] < w0)
    return mask[np.clip(ys, 0, h0 - 1)[:, None], np.clip(xs, 0, w0 - 1)[None]] & inside
