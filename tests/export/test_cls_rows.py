"""``--reduce cls``: each layer's CLS row computed from q and k equals the full matrix's CLS row.

Oracles: PyTorch's own SDPA (value = identity, so its output *is* the
weights), timm's unfused attention, Hugging Face ``output_attentions=True``
(eager) and ``nn.MultiheadAttention(need_weights=True)``. The reduced
export averages the CLS row over heads without the prefix columns.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnvis.capture import capture_attention
from attnvis.export import export_onnx
from attnvis.metadata import TokenLayout
from attnvis.runtime import OrtSession, TorchSession
from attnvis.sources import ModelSource

HEADS, DIM = 2, 8


def cls_row(weights: np.ndarray, tokens: TokenLayout) -> np.ndarray:
    """The ``cls`` reduction of full (B, heads, Q, K) weights, in NumPy."""
    return weights[:, :, tokens.cls_index, tokens.prefix_tokens:].mean(axis=1)


def export_cls(model: nn.Module, example: tuple, tokens: TokenLayout, path) -> list:
    """Export with ``--reduce cls``; the ORT and PyTorch sessions over it."""
    source = ModelSource(model, example, tokens, None, "test", "input")
    report = export_onnx(source, path, reduce="cls")
    assert report.ok, report.table()
    return [OrtSession(path, device="cpu"), TorchSession(source, device="cpu", reduce="cls")]


class SelfSDPA(nn.Module):
    """Self-attention through SDPA; ``value`` is the identity, so the output is the weights."""

    def __init__(self, n: int, **case):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.n = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM), n
        mask = case.pop("attn_mask", None)
        self.case = case
        self.register_buffer("mask", mask if mask is not None else torch.zeros(0), persistent=False)

    def heads(self, x, proj):
        b, n, _ = x.shape
        return proj(x).view(b, n, HEADS, DIM // HEADS).transpose(1, 2)

    def forward(self, x):
        eye = torch.eye(self.n).expand(x.shape[0], HEADS, self.n, self.n)
        mask = self.mask if self.mask.numel() else None
        return F.scaled_dot_product_attention(self.heads(x, self.q), self.heads(x, self.k), eye, attn_mask=mask, **self.case)


def _sdpa_cases(n: int) -> dict:
    g = torch.Generator().manual_seed(1)
    bool_mask = torch.rand(n, n, generator=g) > 0.3
    bool_mask[:, 0] = True
    per_head = torch.randn(1, HEADS, n, n, generator=g)  # a float mask with a head axis
    fully = torch.ones(n, n, dtype=torch.bool)
    fully[1] = False  # the CLS query (index 1 below) sees no key at all
    return {"none": {}, "bool": dict(attn_mask=bool_mask), "float_per_head": dict(attn_mask=per_head),
            "causal": dict(is_causal=True), "scale": dict(scale=0.3), "key_mask_row": dict(attn_mask=bool_mask[:1]),
            "fully_masked_cls": dict(attn_mask=fully)}


@pytest.mark.parametrize("case", list(_sdpa_cases(7)))
def test_sdpa_cls_row_equals_the_full_matrix_row(case, tmp_path):
    n = 7  # 2 prefix tokens (CLS second, so that the causal row is not trivial) + a 1×5 grid
    tokens = TokenLayout(prefix_tokens=2, grid=(1, 5), cls_index=1, prefix_names=("reg", "cls"))
    model = SelfSDPA(n, **_sdpa_cases(n)[case]).eval()
    x = torch.randn(3, n, DIM)
    with torch.no_grad():
        oracle = model(x).numpy()  # real SDPA: output == weights, (B, heads, Q, K)
    for session in export_cls(model, (torch.randn(2, n, DIM),), tokens, tmp_path / "m.onnx"):
        maps = session.run(x.numpy())
        assert maps[0].shape == (3, n - 2)
        np.testing.assert_allclose(maps[0], cls_row(oracle, tokens), atol=1e-5, rtol=0)
        np.testing.assert_allclose(maps.outputs["output"], oracle, atol=1e-5, rtol=0)  # the model's output unchanged
    if case == "fully_masked_cls":
        assert np.all(maps[0] == 0)


def test_capture_records_only_the_row_and_the_real_query_length():
    model = SelfSDPA(7).eval()
    with capture_attention(model, query=1) as rec, torch.no_grad():
        model(torch.randn(2, 7, DIM))
    assert rec.weights[0].shape == (2, HEADS, 1, 7)
    assert (rec.layers[0].q_len, rec.layers[0].k_len, rec.layers[0].kind) == (7, 7, "self")
    with pytest.raises(ValueError, match="module_types"):
        with capture_attention(model, module_types=(nn.Linear,), query=0):
            pass


def test_timm_cls_rows_equal_timm_attention_and_stay_fused(tmp_path):
    timm = pytest.importorskip("timm")
    from attnvis.sources.timm import load_timm

    torch.manual_seed(0)
    reference = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56).eval()
    path = tmp_path / "w.pth"
    torch.save(reference.state_dict(), path)
    source = load_timm("vit_small_patch14_reg4_dinov2", weights=str(path), image_size=(56, 56))
    fused = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, a: fused.append(m.fused_attn)) for b in source.model.blocks]
    report = export_onnx(source, tmp_path / "m.onnx", reduce="cls")
    for hook in hooks:
        hook.remove()
    assert report.ok, report.table()
    assert fused and all(fused)  # the model's own attention ran on its fused path while exporting
    assert all(b.attn.fused_attn for b in source.model.blocks)
    assert [layer.q_len for layer in report.metadata.layers] == [5 + 16] * 12

    from tests.sources.test_zoo import timm_oracle

    x = torch.randn(3, 3, 56, 56)
    got = OrtSession(tmp_path / "m.onnx", device="cpu").run(x.numpy())
    oracle = timm_oracle(reference, x)
    for mine, theirs in zip(got.maps, oracle):
        assert mine.shape == (3, 16)
        np.testing.assert_allclose(mine, cls_row(theirs, got.metadata.tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["vit", "beit", "dinov2_with_registers"])
def test_hf_cls_rows_equal_output_attentions(family, tmp_path):
    pytest.importorskip("transformers")
    from attnvis.sources import load_source
    from tests.sources.test_hf import _families, hf_oracle, save_model

    save_model(family, tmp_path / "model")
    source = load_source(str(tmp_path / "model"))
    report = export_onnx(source, tmp_path / "m.onnx", reduce="cls")
    assert report.ok, report.table()
    assert source.model.config._attn_implementation == "eager"  # as loaded, restored after the export
    x = torch.randn(3, 3, 32, 32)
    got = OrtSession(tmp_path / "m.onnx", device="cpu").run(x.numpy())
    oracle = hf_oracle(_families()[family][4], tmp_path / "model", x)
    assert len(got.maps) == len(oracle) == 2
    for mine, theirs in zip(got.maps, oracle):
        np.testing.assert_allclose(mine, cls_row(theirs, got.metadata.tokens), atol=1e-5, rtol=0)


class MaskedMHA(nn.Module):
    """``nn.MultiheadAttention`` called without weights, with a key padding mask and an attention mask."""

    def __init__(self, batch_first: bool):
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first, bias=True, add_bias_kv=False)

    def forward(self, x, pad):
        h = x if self.mha.batch_first else x.transpose(0, 1)
        n = x.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool).triu(1)  # True: masked, nn.MultiheadAttention's convention
        out, _ = self.mha(h, h, h, key_padding_mask=pad > 0, attn_mask=causal, need_weights=False)
        return out


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_cls_rows_equal_its_own_weights(batch_first, tmp_path):
    model = MaskedMHA(batch_first).eval()
    n = 6
    tokens = TokenLayout(prefix_tokens=1, grid=(1, 5), cls_index=0, prefix_names=("cls",))
    x, pad = torch.randn(3, n, DIM), torch.zeros(3, n)
    pad[1, -2:] = 1  # the second sequence is two tokens shorter
    h = x if batch_first else x.transpose(0, 1)
    with torch.no_grad():
        causal = torch.ones(n, n, dtype=torch.bool).triu(1)
        _, want = model.mha(h, h, h, key_padding_mask=pad > 0, attn_mask=causal, average_attn_weights=False)
    example = (torch.randn(2, n, DIM), torch.zeros(2, n))
    for session in export_cls(model, example, tokens, tmp_path / "m.onnx"):
        got = session.run(x.numpy(), pad.numpy())
        np.testing.assert_allclose(got[0], cls_row(want.numpy(), tokens), atol=1e-5, rtol=0)


def test_encoder_cls_rows_equal_mha_weights(tmp_path):
    """``nn.TransformerEncoder`` (need_weights=False inside): every layer's row, as the full export's."""
    from tests.capture.test_mha import _encoder, _oracle

    encoder = _encoder(norm_first=True)
    tokens = TokenLayout(prefix_tokens=1, grid=(2, 3), cls_index=0, prefix_names=("cls",))
    x = torch.randn(3, 7, 16)
    oracle = _oracle(encoder, x)
    for session in export_cls(encoder, (torch.randn(2, 7, 16),), tokens, tmp_path / "m.onnx"):
        maps = session.run(x.numpy())
        for got, want in zip(maps.maps, oracle):
            np.testing.assert_allclose(got, cls_row(want, tokens), atol=1e-5, rtol=0)
