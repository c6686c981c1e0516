"""The tiny default captioner shipped in ``attnvis/models/assets``.

A small AoANet trained by ``tools/train_tiny_captioner.py`` on synthetic scenes:
two or three coloured shapes on a noisy background; the caption names them
in a fixed colour order ("a red circle and a blue triangle"). Grid features
come from :class:`TinyBackbone` (trained jointly), 8x8 cells of 12x12 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import attnvis.models

ASSETS = Path(attnvis.models.__file__).resolve().parent / "assets"
TINY_COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
TINY_SHAPES = ("circle", "square", "triangle")
TINY_WORDS = ("a", "and", *TINY_COLOURS, *TINY_SHAPES, "UNK")
TINY_IMAGE = 96
TINY_CELL = 12
TINY_HELD_OUT_SEED = 1_000_000  # training uses seeds below this
TINY_MODEL = "tiny_aoanet.pth"
TINY_INFOS = "tiny_aoanet_infos.pkl"
TINY_BACKBONE = "tiny_aoanet_backbone.pth"


@dataclass(frozen=True)
class CaptionScene:
    """A synthetic scene: RGB ``(96, 96, 3)`` uint8, one box ``(x1, y1, x2, y2)`` per object."""

    image: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    shapes: list[str]
    colours: list[str]

    def object_of(self, words: list[str], t: int) -> int | None:
        """The object that word ``t`` of a generated caption names (by the colour before it), or None."""
        if t == 0 or words[t] not in TINY_SHAPES or words[t - 1] not in self.colours:
            return None
        return self.colours.index(words[t - 1])

    @property
    def caption(self) -> str:
        parts = [f"a {c} {s}" for c, s in zip(self.colours, self.shapes)]
        return " and ".join(parts)


def make_caption_scene(seed: int) -> CaptionScene:
    """Draw scene ``seed``: 2-3 objects of distinct colours, listed in :data:`TINY_COLOURS` order.

    Colours come in a fixed order and shapes may repeat, so the caption's
    colour words follow from which colours are present, while each shape
    word needs a look at that colour's object.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(60, 12, (TINY_IMAGE, TINY_IMAGE, 3)).clip(0, 255).astype(np.uint8)
    count = int(rng.integers(2, 4))
    names = list(TINY_COLOURS)
    colours = [names[i] for i in sorted(rng.choice(len(names), count, replace=False).tolist())]
    shapes = [TINY_SHAPES[int(i)] for i in rng.integers(0, len(TINY_SHAPES), count)]
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(count):
        boxes.append(_place(rng, boxes))
    for shape, colour, box in zip(shapes, colours, boxes):
        _draw(image, shape, TINY_COLOURS[colour], box)
    return CaptionScene(image, boxes, shapes, colours)


def _place(rng, taken: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """A random square box of 24-34 px that keeps 4 px away from the boxes ``taken``."""
    for _ in range(500):
        size = int(rng.integers(24, 35))
        x1, y1 = (int(v) for v in rng.integers(2, TINY_IMAGE - size - 2, 2))
        box = (x1, y1, x1 + size, y1 + size)
        if all(box[0] > b[2] + 4 or box[2] < b[0] - 4 or box[1] > b[3] + 4 or box[3] < b[1] - 4 for b in taken):
            return box
    raise RuntimeError("no room for another object")  # pragma: no cover - 3 small boxes always fit


def _draw(image, shape: str, colour: tuple[int, int, int], box: tuple[int, int, int, int]) -> None:
    import cv2

    x1, y1, x2, y2 = box
    if shape == "circle":
        cv2.circle(image, ((x1 + x2) // 2, (y1 + y2) // 2), (x2 - x1) // 2, colour, -1, cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, -1)
    else:
        pts = np.array([[(x1 + x2) // 2, y1], [x1, y2], [x2, y2]], np.int32)
        cv2.fillPoly(image, [pts], colour, cv2.LINE_AA)


class TinyBackbone(nn.Module):
    """Four 3x3 convolutions: ``(B, 3, 96, 96)`` → ``(B, 8, 8, C)`` grid features."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, channels, 3, 3, 0), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.convs(images).permute(0, 2, 3, 1)  # (B, H, W, C)


def tiny_pixels(images) -> torch.Tensor:
    """RGB uint8 ``(B, 96, 96, 3)`` (or one image) → normalised ``(B, 3, 96, 96)`` float."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    x = x.unsqueeze(0) if x.dim() == 3 else x
    return (x.permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.25


def tiny_features(backbone: TinyBackbone, images) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fc (B, C), att (B, 64, C))`` for RGB uint8 96x96 images (fc = mean of the grid)."""
    import cv2

    images = np.asarray(images)
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.shape[1:3] != (TINY_IMAGE, TINY_IMAGE):
        batch = np.stack([cv2.resize(im, (TINY_IMAGE, TINY_IMAGE), interpolation=cv2.INTER_AREA) for im in batch])
    with torch.no_grad():
        grid = backbone(tiny_pixels(batch))
    att = grid.reshape(grid.size(0), -1, grid.size(-1))
    return att.mean(1), att


def load_tiny_backbone() -> TinyBackbone:
    """The backbone shipped with the tiny captioner."""
    backbone = TinyBackbone()
    backbone.load_state_dict(torch.load(ASSETS / TINY_BACKBONE, map_location="cpu", weights_only=True))
    return backbone.eval()
