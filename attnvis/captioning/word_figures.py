"""Per-word figures of any :class:`ImageCaption`: ``word_{t}_{word}.png`` and ``caption_strip.png``.

Each word's map is its cross-attention to the image tokens: the mean over
heads (or ``head``), the mean over decoder layers (or ``layer``), prefix
tokens (CLS, distillation, registers) dropped, the patch grid (or the
detector boxes) painted on the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnvis.captioning.figures import CaptionReport, CaptionVisOptions, caption_strip
from attnvis.captioning.result import ImageCaption
from attnvis.errors import InputError


def word_map(caption: ImageCaption, t: int, layer: int | None = None, head: int | None = None) -> np.ndarray:
    """``(K,)`` the weights with which token ``t`` looked at the encoder tokens (prefix included).

    Raises:
        InputError: ``layer`` or ``head`` out of range (the message gives the range).
    """
    maps = caption.cross_attention[t]  # (layers, heads, K)
    layers, heads = maps.shape[:2]
    if layer is not None and not 0 <= layer < layers:
        raise InputError(f"layer {layer} out of range: this captioner's decoder has layers 0..{layers - 1}")
    if head is not None and not 0 <= head < heads:
        raise InputError(f"head {head} out of range: this captioner has heads 0..{heads - 1}")
    maps = maps.mean(0) if layer is None else maps[layer]
    return maps.mean(0) if head is None else maps[head]


def paint_word(values: np.ndarray, image: np.ndarray, caption: ImageCaption, colormap: str = "jet",
               alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(K,)`` → ``(heatmap, overlay)``: patch tokens on their grid, or regions in their boxes."""
    from attnvis import render

    values = np.ascontiguousarray(values, dtype=np.float32)
    if caption.boxes is not None:
        return render.render_regions(values, caption.boxes, image, colormap, alpha)
    grid = caption.tokens.grid
    patches = values[caption.tokens.prefix_tokens:]
    if grid is None or patches.size != grid[0] * grid[1]:
        raise InputError(f"cannot place {patches.size} encoder tokens on the image (grid {grid})")
    return render.render_map(np.ascontiguousarray(patches.reshape(grid)), image, colormap, alpha)


def safe_word(word: str) -> str:
    """A word as a file-name part."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in word) or "_"


def write_word_maps(image: np.ndarray, caption: ImageCaption, opts: CaptionVisOptions) -> list[Path]:
    """Write ``word_{t}_{word}.png`` per generated word and ``caption_strip.png`` into ``opts.output``."""
    from attnvis import render

    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    files, tiles, words = [], [], []
    for t in caption.word_indices():
        _, overlay = paint_word(word_map(caption, t, opts.layer, opts.head), image, caption, opts.colormap,
                                opts.alpha)
        files.append(render.write_image(out / f"word_{t}_{safe_word(caption.words[t])}.png", overlay))
        tiles.append(overlay)
        words.append(caption.words[t])
    files.append(render.write_image(out / "caption_strip.png", caption_strip(tiles, words)))
    if opts.save_raw:
        from attnvis.render.writers import encode_npy, write_bytes_atomic

        files.append(write_bytes_atomic(out / "cross_attention.npy", encode_npy(caption.cross_attention)))
    return files


def visualize_hf_caption(image_path: str | Path, model_dir: str | Path,
                         options: CaptionVisOptions | None = None) -> CaptionReport:
    """Caption one image with a Hugging Face captioner and write where each word looked."""
    from attnvis.captioning.features import read_image
    from attnvis.captioning.inputs import check_beam_size
    from attnvis.captioning.load import load_captioner

    opts = options or CaptionVisOptions()
    check_beam_size(opts.beam_size)
    image = read_image(image_path)
    captioner = load_captioner(model_dir, backend=opts.backend, device=opts.device)
    (caption,) = captioner.caption([image], beam_size=opts.beam_size)
    return CaptionReport(caption.sentence, write_word_maps(image, caption, opts), caption)
