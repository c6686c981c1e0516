"""Every registry entry is exported and checked (ORT against eager PyTorch)."""

import numpy as np
import pytest
import torch
from torch import nn

from attnvis.capture import list_adapters, registry
from attnvis.export import export_onnx
from attnvis.metadata import TokenLayout
from attnvis.sources import ModelSource
from attnvis.runtime import OrtSession


@pytest.mark.parametrize("name", list_adapters())
def test_every_adapter_exports_and_matches(name, tmp_path):
    adapter = registry.get_adapter(name)
    assert adapter.example is not None, f"adapter {name} has no example model to test"
    model, inputs = adapter.example()
    source = ModelSource(model, inputs, TokenLayout(kind="sequence"), None, name, "input")
    report = export_onnx(source, tmp_path / "m.onnx", validate=True)
    assert report.ok and report.metadata.layers, report.table()
    assert {d[0] for d in report.diffs} >= {f"attn_{i}" for i in range(len(report.metadata.layers))}
    session = OrtSession(tmp_path / "m.onnx", device="cpu")
    bigger = [torch.cat([t] * 3) for t in inputs]  # batch is dynamic
    maps = session.run(*(t.numpy() for t in bigger))
    assert all(m.shape[0] == 3 * inputs[0].shape[0] for m in maps.maps)
    for m in maps.maps:  # softmax rows sum to one
        np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)


def test_registering_a_type_twice_is_an_error():
    name = list_adapters()[0]
    with pytest.raises(ValueError, match="already registered"):
        registry.register_adapter(name, module_type=nn.Linear)(lambda m, p, r: [])


def test_one_registration_adds_a_type(tmp_path, monkeypatch):
    class Weird(nn.Module):
        def forward(self, x):
            self.probs = (x @ x.transpose(-1, -2)).softmax(-1)
            return self.probs @ x

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_adapter("test.Weird", module_type=Weird)(
        lambda m, path, rec: [m.register_forward_hook(lambda mod, a, o: rec.record(path, mod.probs))])
    source = ModelSource(nn.Sequential(Weird()), (torch.randn(2, 3, 4),), TokenLayout(kind="sequence"), None, "w", "input")
    report = export_onnx(source, tmp_path / "w.onnx")
    assert [layer.name for layer in report.metadata.layers] == ["0"]
    assert report.metadata.layers[0].heads == 1


@pytest.mark.parametrize("reduce", ["mean-heads", "cls"])
def test_in_graph_reduction(reduce, tmp_path):
    model, inputs = registry.get_adapter("torch.nn.MultiheadAttention").example()
    tokens = TokenLayout(prefix_tokens=1, grid=(2, 2), cls_index=0)
    full = export_onnx(ModelSource(model, inputs, tokens, None, "m", "input"), tmp_path / "full.onnx")
    red = export_onnx(ModelSource(model, inputs, tokens, None, "m", "input"), tmp_path / "red.onnx", reduce=reduce)
    assert red.metadata.reduction == reduce
    x = inputs[0].numpy()
    a = OrtSession(full.path, device="cpu").run(x)[0]  # (B, heads, Q, K)
    b = OrtSession(red.path, device="cpu").run(x)[0]
    want = a.mean(1) if reduce == "mean-heads" else a[:, :, 0, 1:].mean(1)
    np.testing.assert_allclose(b, want, atol=1e-6)
