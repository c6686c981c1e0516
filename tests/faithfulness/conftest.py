"""Models and inputs shared by the faithfulness tests: the same weights in PyTorch (for the anchors) and ORT."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="package")
def default_pair():
    """The embedded default model: (torch module, ORT session)."""
    from attnvis.models.tiny import load_default_model
    from attnvis.runtime import open_model

    return load_default_model(), open_model("default", device="cpu")


@pytest.fixture(scope="package")
def random_pair(tmp_path_factory):
    """A seeded random TinyViT (32x32, 2 layers, 3 classes) with sharpened attention: (torch module, ORT session)."""
    import torch

    from attnvis.export.onnx import export_onnx
    from attnvis.metadata import Preprocess, TokenLayout
    from attnvis.models.tiny import TinyViT, TinyViTConfig
    from attnvis.runtime.session import OrtSession
    from attnvis.sources import ModelSource

    torch.manual_seed(3)
    net = TinyViT(TinyViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=2, num_classes=3)).eval()
    with torch.no_grad():
        for block in net.blocks:
            block.attn.qkv.weight.mul_(3.0)  # attention far from uniform
        net.head.weight.mul_(4.0)  # class scores that react to the input
    pre = Preprocess(size=(32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    tokens = TokenLayout(prefix_tokens=1, grid=(4, 4), cls_index=0, prefix_names=("cls",))
    source = ModelSource(net, (torch.zeros(2, 3, 32, 32),), tokens, pre, "random-tiny")
    path = tmp_path_factory.mktemp("faith") / "random.onnx"
    export_onnx(source, path, validate=False)
    return net, OrtSession(path, device="cpu")


def photos(size: tuple[int, int]) -> np.ndarray:
    """Real photos (matplotlib's bundled samples) and synthetic scenes, RGB uint8, resized to ``size``."""
    import cv2
    from matplotlib import cbook

    from attnvis.models.tiny import make_scene

    images = []
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        try:
            with cbook.get_sample_data(name) as f:
                data = np.frombuffer(f.read(), np.uint8)
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
            if image is not None:
                images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        except (OSError, ValueError):
            continue
    images += [make_scene(1_000_000 + i)[0] for i in range(4 - len(images) + 2)]
    return np.stack([cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA) for im in images])


def model_input(images: np.ndarray, pre) -> np.ndarray:
    """uint8 [B, H, W, 3] (already at the model size) → normalised float32 [B, 3, H, W], as torch would."""
    data = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    return normalise(data, pre)


def normalise(data: np.ndarray, pre) -> np.ndarray:
    mean = np.asarray(pre.mean, np.float32)[None, :, None, None]
    std = np.asarray(pre.std, np.float32)[None, :, None, None]
    return ((data - mean) / std).astype(np.float32)


def grid_maps(count: int, grid: tuple[int, int], seed: int) -> np.ndarray:
    """Random patch-grid maps, float32 [count, h, w]."""
    return np.random.default_rng(seed).random((count, *grid)).astype(np.float32)
