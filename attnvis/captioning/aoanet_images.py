"""AoANet behind ``load_captioner``: images in, per-image :class:`ImageCaption` out.

AoANet captions features, not pixels; where each image's features come from:
the embedded tiny backbone (``default-captioner``), folders laid out as the
AoANet data pipeline stores them (``att_feats_dir/{id}.npz`` with ``feat``,
``fc_feats_dir/{id}.npy``, ``boxes_dir/{id}.npy`` in xyxy pixels, matched by
the image's file stem), or ResNet-101 grid features from ``backbone_weights``.
Each image is captioned on its own, exactly as ``attnvis visualize`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnvis.captioning import tiny
from attnvis.captioning.captioner import Captioner, load_aoanet
from attnvis.captioning.checkpoint import read_infos
from attnvis.captioning.decoding import decode_sequence
from attnvis.captioning.inputs import check_beam_size, check_max_new_tokens
from attnvis.captioning.kinds import DEFAULT_CAPTIONER
from attnvis.captioning.features import load_region_features, read_image, reference_resnet, resnet_grid_features
from attnvis.captioning.result import ImageCaption
from attnvis.errors import InputError
from attnvis.metadata import TokenLayout



@dataclass
class FeatureDirs:
    """Where an AoANet checkpoint's features are read (see the module docstring)."""

    att_feats_dir: Path | None = None
    fc_feats_dir: Path | None = None
    boxes_dir: Path | None = None
    backbone_weights: Path | None = None


class AoAImageCaptioner:
    """An AoANet :class:`Captioner` with a feature source, captioning images one by one."""

    def __init__(self, captioner: Captioner, opt: Any, dirs: FeatureDirs | None, tiny_model: bool = False) -> None:
        self.captioner = captioner
        self.opt = opt
        self.dirs = dirs or FeatureDirs()
        self.tiny = tiny_model
        self._backbone = None
        self.name = DEFAULT_CAPTIONER if tiny_model else captioner.name

    def caption(self, images, beam_size: int = 1, max_new_tokens: int | None = None) -> list[ImageCaption]:
        """Caption images (file paths; RGB uint8 arrays too when the features come from a backbone).

        ``max_new_tokens`` (at least 1) caps the caption at that many tokens, its sentence too; past the
        model's ``seq_length`` (AoANet decodes a fixed length) it changes nothing.
        """
        check_beam_size(beam_size, self.vocab_size)
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        items = images if isinstance(images, (list, tuple)) else [images]
        return [self.caption_one(item, beam_size, max_new_tokens) for item in items]

    def caption_one(self, item, beam_size: int = 1, max_new_tokens: int | None = None) -> ImageCaption:
        image, stem = self._image(item)
        fc, att, tokens, boxes = self.features(image, stem)
        result = self.captioner.caption(fc, att, beam_size=beam_size)
        limit = result.seq.shape[1] if max_new_tokens is None else min(max_new_tokens, result.seq.shape[1])
        seq = result.seq[0, :limit].tolist()
        ids = seq[:seq.index(0) + 1] if 0 in seq else seq
        vocab = self.captioner.vocab
        words = [vocab.get(str(t), "") if t else "<eos>" for t in ids]
        maps = result.decoder_attention[0, :len(ids), None].astype(np.float32)  # (T, 1, heads, N)
        sentence = decode_sequence(vocab, np.asarray([ids], np.int64))[0]  # the words kept, as the original joins them
        return ImageCaption(np.asarray(ids, np.int64), words, sentence, maps, tokens,
                            np.array([t == 0 for t in ids], bool), boxes=boxes)

    @property
    def vocab_size(self) -> int:
        """Tokens the decoder chooses from (the words and the end token): the largest beam size."""
        return self.captioner.cfg.vocab_size + 1

    def _image(self, item) -> tuple[np.ndarray, str | None]:
        if isinstance(item, (str, Path)):
            return read_image(item), Path(item).stem
        if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3:
            return item, None
        raise InputError(f"images must be file paths or RGB uint8 arrays (H, W, 3), got {type(item).__name__}")

    def features(self, image: np.ndarray, stem: str | None):
        """``(fc, att, tokens, boxes)`` for one image."""
        if self.tiny:
            if self._backbone is None:
                self._backbone = tiny.load_tiny_backbone()
            fc, att = tiny.tiny_features(self._backbone, image)
            side = tiny.TINY_IMAGE // tiny.TINY_CELL
            return fc, att, TokenLayout(kind="grid", grid=(side, side)), None
        if self.dirs.att_feats_dir is not None:
            return self._region_features(image, stem)
        if self.dirs.backbone_weights is None:
            raise InputError("AoANet needs features: give --att-feats-dir with --boxes-dir (and optionally "
                             "--fc-feats-dir), or --backbone-weights for ResNet-101 grid features")
        if self._backbone is None:
            self._backbone = reference_resnet(self.dirs.backbone_weights)
        fc, att = resnet_grid_features(self._backbone, image)
        if att.size(-1) != self.captioner.cfg.att_feat_size:
            raise InputError(f"the backbone gives {att.size(-1)} features, the model expects "
                             f"{self.captioner.cfg.att_feat_size}")
        return fc, att, TokenLayout(kind="grid", grid=(14, 14)), None

    def _region_features(self, image: np.ndarray, stem: str | None):
        if stem is None:
            raise InputError("feature folders are matched by file name: give image paths, not arrays")
        if self.dirs.boxes_dir is None:
            raise InputError("--att-feats-dir needs --boxes-dir (one {id}.npy of xyxy boxes per image)")
        att_path = Path(self.dirs.att_feats_dir) / f"{stem}.npz"
        boxes_path = Path(self.dirs.boxes_dir) / f"{stem}.npy"
        for path in (att_path, boxes_path):
            if not path.is_file():
                raise InputError(f"no feature file {path} for image {stem!r}")
        fc, att, boxes = load_region_features(att_path, boxes_path, self.captioner.cfg.att_feat_size, self.opt,
                                              image.shape[:2])
        if self.dirs.fc_feats_dir is not None:
            fc = self._fc(Path(self.dirs.fc_feats_dir) / f"{stem}.npy", stem)
        return fc, att, TokenLayout(kind="regions"), boxes

    def _fc(self, path: Path, stem: str) -> np.ndarray:
        if not path.is_file():
            raise InputError(f"no feature file {path} for image {stem!r}")
        try:
            return np.asarray(np.load(path), np.float32).reshape(1, -1)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read fc features {path}: {exc}") from None


def load_aoanet_images(model: str | Path, infos_path: str | Path | None, backend: str = "torch",
                       device: str = "cpu", **dirs: Any) -> AoAImageCaptioner:
    """An AoANet checkpoint (or ``default-captioner``) as an image captioner.

    Raises:
        InputError: a missing ``infos_path``, an unknown keyword, a missing file.
    """
    unknown = set(dirs) - set(FeatureDirs.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown feature option(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(FeatureDirs.__dataclass_fields__)}")
    feature_dirs = FeatureDirs(**{k: (Path(v) if v is not None else None) for k, v in dirs.items()})
    if str(model) == DEFAULT_CAPTIONER:
        infos = tiny.ASSETS / tiny.TINY_INFOS
        captioner = load_aoanet(infos, tiny.ASSETS / tiny.TINY_MODEL, backend=backend, device=device)
        return AoAImageCaptioner(captioner, read_infos(infos)[2], feature_dirs, tiny_model=True)
    if infos_path is None:
        raise InputError(f"{model}: an AoANet model.pth needs --infos_path (its infos_*.pkl)")
    captioner = load_aoanet(infos_path, model, backend=backend, device=device)
    return AoAImageCaptioner(captioner, read_infos(infos_path)[2], feature_dirs)
