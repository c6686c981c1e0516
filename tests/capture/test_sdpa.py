"""SDPA interception against PyTorch's own scaled_dot_product_attention.

Oracle: with ``value = I`` (the K×K identity per head), SDPA's output *is*
its attention weights, so PyTorch itself tells what the weights must be.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnvis.export import export_onnx
from attnvis.metadata import TokenLayout
from attnvis.sources import ModelSource
from attnvis.runtime import OrtSession, TorchSession

Q_LEN, K_LEN, HEADS, DIM = 4, 6, 2, 8


def _masks() -> dict:
    bool_mask = torch.rand(Q_LEN, K_LEN, generator=torch.Generator().manual_seed(1)) > 0.3
    bool_mask[:, 0] = True
    float_mask = torch.randn(Q_LEN, K_LEN, generator=torch.Generator().manual_seed(2))
    fully = torch.ones(Q_LEN, K_LEN, dtype=torch.bool)
    fully[2] = False  # one query sees no key at all
    return {
        "none": dict(),
        "bool": dict(attn_mask=bool_mask),
        "float": dict(attn_mask=float_mask),
        "causal": dict(is_causal=True),
        "scale": dict(scale=0.3),
        "fully_masked_row": dict(attn_mask=fully),
    }


class CrossSDPA(nn.Module):
    """q from x, k from memory; SDPA called as torch code in the wild calls it."""

    def __init__(self, case: dict):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)
        self.case = {k: v for k, v in case.items() if k != "attn_mask"}
        mask = case.get("attn_mask")
        self.register_buffer("mask", mask if mask is not None else torch.zeros(0), persistent=False)

    def heads(self, x, proj):
        b, n, _ = x.shape
        return proj(x).view(b, n, HEADS, DIM // HEADS).transpose(1, 2)

    def forward(self, x, memory):
        q, k = self.heads(x, self.q), self.heads(memory, self.k)
        eye = torch.eye(K_LEN).expand(x.shape[0], HEADS, K_LEN, K_LEN)
        mask = self.mask if self.mask.numel() else None
        return F.scaled_dot_product_attention(q, k, eye, attn_mask=mask, **self.case)  # == weights


def _inputs(batch=3):
    g = torch.Generator().manual_seed(3)
    return torch.randn(batch, Q_LEN, DIM, generator=g), torch.randn(batch, K_LEN, DIM, generator=g)


@pytest.mark.parametrize("case", list(_masks()))
def test_sdpa_weights_match_pytorch(case, tmp_path):
    model = CrossSDPA(_masks()[case]).eval()
    inputs = _inputs()
    with torch.no_grad():
        oracle = model(*inputs).numpy()  # real SDPA: output == weights, (B, heads, Q, K)
    source = ModelSource(model, _inputs(2), TokenLayout(kind="sequence"), None, case, "input")
    report = export_onnx(source, tmp_path / "m.onnx")
    assert report.ok and [layer.k_len for layer in report.metadata.layers] == [K_LEN]

    for session in (OrtSession(tmp_path / "m.onnx", device="cpu"), TorchSession(source, device="cpu")):
        maps = session.run(*(t.numpy() for t in inputs))
        assert maps[0].shape == (3, HEADS, Q_LEN, K_LEN)
        assert np.isfinite(maps[0]).all()
        np.testing.assert_allclose(maps[0], oracle, atol=1e-5, rtol=0)
        # and the intercepted model still computes what SDPA computes
        np.testing.assert_allclose(maps.outputs["output"], oracle, atol=1e-5, rtol=0)
    if case == "fully_masked_row":
        assert np.all(oracle[:, :, 2] == 0)


def test_from_import_is_intercepted(tmp_path):
    """``from torch.nn.functional import scaled_dot_product_attention`` is caught too."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    class Direct(nn.Module):
        def forward(self, x):
            return sdpa(x, x, x)

    from attnvis.export import capture_attention

    with capture_attention(Direct()) as rec:
        Direct()(torch.randn(1, 2, 3, 4))
    assert len(rec.weights) == 1 and rec.weights[0].shape == (1, 2, 3, 3)
