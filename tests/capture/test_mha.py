"""nn.MultiheadAttention inside nn.TransformerEncoder, against its own need_weights output."""

import numpy as np
import pytest
import torch
from torch import nn

from attnvis.export import export_onnx, register_attention_hooks
from attnvis.metadata import TokenLayout
from attnvis.sources import ModelSource
from attnvis.runtime import OrtSession, TorchSession


def _encoder(norm_first: bool) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False).eval()


def _oracle(encoder: nn.TransformerEncoder, x: torch.Tensor) -> list[np.ndarray]:
    """Each layer's weights from MultiheadAttention itself (need_weights=True, average_attn_weights=False)."""
    maps = []
    with torch.no_grad():
        for layer in encoder.layers:
            h = layer.norm1(x) if layer.norm_first else x
            _, w = layer.self_attn(h, h, h, need_weights=True, average_attn_weights=False)
            maps.append(w.numpy())
            x = layer(x)
    return maps


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_maps_equal_mha_weights(norm_first, tmp_path):
    encoder = _encoder(norm_first)
    x = torch.randn(3, 7, 16)
    oracle = _oracle(encoder, x)
    source = ModelSource(encoder, (torch.randn(2, 7, 16),), TokenLayout(kind="sequence"), None, "encoder", "input")
    export_onnx(source, tmp_path / "enc.onnx")
    for session in (OrtSession(tmp_path / "enc.onnx", device="cpu"), TorchSession(source, device="cpu")):
        maps = session.run(x.numpy())
        assert len(maps) == 3
        for got, want in zip(maps.maps, oracle):
            assert got.shape == (3, 4, 7, 7)
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_fast_path_restored_and_outputs_unchanged():
    encoder = _encoder(False)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        before = encoder(x)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with register_attention_hooks(encoder) as hooks, torch.no_grad():
        during = encoder(x)
        assert list(hooks.maps) == [f"layers.{i}.self_attn" for i in range(3)]
        assert torch.backends.mha.get_fastpath_enabled() is False
    assert torch.backends.mha.get_fastpath_enabled() is fastpath
    torch.testing.assert_close(during, before, atol=1e-6, rtol=0)
    # hooks are gone: a new forward records nothing more
    hooks.maps.clear()
    encoder(x)
    assert hooks.maps == {}


def test_caller_asking_for_averaged_weights_gets_them():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 3, 8)
    with torch.no_grad():
        _, want = mha(x, x, x)  # averaged by default
        with register_attention_hooks(mha) as hooks:
            _, got = mha(x, x, x)
    torch.testing.assert_close(got, want)
    assert next(iter(hooks.maps.values())).shape == (1, 2, 3, 3)
