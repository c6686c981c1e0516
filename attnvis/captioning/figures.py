"""Figures of a caption: each word's attention painted on the image, the caption strip, the refiner's maps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnvis.captioning import tiny
from attnvis.captioning.captioner import CaptionResult, load_aoanet, load_default_captioner
from attnvis.captioning.checkpoint import read_infos
from attnvis.captioning.features import (FeatureLayout, load_region_features, read_image, reference_resnet,
                                         resnet_grid_features)
from attnvis.captioning.model import AoAConfig
from attnvis.errors import InputError


@dataclass
class CaptionVisOptions:
    """What :func:`visualize_caption` reads and writes.

    Attributes:
        output: directory for the images (created).
        att_feats: bottom-up region features, ``.npz`` with key ``feat`` ``(N, A)``.
        boxes: their boxes, ``.npy`` ``(N, 4)`` ``x1, y1, x2, y2`` in image pixels.
        backbone_weights: a local torchvision ResNet-101 state dict, for grid
            features made as the original's ``prepro_feats`` (used when
            ``att_feats`` is not given).
        beam_size: 1 for greedy search.
        head: one head's map, or None for the mean over heads.
        layer: one refiner layer to write, or None for all six.
        save_raw: also write ``attn_raw_layer_{i}.npy`` and ``decoder_attention.npy``.
        colormap: an :data:`attnvis.render.COLORMAPS` name.
        alpha: heatmap weight in the overlays.
        device: ``cpu`` or ``cuda``.
        backend: ``torch`` or ``onnx``.
        prompt: a vision-language model's prompt (None: its default); an error for other captioners.
    """

    output: Path = Path("attn_vis")
    att_feats: Path | None = None
    boxes: Path | None = None
    backbone_weights: Path | None = None
    beam_size: int = 1
    head: int | None = None
    layer: int | None = None
    save_raw: bool = False
    colormap: str = "jet"
    alpha: float = 0.5
    device: str = "cpu"
    backend: str = "torch"
    prompt: str | None = None


@dataclass
class CaptionReport:
    """What a visualisation run produced."""

    sentence: str
    files: list[Path]
    result: CaptionResult


def _word_map(attn: np.ndarray, head: int | None) -> np.ndarray:
    """``(heads, N)`` → ``(N,)``: one head or the mean over heads."""
    if head is None:
        return attn.mean(0)
    if not 0 <= head < attn.shape[0]:
        raise InputError(f"head {head} out of range: this model has heads 0..{attn.shape[0] - 1}")
    return attn[head]


def _paint(values: np.ndarray, image: np.ndarray, layout: FeatureLayout, opts: CaptionVisOptions):
    """``(N,)`` region values → ``(heatmap, overlay)`` on ``image``."""
    from attnvis import render

    values = np.ascontiguousarray(values, dtype=np.float32)
    if layout.boxes is not None:
        return render.render_regions(values, layout.boxes, image, opts.colormap, opts.alpha)
    return render.render_map(values.reshape(layout.grid), image, opts.colormap, opts.alpha)


def _safe(word: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in word) or "_"


def caption_strip(tiles: list[np.ndarray], words: list[str], height: int = 160) -> np.ndarray:
    """Overlays side by side, each word written under its tile (RGB uint8)."""
    import cv2

    cols = []
    for tile, word in zip(tiles, words):
        w = max(1, round(tile.shape[1] * height / tile.shape[0]))
        tile = cv2.resize(tile, (w, height), interpolation=cv2.INTER_AREA)
        band = np.full((28, max(w, 8 * len(word) + 8), 3), 255, np.uint8)
        cv2.putText(band, word, (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        tile = np.pad(tile, ((0, 0), (0, band.shape[1] - w), (0, 0)), constant_values=255)
        cols.append(np.pad(np.concatenate([tile, band]), ((0, 0), (0, 4), (0, 0)), constant_values=255))
    return np.concatenate(cols, axis=1) if cols else np.full((height + 28, 8, 3), 255, np.uint8)


def write_caption_maps(image: np.ndarray, result: CaptionResult, layout: FeatureLayout,
                       opts: CaptionVisOptions) -> list[Path]:
    """Per-word overlays, the caption strip and the refiner maps of image 0."""
    from attnvis import render

    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    files, tiles = [], []
    words = result.words(0)
    for t, word in enumerate(words):
        _, overlay = _paint(_word_map(result.decoder_attention[0, t], opts.head), image, layout, opts)
        files.append(render.write_image(out / f"word_{t}_{_safe(word)}.png", overlay))
        tiles.append(overlay)
    files.append(render.write_image(out / "caption_strip.png", caption_strip(tiles, words)))
    files += _write_refiner(image, result, layout, opts, out)
    if opts.save_raw:
        files.append(out / "decoder_attention.npy")
        np.save(files[-1], result.decoder_attention[0, :len(words)])
    return files


def _write_refiner(image, result: CaptionResult, layout: FeatureLayout, opts: CaptionVisOptions, out: Path):
    from attnvis import render

    maps = result.refiner_attention
    if opts.layer is not None and not 0 <= opts.layer < max(len(maps), 1):
        raise InputError(f"layer {opts.layer} out of range: the refiner has layers 0..{len(maps) - 1}")
    files = []
    for i, layer_map in enumerate(maps):
        if opts.layer is not None and i != opts.layer:
            continue
        name = f"refiner_layers_{i}_self_attn"
        # no CLS token: the mean over query regions, (heads, N, N) -> (heads, N)
        heat, overlay = _paint(_word_map(layer_map[0].mean(1), opts.head), image, layout, opts)
        files.append(render.write_image(out / f"attn_map_layer_{i}_{name}.png", overlay))
        files.append(render.write_image(out / f"heatmap_layer_{i}_{name}.png", heat))
        if opts.save_raw:
            files.append(out / f"attn_raw_layer_{i}.npy")
            np.save(files[-1], layer_map[0])
    return files


def _features(image: np.ndarray, opt: Any, cfg: AoAConfig, opts: CaptionVisOptions):
    """``(fc, att, layout)`` from region files or the ResNet grid."""
    if opts.att_feats is not None:
        if opts.boxes is None:
            raise InputError("--att-feats needs --boxes (one box per region, .npy (N, 4))")
        fc, att, boxes = load_region_features(opts.att_feats, opts.boxes, cfg.att_feat_size, opt, image.shape[:2])
        return fc, att, FeatureLayout(boxes=boxes)
    if opts.backbone_weights is None:
        raise InputError("give region features (--att-feats FILE.npz --boxes FILE.npy) or a local ResNet-101 "
                         "state dict for grid features (--backbone-weights FILE.pth)")
    fc, att = resnet_grid_features(reference_resnet(opts.backbone_weights), image)
    if att.size(-1) != cfg.att_feat_size:
        raise InputError(f"the backbone gives {att.size(-1)} features, the model expects {cfg.att_feat_size}")
    return fc, att, FeatureLayout(grid=(14, 14))


def visualize_caption(image_path: str | Path, model_path: str | Path, infos_path: str | Path,
                      options: CaptionVisOptions | None = None) -> CaptionReport:
    """Caption one image and write where each word looked.

    Writes ``word_{t}_{word}.png`` overlays, ``caption_strip.png`` and, per
    refiner layer, ``attn_map_layer_{i}_{layer}.png`` / ``heatmap_layer_{i}_{layer}.png``
    (``attn_raw_layer_{i}.npy`` with ``save_raw``).
    """
    opts = options or CaptionVisOptions()
    image = read_image(image_path)
    cfg, _, opt = read_infos(infos_path)
    fc, att, layout = _features(image, opt, cfg, opts)
    captioner = load_aoanet(infos_path, model_path, backend=opts.backend, device=opts.device)
    result = captioner.caption(fc, att, beam_size=opts.beam_size)
    files = write_caption_maps(image, result, layout, opts)
    return CaptionReport(result.sentences[0], files, result)


def visualize_default_caption(image_path: str | Path, options: CaptionVisOptions | None = None) -> CaptionReport:
    """``attnvis visualize --model default-captioner``: the shipped tiny captioner on one image.

    Its features come from the shipped tiny backbone (the image resized to its input), as in
    ``attnvis batch --model default-captioner``; writes the same files as :func:`visualize_caption`.

    Raises:
        InputError: feature files or backbone weights given (this captioner makes its own features).
    """
    opts = options or CaptionVisOptions()
    if opts.att_feats is not None or opts.boxes is not None or opts.backbone_weights is not None:
        raise InputError("default-captioner makes its own features with its shipped backbone; leave out --att-feats, "
                         "--boxes and --backbone-weights")
    captioner = load_default_captioner(opts.backend, device=opts.device)  # first: a bad --device ends here
    image = read_image(image_path)
    return _caption_tiny(captioner, image, opts)


def _caption_tiny(captioner, image: np.ndarray, opts: CaptionVisOptions) -> CaptionReport:
    """The tiny captioner on ``image`` (RGB uint8, any size): its figures written into ``opts.output``."""
    fc, att = tiny.tiny_features(tiny.load_tiny_backbone(), image)
    result = captioner.caption(fc, att, beam_size=opts.beam_size)
    side = tiny.TINY_IMAGE // tiny.TINY_CELL
    files = write_caption_maps(image, result, FeatureLayout(grid=(side, side)), opts)
    return CaptionReport(result.sentences[0], files, result)


def demo_caption(output: str | Path = "attn_vis", device: str = "cpu", backend: str = "torch",
                 beam_size: int = 1, seed: int | None = None) -> CaptionReport:
    """``attnvis demo --caption``: the shipped tiny captioner on a held-out synthetic scene.

    Writes the same files as :func:`visualize_caption` plus the scene as ``scene.png``.
    """
    from attnvis import render

    opts = CaptionVisOptions(output=Path(output), beam_size=beam_size, device=device, backend=backend)
    captioner = load_default_captioner(opts.backend, device=opts.device)  # first: a bad --device ends here
    scene = tiny.make_caption_scene(tiny.TINY_HELD_OUT_SEED + 7 if seed is None else seed)
    report = _caption_tiny(captioner, scene.image, opts)
    report.files.append(render.write_image(Path(opts.output) / "scene.png", scene.image))
    return report
