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
    if getattr(caption, "tiles", None) is not None:
        return paint_tiles(values, image, caption.tiles, colormap, alpha)
    if caption.boxes is not None:
        return render.render_regions(values, caption.boxes, image, colormap, alpha)
    grid = caption.tokens.grid
    patches = values[caption.tokens.prefix_tokens:]
    if grid is None or patches.size != grid[0] * grid[1]:
        raise InputError(f"cannot place {patches.size} encoder tokens on the image (grid {grid})")
    return render.render_map(np.ascontiguousarray(patches.reshape(grid)), image, colormap, alpha)


def paint_tiles(values: np.ndarray, image: np.ndarray, tiles: list, colormap: str = "jet",
                alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A VLM's ``(I,)`` image-token weights → ``(heatmap, overlay)``: each tile's grid painted on the part of
    the image it covers (one colour scale for all), the rest dimmed; a global thumbnail beside, on the whole image."""
    from attnvis import render

    used = np.concatenate([values[t.start:t.start + t.grid[0] * t.grid[1]] for t in tiles])
    scale = render.Scale(float(used.min()), float(used.max()))
    parts = [_paste_tiles(values, image, [t for t in tiles if not t.thumbnail], colormap, alpha, scale)]
    for t in (t for t in tiles if t.thumbnail):
        grid = np.ascontiguousarray(values[t.start:t.start + t.grid[0] * t.grid[1]].reshape(t.grid))
        parts.append(render.render_map(grid, image, colormap, alpha, scale=scale))
    parts = [p for p in parts if p is not None]
    return parts[0] if len(parts) == 1 else (_side_by_side([p[0] for p in parts]), _side_by_side([p[1] for p in parts]))


def _side_by_side(pictures: list[np.ndarray]) -> np.ndarray:
    gap = np.full((pictures[0].shape[0], 6, 3), 255, np.uint8)
    return np.concatenate([x for p in pictures for x in (p, gap)][:-1], axis=1)


def _paste_tiles(values, image, tiles, colormap, alpha, scale):
    from attnvis import render

    if not tiles:
        return None
    heat = np.zeros_like(image)
    overlay = (image // 2).astype(np.uint8)  # what the model did not see stays dim
    for t in tiles:
        x1, y1, x2, y2 = (int(round(v)) for v in t.box)
        if x2 <= x1 or y2 <= y1:
            continue
        grid = np.ascontiguousarray(values[t.start:t.start + t.grid[0] * t.grid[1]].reshape(t.grid))
        h, o = render.render_map(grid, np.ascontiguousarray(image[y1:y2, x1:x2]), colormap, alpha, scale=scale)
        heat[y1:y2, x1:x2], overlay[y1:y2, x1:x2] = h, o
    return heat, overlay


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


def prompt_keywords(captioner, prompt: str | None) -> dict:
    """``{"prompt": prompt}`` for a vision-language model; ``{}`` without a prompt; one line for a captioner."""
    if prompt is None:
        return {}
    from attnvis.captioning.vlm import VLMCaptioner

    if not isinstance(captioner, VLMCaptioner):
        raise InputError(f"--prompt applies to vision-language models (LLaVA, Qwen2-VL, Qwen2.5-VL, Idefics3, SmolVLM, "
                         f"PaliGemma); {getattr(captioner, 'name', 'this captioner')} captions without one")
    return {"prompt": prompt}


def visualize_hf_caption(image_path: str | Path, model_dir: str | Path,
                         options: CaptionVisOptions | None = None) -> CaptionReport:
    """Caption one image with a Hugging Face captioner or VLM (``options.prompt``) and write where each word looked."""
    from attnvis.captioning.features import read_image
    from attnvis.captioning.inputs import check_beam_size
    from attnvis.captioning.load import load_captioner

    opts = options or CaptionVisOptions()
    check_beam_size(opts.beam_size)
    image = read_image(image_path)
    captioner = load_captioner(model_dir, backend=opts.backend, device=opts.device)
    (caption,) = captioner.caption([image], beam_size=opts.beam_size, **prompt_keywords(captioner, opts.prompt))
    return CaptionReport(caption.sentence, write_word_maps(image, caption, opts), caption)
