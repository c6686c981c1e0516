"""Where each image token of a vision-language model lies on the image, per family.

- LLaVA: one grid of ``(crop / patch)²`` tokens over the processor's
  centre crop (CLS dropped by the ``default`` feature strategy, else first).
- Qwen2-VL / Qwen2.5-VL: ``image_grid_thw`` patches merged 2×2 into one token
  each, over the whole (resized) image.
- PaliGemma: ``(size / patch)²`` tokens over the whole (squashed) image.
"""

from __future__ import annotations

from typing import Any

from attnvis.captioning.result import ImageTile
from attnvis.errors import ModelError


def image_tiles(m: Any, inputs: dict, b: int, size: tuple[int, int], count: int) -> list[ImageTile]:
    """The tiles of image ``b`` (original ``size = (H, W)``) whose ``count`` tokens are in the prompt."""
    if m.kind in ("qwen2_vl", "qwen2_5_vl"):
        tiles = _qwen(m, inputs, b, size)
    elif m.kind in ("idefics3", "smolvlm"):
        from attnvis.captioning.vlm_idefics import idefics_tiles

        tiles = idefics_tiles(m, inputs, b, size)
    else:
        tiles = _single(m, inputs, size, count)
    covered = max((t.start + t.grid[0] * t.grid[1] for t in tiles), default=0)
    if covered != count:
        raise ModelError(f"{m.path}: {count} image tokens in the prompt, but its tiles {[t.grid for t in tiles]} "
                         f"hold {covered}")
    return tiles


def _single(m: Any, inputs: dict, size: tuple[int, int], count: int) -> list[ImageTile]:
    """LLaVA and PaliGemma: one patch grid over the processor's crop (or the whole image)."""
    patch = m.model.config.vision_config.patch_size
    ph, pw = inputs["pixel_values"].shape[-2:]
    grid = (ph // patch, pw // patch)
    return [ImageTile(grid, _crop_box(m.processor.image_processor, size), count - grid[0] * grid[1])]


def _crop_box(proc: Any, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part of an ``(H, W)`` image a resize-shortest-edge + centre-crop processor keeps (else all of it)."""
    h, w = size
    shortest = (getattr(proc, "size", None) or {}).get("shortest_edge")
    crop = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    if not shortest or not crop:
        return 0.0, 0.0, float(w), float(h)
    short, long_ = (h, w) if h <= w else (w, h)
    new_long = int(shortest * long_ / short)
    rh, rw = (shortest, new_long) if h <= w else (new_long, shortest)
    ch, cw = crop["height"], crop["width"]
    top, left = (rh - ch) / 2, (rw - cw) / 2
    sy, sx = h / rh, w / rw
    return max(0.0, left * sx), max(0.0, top * sy), min(float(w), (left + cw) * sx), min(float(h), (top + ch) * sy)


def _qwen(m: Any, inputs: dict, b: int, size: tuple[int, int]) -> list[ImageTile]:
    """Qwen2-VL: ``(t, h, w)`` patches, ``merge × merge`` of them to a token; images only (``t = 1``)."""
    t, h, w = (int(v) for v in inputs["image_grid_thw"][b])
    merge = int(getattr(m.processor.image_processor, "merge_size", 2))
    grid = (h // merge, w // merge)
    if t != 1:
        raise ModelError(f"{m.path}: {t} temporal patches in an image; attnvis places still images only")
    return [ImageTile(grid, (0.0, 0.0, float(size[1]), float(size[0])), 0)]
