"""Shared fixtures: the whole test session uses its own export cache; nothing touches the network."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # session scope: set before any module-scoped fixture opens a model (those would write to ~/.cache)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATTNVIS_CACHE", str(tmp_path_factory.getbasetemp() / "attnvis-cache"))
        yield


@pytest.fixture(scope="module")
def tiny_batch_model(tmp_path_factory) -> str:
    """A 2-layer, 2-head TinyViT (random weights) on 32×32 inputs, exported once per test module."""
    import torch

    from attnvis.metadata import Preprocess, TokenLayout
    from attnvis.export.onnx import export_onnx
    from attnvis.sources import ModelSource
    from attnvis.models.tiny import TinyViT, TinyViTConfig

    torch.manual_seed(0)
    net = TinyViT(TinyViTConfig(image_size=32, patch_size=8, dim=16, depth=2, heads=2, num_classes=3)).eval()
    pre = Preprocess(size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    tokens = TokenLayout(prefix_tokens=1, grid=(4, 4), cls_index=0, prefix_names=("cls",))
    source = ModelSource(net, (torch.zeros(2, 3, 32, 32),), tokens, pre, "tiny-test", extra={"classes": ["a", "b", "c"]})
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_onnx(source, path, validate=False)
    return str(path)
