"""The embedded default model: a tiny ViT trained on synthetic scenes.

A scene (:func:`make_scene`) is one coloured shape on a cluttered, textured
background; the label is the shape's class (:data:`CLASSES`). The model
(:class:`TinyViT`) must find the shape to classify it, so its last layer's
CLS attention peaks on the object. ``tools/train_tiny.py`` trains it on seeds
below :data:`HELD_OUT_SEED` and writes ``assets/tiny_vit.pt``; every seed at
or above :data:`HELD_OUT_SEED` is held out for evaluation.

Attention is computed with ``F.scaled_dot_product_attention`` so attnvis
captures it by intercepting SDPA, like any modern ViT.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnvis.metadata import Preprocess, TokenLayout
from attnvis.models import SAMPLE_NAME, sample_image_path  # noqa: F401 - sample_image_path: its first home

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")
SCENE_SIZE: tuple[int, int] = (240, 320)  # (height, width): non-square on purpose
HELD_OUT_SEED = 1_000_000  # training uses only seeds below this
SAMPLE_SEED = 1_000_007  # the bundled sample image (held out)

DEFAULT_PREPROCESS = Preprocess(
    size=(96, 96),
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    channel_order="RGB",
    interpolation="bilinear",
)
DEFAULT_TOKENS = TokenLayout(prefix_tokens=1, grid=(12, 12), kind="grid", cls_index=0, prefix_names=("cls",))

_ASSETS = "assets"
WEIGHTS_NAME = "tiny_vit.pt"


# --------------------------------------------------------------------------- scenes


class Scene(NamedTuple):
    """A synthetic scene: RGB uint8 image ``(H, W, 3)``, object box and class index."""

    image: np.ndarray
    bbox: tuple[int, int, int, int]
    label: int


def make_scene(seed: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Draw the deterministic scene for ``seed``.

    Args:
        seed: any non-negative integer; seeds below ``HELD_OUT_SEED`` are the
            training distribution, the others are held out.

    Returns:
        ``(image, bbox)``: ``image`` is RGB uint8 of shape ``(240, 320, 3)``;
        ``bbox`` is ``(x0, y0, x1, y1)`` in image pixels, the tight box of the
        object's pixels with ``x1``/``y1`` exclusive (``image[y0:y1, x0:x1]``
        is the object crop).
    """
    scene = make_scene_with_label(seed)
    return scene.image, scene.bbox


def make_scene_with_label(seed: int) -> Scene:
    """Like :func:`make_scene`, also returning the class index into :data:`CLASSES`."""
    if seed < 0:
        raise ValueError(f"scene seed must be non-negative, got {seed}")
    rng = np.random.default_rng(seed)
    height, width = SCENE_SIZE
    canvas = _background(rng, height, width)
    for _ in range(int(rng.integers(4, 10))):
        _paint(canvas, *_distractor(rng, height, width))
    label = int(rng.integers(len(CLASSES)))
    mask = _object_mask(rng, label, height, width)
    ys, xs = np.nonzero(mask > 0.5)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    _paint(canvas, mask, _object_colour(rng, height, width))
    grain = rng.standard_normal((height, width, 1), dtype=np.float32)  # sensor-like luminance noise
    canvas += grain * np.float32(rng.uniform(2.0, 8.0))
    return Scene(np.clip(canvas, 0, 255).astype(np.uint8), bbox, label)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted base colour + low-frequency colour noise + random stripes, float (H, W, 3)."""
    base = rng.uniform(60, 190, 3)
    base = base.mean() + (base - base.mean()) * 0.5  # desaturate: the object should stand out a little
    coarse = rng.normal(0.0, 1.0, (int(rng.integers(3, 8)), int(rng.integers(4, 10)), 3)).astype(np.float32)
    noise = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR) * np.float32(rng.uniform(10, 30))
    angle, period = rng.uniform(0, math.pi), rng.uniform(8, 40)
    phase = _ramp(height, width, angle) * np.float32(2 * math.pi / period)
    stripes = np.sin(phase)[..., None] * rng.uniform(-25, 25, 3).astype(np.float32)
    return noise + stripes + base.astype(np.float32)


def _ramp(height: int, width: int, angle: float) -> np.ndarray:
    """Distance along direction ``angle`` of every pixel, float32 (H, W)."""
    xs = np.arange(width, dtype=np.float32) * np.float32(math.cos(angle))
    ys = np.arange(height, dtype=np.float32) * np.float32(math.sin(angle))
    return ys[:, None] + xs[None, :]


def _paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blend ``colour`` ((3,) or (H, W, 3)) into ``canvas`` where ``mask`` (H, W) in [0, 1]."""
    x, y, w, h = cv2.boundingRect((mask > 0).astype(np.uint8))  # blend only where the mask is
    if w == 0:
        return
    alpha = mask[y : y + h, x : x + w, None]
    if colour.ndim == 3:
        colour = colour[y : y + h, x : x + w]
    region = canvas[y : y + h, x : x + w]
    region += alpha * (colour - region)


def _vivid(rng: np.random.Generator) -> np.ndarray:
    """A random saturated RGB colour, float (3,)."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(150, 255), rng.uniform(150, 255)]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _distractor(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A class-free clutter item: soft blob, elongated ellipse or thick line; (mask, colour)."""
    mask = np.zeros((height, width), np.float32)
    cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
    kind = int(rng.integers(3))
    if kind == 0:  # soft blob: a Gaussian, so it has no crisp outline like the object
        sigma = rng.uniform(5, 16)
        gx = np.exp(-0.5 * ((np.arange(width, dtype=np.float32) - cx) / sigma) ** 2)
        gy = np.exp(-0.5 * ((np.arange(height, dtype=np.float32) - cy) / sigma) ** 2)
        mask = np.minimum(gy[:, None] * gx[None, :] * 1.5, 1.0)
        mask[mask < 0.02] = 0.0
    elif kind == 1:  # elongated ellipse, axis ratio >= 3 so it never reads as a circle
        minor = int(rng.integers(3, 9))
        axes = (minor * int(rng.integers(3, 7)), minor)
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    else:  # thick line segment
        end = (int(cx + rng.integers(-60, 61)), int(cy + rng.integers(-60, 61)))
        cv2.line(mask, (cx, cy), end, 1.0, int(rng.integers(2, 7)), cv2.LINE_AA)
    colour = _vivid(rng) if rng.random() < 0.5 else rng.uniform(0, 255, 3)
    return mask * np.float32(rng.uniform(0.5, 1.0)), colour.astype(np.float32)


def _shape_points(label: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-radius outline of a polygonal class, (P, 2), before rotation and scaling."""
    name = CLASSES[label]
    if name == "square":
        angles = np.deg2rad([45, 135, 225, 315])
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if name == "triangle":
        angles = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if name == "star":
        angles = np.deg2rad(np.arange(10) * 36 - 90)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
    arm = rng.uniform(0.25, 0.4)  # cross: half-width of its bars
    quarter = np.array([[arm, -1], [arm, -arm], [1, -arm]])
    quarter_turn = np.array([[0.0, -1.0], [1.0, 0.0]])  # (x, y) -> (-y, x)
    return np.concatenate([quarter @ np.linalg.matrix_power(quarter_turn, k).T for k in range(4)])


def _object_mask(rng: np.random.Generator, label: int, height: int, width: int) -> np.ndarray:
    """Anti-aliased mask (H, W) in [0, 1] of the object, fully inside the image."""
    radius = rng.uniform(22, 48)
    margin = radius + 12  # keep clear of the border, where a resized map's plateau would sit
    cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
    mask = np.zeros((height, width), np.float32)
    shift = 4  # cv2 sub-pixel precision: coordinates in 1/16 px
    centre = (int(cx * 16), int(cy * 16))
    if CLASSES[label] == "circle":
        cv2.circle(mask, centre, int(radius * 16), 1.0, -1, cv2.LINE_AA, shift)
    elif CLASSES[label] == "ring":
        thickness = radius * rng.uniform(0.28, 0.4)
        cv2.circle(mask, centre, int((radius - thickness / 2) * 16), 1.0, max(2, int(thickness)), cv2.LINE_AA, shift)
    else:
        theta = math.radians(rng.uniform(-20, 20))
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        pts = _shape_points(label, rng) @ rot.T * radius + (cx, cy)
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift)
    return mask


def _object_colour(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Vivid colour with a random linear gradient to a second colour, float (H, W, 3)."""
    first, second = _vivid(rng), _vivid(rng)
    ramp = _ramp(height, width, rng.uniform(0, 2 * math.pi))
    ramp = (ramp - ramp.min()) * np.float32(rng.uniform(0.0, 0.6) / (ramp.max() - ramp.min()))
    return first + ramp[..., None] * (second - first)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class TinyViTConfig:
    """Shape of :class:`TinyViT`; the defaults are those of the shipped weights."""

    image_size: int = 96
    patch_size: int = 8
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    num_classes: int = len(CLASSES)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class ConvStem(nn.Module):
    """Patch embedding as a small stride-2 conv stack: one token per ``patch`` × ``patch`` cell.

    Early convolutions make a small ViT train far faster than one linear
    projection per patch (Xiao et al., 2021) and keep each token local.
    """

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in _stem_widths(dim, patch):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.GELU()]
            channels = out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x))  # (B, dim, H / patch, W / patch)


def _stem_widths(dim: int, patch: int) -> list[int]:
    """Channel widths of the stride-2 convs that reduce by ``patch`` (a power of two)."""
    steps = int(math.log2(patch))
    if 2**steps != patch:
        raise ValueError(f"patch size must be a power of two, got {patch}")
    return [dim // 2 ** (steps - i) for i in range(1, steps + 1)]


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, D) → q, k, v, each (B, heads, N, D / heads)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D / heads)
        return self.proj(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A ViT with a CLS token at index 0, then the patch grid in row-major order.

    Input: NCHW float32 normalised as :data:`DEFAULT_PREPROCESS` says.
    Output: logits ``(B, num_classes)`` from the CLS token.
    """

    def __init__(self, config: TinyViTConfig = TinyViTConfig()) -> None:
        super().__init__()
        self.config = config
        tokens = 1 + config.grid**2
        self.patch_embed = ConvStem(config.dim, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, config.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → CLS + patch tokens with positions, (B, 1 + h * w, D)."""
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, h * w, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def resize_positions(model: TinyViT, size: tuple[int, int]) -> TinyViT:
    """``model`` made to take ``size`` (H, W) inputs, a multiple of its patch: in place, returned.

    The patch position embeddings are resampled to the new grid as timm's
    ``resample_abs_pos_embed`` does (bicubic, antialiased); the CLS position is kept.
    """
    patch, side = model.config.patch_size, model.config.grid
    grid = (size[0] // patch, size[1] // patch)
    cls, patches = model.pos_embed[:, :1], model.pos_embed[:, 1:]
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, side, side)
    with torch.no_grad():
        patches = F.interpolate(patches, size=grid, mode="bicubic", antialias=True, align_corners=False)
        resampled = torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)
    model.pos_embed = nn.Parameter(resampled)
    return model


def preprocess(image: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> torch.Tensor:
    """RGB uint8 (H, W, 3) → normalised (1, 3, 96, 96) float32, as :data:`DEFAULT_PREPROCESS` says."""
    height, width = DEFAULT_PREPROCESS.size
    resized = cv2.resize(image, (width, height), interpolation=interpolation).astype(np.float32)
    mean = np.asarray(DEFAULT_PREPROCESS.mean, np.float32)
    std = np.asarray(DEFAULT_PREPROCESS.std, np.float32)
    normalised = (resized * DEFAULT_PREPROCESS.scale - mean) / std
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]


def load_default_model() -> TinyViT:
    """The shipped tiny ViT in eval mode, loaded from the package assets.

    Raises:
        FileNotFoundError: the weights are missing (run ``tools/train_tiny.py``).
    """
    asset = resources.files("attnvis.models") / _ASSETS / WEIGHTS_NAME
    if not asset.is_file():
        raise FileNotFoundError(f"embedded weights {WEIGHTS_NAME} not found in attnvis/models/{_ASSETS}; "
                                "run `python tools/train_tiny.py` to create them")
    state = torch.load(io.BytesIO(asset.read_bytes()), map_location="cpu", weights_only=True)
    model = TinyViT()
    model.load_state_dict(state)
    return model.eval()


# --------------------------------------------------------------------------- explicit attention


@torch.no_grad()
def explicit_attention(model: TinyViT, x: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's softmax weights by plain math, mirroring :class:`Attention`.

    A reference for tests and training checks that does not depend on
    attnvis's capture machinery: ``softmax(q @ k^T * head_dim**-0.5)``.

    Returns:
        One tensor per block, each (B, heads, N, N).
    """
    maps = []
    tokens = model.tokens(x)
    for block in model.blocks:
        q, k, _ = block.attn.split_heads(block.norm1(tokens))
        scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, heads, N, N)
        maps.append(scores.softmax(dim=-1))
        tokens = block(tokens)
    return maps


def cls_peak(attn: torch.Tensor, image_hw: tuple[int, int]) -> tuple[int, int]:
    """Peak ``(x, y)`` in image pixels of one layer's head-averaged CLS map.

    Args:
        attn: (heads, N, N) weights of one image.
        image_hw: original image ``(height, width)``; the grid map is resized
            to it bilinearly (OpenCV ``INTER_LINEAR``) before the argmax.
    """
    grid_h, grid_w = DEFAULT_TOKENS.grid
    row = attn.mean(0)[DEFAULT_TOKENS.cls_index, DEFAULT_TOKENS.prefix_tokens:]  # (h * w,)
    grid = row.reshape(grid_h, grid_w).float().numpy()
    resized = cv2.resize(grid, (image_hw[1], image_hw[0]), interpolation=cv2.INTER_LINEAR)
    y, x = np.unravel_index(int(np.argmax(resized)), resized.shape)
    return int(x), int(y)
