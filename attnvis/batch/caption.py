"""``attnvis batch --model CAPTIONER``: caption every image and write where each word looked.

Per image ``OUTPUT/<key>/``: ``word_{t}_{word}.png`` (overlay) and
``heatmap_word_{t}_{word}.png`` per generated word, ``caption_strip.png``
and the gallery thumbnail. The manifest record carries ``caption``,
``words`` and ``token_ids``; each map names its ``word`` (an index into
``words``), so the gallery shows the caption and each word's map. A bad
image, or an AoANet image without its feature file, is a failed record; the
rest go on.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnvis.batch import manifest as mf
from attnvis.batch.cores import batch_size_for
from attnvis.batch.decode import decode
from attnvis.batch.stages import THUMB_NAME, _one_line, _thumbnail, clean_tmp, write_files
from attnvis.errors import AttnvisError, InputError


@dataclass
class CaptionOptions:
    """The captioning part of a batch (``--infos_path``, feature folders, ``--beam-size``, a VLM's ``--prompt``)."""

    infos_path: str | None = None
    att_feats_dir: str | None = None
    fc_feats_dir: str | None = None
    boxes_dir: str | None = None
    backbone_weights: str | None = None
    beam_size: int = 1
    prompt: str | None = None

    def features(self) -> dict:
        """The feature sources given, as ``load_captioner`` keywords."""
        names = ("att_feats_dir", "fc_feats_dir", "boxes_dir", "backbone_weights")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def is_caption_run(model: str | None, caption: CaptionOptions | None) -> bool:
    """Whether a batch's model is a captioner: ``default-captioner``, a captioner directory, or a ``.pth`` with infos."""
    from attnvis.captioning.kinds import is_captioner_dir

    if model is None:
        return False
    return model == "default-captioner" or is_captioner_dir(model) or bool(caption and caption.infos_path)


def _fingerprint(config, caption: CaptionOptions) -> str:
    opts = config.options
    doc = {"model": config.model, "beam": caption.beam_size, "prompt": caption.prompt, "layer": opts.layer, "head": opts.head,
           "colormap": opts.colormap, "alpha": opts.alpha, "features": caption.features(), "kind": "caption"}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _word_files(key: str, image: np.ndarray, cap, opts) -> tuple[list[tuple[str, bytes]], list[dict], list[str]]:
    """Encoded files, map entries and the words of one caption."""
    from attnvis.captioning.figures import caption_strip
    from attnvis.captioning.word_figures import paint_word, safe_word, word_map
    from attnvis.render import encode_image

    files, maps, words, tiles = [], [], [], []
    for t in cap.word_indices():
        heat, overlay = paint_word(word_map(cap, t, opts.layer, opts.head), image, cap, opts.colormap, opts.alpha)
        name = f"{t}_{safe_word(cap.words[t])}.png"
        files += [(f"{key}/word_{name}", encode_image(overlay, "png")), (f"{key}/heatmap_word_{name}", encode_image(heat, "png"))]
        maps.append({"layer": 0, "head": opts.head, "overlay": f"{key}/word_{name}",
                     "heatmap": f"{key}/heatmap_word_{name}", "word": len(words)})
        words.append(cap.words[t])
        tiles.append(overlay)
    files.append((f"{key}/caption_strip.png", encode_image(caption_strip(tiles, words), "png")))
    files.append((f"{key}/{THUMB_NAME}", _thumbnail(tiles[0] if tiles else image)))
    return files, maps, words


def _ok_record(item, image: np.ndarray, cap, config, plan: str, root: Path) -> dict:
    files, maps, words = _word_files(item.key, image, cap, config.options)
    write_files(root, files)
    return {"key": item.key, "source": item.path, "status": "ok", "error": None,
            "files": [rel for rel, _ in files], "checks": [mf.file_check(data) for _, data in files],
            "maps": maps, "thumb": f"{item.key}/{THUMB_NAME}", "size": list(image.shape[:2]), "prediction": None,
            "caption": cap.sentence, "words": words, "token_ids": cap.token_ids.tolist(),
            "plan": plan, "time": round(time.time(), 3)}


def _failed(item, error: str, plan: str) -> dict:
    return {"key": item.key, "source": item.path, "status": "failed", "error": " ".join(error.split()),
            "files": [], "plan": plan, "time": round(time.time(), 3)}


def _caption_chunk(captioner, chunk: list, config, caption: CaptionOptions) -> list:
    """Captions of decoded ``(item, image)`` pairs: the whole chunk at once, else one by one (failures kept)."""
    from attnvis.captioning.word_figures import prompt_keywords

    feature_based = hasattr(captioner, "caption_one")
    kwargs = {"beam_size": caption.beam_size, **prompt_keywords(captioner, caption.prompt)}
    if not feature_based:
        try:
            return captioner.caption([image for _, image in chunk], **kwargs)
        except AttnvisError:
            pass  # find the image at fault below
    out = []
    for item, image in chunk:
        try:
            source = item.path if feature_based else image
            out.append(captioner.caption([source], **kwargs)[0])
        except AttnvisError as err:
            out.append(err)
        except Exception as err:  # noqa: BLE001 - a bad feature file: record it, go on
            out.append(InputError(f"{item.key}: {type(err).__name__}: {_one_line(err)}"))
    return out


def open_captioner(config, caption: CaptionOptions):
    """The run's captioner (``--backend ort`` means the captioner's ``onnx`` backend), its ``--beam-size`` checked."""
    from attnvis.captioning.load import load_captioner

    from attnvis.captioning.inputs import check_beam_size

    backend = "onnx" if config.backend in ("ort", "onnx") else config.backend
    captioner = load_captioner(config.model, backend=backend, device=config.device, infos_path=caption.infos_path,
                               **caption.features())
    check_beam_size(caption.beam_size, getattr(captioner, "vocab_size", None))  # before any image, any output
    return captioner


def pending_items(items: list, previous: dict, root: Path, config, caption: CaptionOptions) -> list:
    """The items ``--resume`` does not skip."""
    plan = _fingerprint(config, caption)
    return [item for item in items if not mf.is_complete(previous.get(item.key), root, plan)]


def caption_metadata(title: str = "cross-attention"):
    """The gallery's one "layer": each word's cross-attention map."""
    from attnvis.metadata import LayerInfo, ModelMetadata

    return ModelMetadata(layers=[LayerInfo(title, "cross", 0, 1, 0, "caption")], source="caption")


def caption_items(captioner, config, caption: CaptionOptions, items: list, root: Path, sink) -> None:
    """Caption ``items`` in chunks of ``--batch-size`` (default by device); every record (ok or failed) goes to ``sink``."""
    from attnvis.captioning.inputs import check_beam_size

    check_beam_size(caption.beam_size, getattr(captioner, "vocab_size", None))  # up front, not once per image
    plan = _fingerprint(config, caption)
    clean_tmp(root)
    size = batch_size_for(config.batch_size, config.device)
    for start in range(0, len(items), size):
        decoded = []
        for item in items[start:start + size]:
            try:
                decoded.append((item, decode(item.path, item.key, None, config.max_pixels).image))
            except InputError as err:
                sink(_failed(item, str(err), plan))
            except Exception as err:  # noqa: BLE001 - OpenCV/PIL internals: record it, go on
                sink(_failed(item, f"{item.key}: cannot decode ({type(err).__name__}: {_one_line(err)})", plan))
        for (item, image), cap in zip(decoded, _caption_chunk(captioner, decoded, config, caption)):
            if isinstance(cap, BaseException):
                sink(_failed(item, f"{item.key}: {cap}", plan))
                continue
            try:
                sink(_ok_record(item, image, cap, config, plan, root))
            except AttnvisError as err:
                sink(_failed(item, f"{item.key}: {err}", plan))
