"""Image features for AoANet: bottom-up region files as its data pipeline stores them, or ResNet grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attnvis.errors import InputError, ModelError


@dataclass
class FeatureLayout:
    """How the regions map onto the image: a ``grid`` ``(h, w)`` or ``boxes`` ``(N, 4)``."""

    grid: tuple[int, int] | None = None
    boxes: np.ndarray | None = None


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``; grey and RGBA images are converted."""
    import cv2

    p = Path(path)
    image = cv2.imread(str(p), cv2.IMREAD_COLOR) if p.is_file() else None
    if image is None:
        raise InputError(f"cannot read image {p}: missing or not an image file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_region_features(att_path: str | Path, boxes_path: str | Path, att_feat_size: int,
                         opt: Any = None, image_hw: tuple[int, int] | None = None):
    """Bottom-up features as the AoANet data pipeline stores them.

    ``fc`` is the mean of the regions (``make_bu_data``). With ``opt.norm_att_feat``
    the rows are L2-normalised, and with ``opt.use_box`` the five box features
    are appended and the regions sorted by area, as the original's loader does.

    Returns:
        ``fc (1, A)``, ``att (1, N, A')``, ``boxes (N, 4)`` float32 (same order as ``att``).
    """
    try:
        with np.load(att_path) as data:
            feat = np.asarray(data["feat"], np.float32)
        boxes = np.asarray(np.load(boxes_path), np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"cannot read region features {att_path} / boxes {boxes_path}: {exc}") from exc
    feat = feat.reshape(-1, feat.shape[-1])
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(feat):
        raise InputError(f"boxes {boxes_path} has shape {boxes.shape}, expected ({len(feat)}, 4): "
                         f"one box per region of {att_path}")
    fc = feat.mean(0, keepdims=True)
    if getattr(opt, "norm_att_feat", 0):
        feat = feat / np.linalg.norm(feat, 2, 1, keepdims=True)
    if getattr(opt, "use_box", 0):
        feat, boxes = _with_box_feats(feat, boxes, image_hw, getattr(opt, "norm_box_feat", 0))
    if feat.shape[1] != att_feat_size:
        raise InputError(f"{att_path}: regions have {feat.shape[1]} features, the model expects {att_feat_size}")
    return fc, feat[None], boxes


def _with_box_feats(feat, boxes, image_hw, norm_box):
    h, w = image_hw or (1.0, 1.0)
    x1, y1, x2, y2 = np.hsplit(boxes, 4)
    box_feat = np.hstack((x1 / w, y1 / h, x2 / w, y2 / h, (x2 - x1) * (y2 - y1) / (w * h)))
    if norm_box:
        box_feat = box_feat / np.linalg.norm(box_feat, 2, 1, keepdims=True)
    order = np.argsort(-box_feat[:, -1], kind="stable")  # largest box first, as the loader sorts
    return np.hstack([feat, box_feat])[order].astype(np.float32), boxes[order]


def reference_resnet(weights_path: str | Path, depth: int = 101):
    """torchvision ResNet changed as the original's ``misc/resnet.py``.

    The max-pool has no padding and rounds up; the stride of the first block of
    layers 2-4 sits on its 1x1 convolution (Caffe style), so its grid features
    match ``prepro_feats``. The weights come from a local file only.
    """
    import torchvision

    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    net.maxpool = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(net, name)[0]
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise InputError(f"backbone weights not found: {path} (a local resnet{depth} .pth; nothing is downloaded)")
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - torch.load and load_state_dict fail in many ways on a wrong file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"--backbone-weights {path} is not a torchvision resnet{depth} state dict ({first}); "
                             f"give the .pth of torchvision.models.resnet{depth}") from None
    return net.eval()


@torch.no_grad()
def resnet_grid_features(net, image: np.ndarray, att_size: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepro_feats``: the full-size image, ImageNet mean/std, ``(1, F)`` fc and ``(1, att_size², C)`` grid."""
    x = torch.from_numpy(image[:, :, :3].astype(np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = ((x - mean) / std).unsqueeze(0)
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        x = getattr(net, name)(x)
    fc = x.mean(3).mean(2)
    att = F.adaptive_avg_pool2d(x, [att_size, att_size]).permute(0, 2, 3, 1)  # (1, s, s, C)
    return fc, att.reshape(1, -1, att.size(-1))
