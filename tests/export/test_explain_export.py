"""``attnvis export --explain``: one graph, forward + backward, relevance rows equal to eager PyTorch, batched."""

import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from attnvis.errors import InputError, ModelError  # noqa: E402
from attnvis.explain.methods import METHODS, relevance_output  # noqa: E402
from attnvis.explain.trace import Options, explain_pass  # noqa: E402
from attnvis.export.explain import export_explain  # noqa: E402
from attnvis.metadata import ModelMetadata  # noqa: E402
from attnvis.sources import module_source  # noqa: E402

ALL = list(METHODS)


def sharpened_timm(num_classes: int = 7, depth: int = 3):
    """A seeded timm ViT whose q/k weights are scaled up: attention far from uniform, gradients far from zero."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=4, num_classes=num_classes)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:64] *= 4.0
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    source = module_source(sharpened_timm())
    path = tmp_path_factory.mktemp("explain") / "vit_explain.onnx"
    report = export_explain(source, path, ALL, Options(start_layer=1, discard_ratio=0.5))
    return source, path, report


def test_graph_inputs_outputs_and_metadata(exported):
    _, path, report = exported
    model = onnx.load(str(path))
    inputs = {i.name: i for i in model.graph.input}
    assert list(inputs) == ["pixel_values", "target"]
    assert inputs["target"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    names = [o.name for o in model.graph.output]
    assert names == ["output"] + [relevance_output(m) for m in ALL]
    assert not any(n.startswith("attn_") for n in names)
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    assert meta.explain == {"methods": ALL, "start_layer": 1, "discard_ratio": 0.5}
    assert report.ok and [d[0] for d in report.diffs] == names


def test_batched_ort_equals_eager_torch_per_image(exported):
    """A batch of 5 (the graph was traced at 2) with explicit, top-1 and mixed targets, against eager runs of one image."""
    import onnxruntime as ort

    source, path, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = np.array([-1, 0, 6, 3, -1], np.int64)
    got = session.run(None, {"pixel_values": x.numpy(), "target": target})
    for b in range(5):
        outputs, relevance = explain_pass(source.model, (x[b:b + 1],), torch.as_tensor(target[b:b + 1]), ALL,
                                          source.tokens, Options(1, 0.5))
        np.testing.assert_allclose(got[0][b], outputs[0][1][0].numpy(), atol=1e-5)
        for i, method in enumerate(ALL, start=1):
            want = relevance[method][0].numpy()
            share = 1e-3 if method == "transformer-attribution" else 1e-5  # LRP: see LRP_TOLERANCE
            assert np.abs(got[i][b] - want).max() <= share * np.abs(want).max() + 1e-7, (method, b)


def test_target_changes_class_specific_maps(exported):
    import onnxruntime as ort

    _, path, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.repeat(np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32), 2, axis=0)
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"pixel_values": x,
                                                                              "target": np.array([0, 5])})))
    assert np.allclose(out["relevance_attention"][0], out["relevance_attention"][1])  # class-agnostic
    assert not np.allclose(out["relevance_gae"][0], out["relevance_gae"][1])


def test_api_on_the_graph_and_on_the_module(exported):
    import attnvis

    source, path, _ = exported
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ex = attnvis.explain(str(path), x.numpy(), method="grad-rollout", target=2, discard_ratio=0.5)
    assert ex.relevance.shape == (3, 4, 4) and ex.relevance.dtype == np.float32
    assert ex.target.tolist() == [2, 2, 2] and ex.target.dtype == np.int64
    assert ex.logits.shape == (3, 7) and ex.method == "grad-rollout"
    eager = attnvis.explain(source.model, x, method="grad-rollout", target=2, discard_ratio=0.5)  # torch backend
    np.testing.assert_allclose(ex.relevance, eager.relevance, rtol=1e-5, atol=1e-5 * np.abs(eager.relevance).max())
    top = attnvis.explain(str(path), x.numpy(), method="gae")
    assert top.target.tolist() == top.logits.argmax(1).tolist()


def test_refusals(exported, tmp_path):
    import attnvis

    _, path, _ = exported
    x = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(InputError, match="out of range.*7 classes"):
        attnvis.explain(str(path), x, method="gae", target=7)
    with pytest.raises(InputError, match="choose from attention, rollout"):
        attnvis.explain(str(path), x, method="lime")
    with pytest.raises(InputError, match="start_layer=1"):
        attnvis.explain(str(path), x, method="rollout", start_layer=0)
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(InputError, match="made elsewhere: explanations need the PyTorch model"):
        attnvis.explain(str(foreign), x, method="gae")


def test_backbone_without_head_is_refused():
    from timm.models.vision_transformer import VisionTransformer

    backbone = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, num_classes=0,
                                 global_pool="").eval()
    with pytest.raises(ModelError, match="no class output"):
        export_explain(module_source(backbone), "unused.onnx", ["gae"])


def test_cli_refuses_bad_method_and_reduce(tmp_path):
    base = [sys.executable, "-m", "attnvis.cli", "export", "--model", "default", "--output", str(tmp_path / "m.onnx")]
    bad = subprocess.run(base + ["--explain", "lime"], capture_output=True, text=True)
    assert bad.returncode != 0 and "choose from attention" in bad.stderr and "Traceback" not in bad.stderr
    reduce = subprocess.run(base + ["--explain", "gae", "--reduce", "cls"], capture_output=True, text=True)
    assert reduce.returncode != 0 and "--reduce" in reduce.stderr and "Traceback" not in reduce.stderr
    assert not (tmp_path / "m.onnx").exists()
