"""ONNX files attnvis did not make: instrumented, the maps equal the library's own ``output_attentions``.

Tiny random Hugging Face ViT/DeiT are exported by ``torch.onnx.export``
without attnvis, once with the ``torch.export``-based exporter and once with
the TorchScript-based one (they spell attention differently), then
instrumented. Hand-built graphs cover the ``Attention`` op (opset 23),
a classifier softmax and onnxruntime's fused contrib op.
"""

import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from attnvis.errors import InputError, ModelError
from attnvis.export.foreign import ForeignOptions, infer_layout, instrument_onnx
from attnvis.runtime import OrtSession

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)


def attnvis(*args):
    return subprocess.run([sys.executable, "-m", "attnvis", *map(str, args)], capture_output=True, text=True)


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _hf_model(family: str):
    torch = pytest.importorskip("torch")
    t = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "vit":
        model = t.ViTForImageClassification(t.ViTConfig(**SMALL, num_labels=3))
    else:
        model = t.DeiTForImageClassificationWithTeacher(t.DeiTConfig(**SMALL))
    model.config._attn_implementation = "eager"  # the oracle: output_attentions from the eager path
    return model.eval()


def _export(model, path, dynamo: bool) -> None:
    """``torch.onnx.export`` as a user would call it, batch dynamic, no attnvis involved."""
    import torch

    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["pixel_values"], verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["pixel_values"], opset_version=17,
                              dynamic_axes={"pixel_values": {0: "batch"}})


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("family, prefix", [("vit", 1), ("deit", 2)])
def test_hf_export_instrumented_maps_equal_output_attentions(tmp_path, family, prefix, dynamo):
    import torch

    model = _hf_model(family)
    _export(model, tmp_path / "foreign.onnx", dynamo)
    assert not any(p.key.startswith("attnvis.") for p in onnx.load(str(tmp_path / "foreign.onnx")).metadata_props)
    report = instrument_onnx(tmp_path / "foreign.onnx", tmp_path / "inst.onnx")
    assert report.ok and any(name.endswith("row sums") for name, _, _ in report.diffs)

    session = OrtSession(tmp_path / "inst.onnx", device="cpu")
    meta = session.metadata
    assert (meta.tokens.prefix_tokens, meta.tokens.grid, meta.tokens.cls_index) == (prefix, (4, 4), 0)
    assert [layer.heads for layer in meta.layers] == [4, 4] and meta.layers[0].k_len == 16 + prefix
    assert meta.layers[0].name.endswith("0.attention")  # the module path the exporter recorded
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export's: batch stays dynamic
    maps = session.run(x.numpy())
    with torch.no_grad():
        want = model(pixel_values=x, output_attentions=True)
    assert len(maps) == len(want.attentions) == 2
    for got, ref in zip(maps.maps, want.attentions):
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps.outputs[meta.model_outputs[0]], want.logits.numpy(), atol=1e-4, rtol=0)


def test_reduced_instrumentation_and_cli_visualize(tmp_path):
    model = _hf_model("deit")
    _export(model, tmp_path / "foreign.onnx", dynamo=False)
    result = attnvis("export", "--model", tmp_path / "foreign.onnx", "--output", tmp_path / "full.onnx",
                     "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5")
    assert result.returncode == 0, result.stderr
    assert "attn_1 row sums" in result.stdout and "NO" not in result.stdout
    instrument_onnx(tmp_path / "foreign.onnx", tmp_path / "cls.onnx", ForeignOptions(reduce="cls"))
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    full = OrtSession(tmp_path / "full.onnx", device="cpu")
    assert full.metadata.preprocess.mean == (0.5, 0.5, 0.5) and full.metadata.preprocess.size == (32, 32)
    cls = OrtSession(tmp_path / "cls.onnx", device="cpu").run(x)
    for f, c in zip(full.run(x).maps, cls.maps):
        np.testing.assert_allclose(c, f[:, :, 0, 2:].mean(axis=1), atol=1e-6)  # CLS row, heads averaged, no prefix

    import cv2

    cv2.imwrite(str(tmp_path / "img.png"), np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    result = attnvis("visualize", "--model", tmp_path / "full.onnx", "--image", tmp_path / "img.png",
                     "--output", tmp_path / "vis", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "vis").glob("attn_map_layer_*.png"))) == 2
    result = attnvis("batch", tmp_path / "img.png", "--model", tmp_path / "cls.onnx", "--output", tmp_path / "batch",
                     "--device", "cpu", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "batch").rglob("heatmap_layer_*.png"))) == 2


# ---------------------------------------------------------------- hand-built graphs
def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _patches(heads=2, dim=8):
    """(B, 3, 8, 8) → 4x4 patches of 2x2 pixels (12 values) → tokens (B, 16, dim), and Q, K, V per head."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, dim)).astype(np.float32) * 0.3
    nodes = [
        helper.make_node("Reshape", ["x", "s6"], ["x6"]),  # (B, 3, 4, 2, 4, 2)
        helper.make_node("Transpose", ["x6"], ["xt"], perm=[0, 2, 4, 1, 3, 5]),
        helper.make_node("Reshape", ["xt", "s3"], ["p"]),  # (B, 16, 12)
        helper.make_node("MatMul", ["p", "w"], ["tok"]),
    ]
    inits = [("s6", np.array([-1, 3, 4, 2, 4, 2], np.int64)), ("s3", np.array([-1, 16, 12], np.int64)), ("w", w)]
    for name in "qkv":
        nodes += [helper.make_node("MatMul", ["tok", f"w{name}"], [f"{name}2"]),
                  helper.make_node("Reshape", [f"{name}2", "sh"], [f"{name}4"]),
                  helper.make_node("Transpose", [f"{name}4"], [name], perm=[0, 2, 1, 3])]  # (B, heads, 16, dim/heads)
        inits.append((f"w{name}", rng.standard_normal((dim, dim)).astype(np.float32) * 0.3))
    inits.append(("sh", np.array([0, 16, heads, dim // heads], np.int64)))
    return nodes, inits, w


def test_attention_op_23_is_asked_for_its_probabilities(tmp_path):
    nodes, inits, _ = _patches()
    nodes.append(helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn"))
    model = _model(nodes, [_value("x", ["b", 3, 8, 8])], [_value("y", ["b", 2, 16, 4])], inits, opset=23)
    onnx.save(model, tmp_path / "a23.onnx")
    report = instrument_onnx(tmp_path / "a23.onnx", tmp_path / "out.onnx")
    assert report.ok
    session = OrtSession(tmp_path / "out.onnx", device="cpu")
    assert session.metadata.tokens.grid == (4, 4) and session.metadata.tokens.prefix_tokens == 0
    assert session.metadata.layers[0].module_type == "Attention"
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    maps = session.run(x)
    import onnxruntime as ort

    probe = ort.InferenceSession(str(tmp_path / "a23.onnx"), providers=["CPUExecutionProvider"])
    names = ["q", "k"]  # the oracle: softmax(Q·Kᵀ/√d) in NumPy from the graph's own Q and K
    m = onnx.load(str(tmp_path / "a23.onnx"))
    m.graph.output.extend([helper.make_empty_tensor_value_info(n) for n in names])
    q, k = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, {"x": x})
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    want = np.exp(scores - scores.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    assert maps[0].shape == (2, 2, 16, 16)
    np.testing.assert_allclose(maps[0], want, atol=1e-5)
    np.testing.assert_allclose(maps.outputs["y"], probe.run(None, {"x": x})[0], atol=1e-6)


def _softmax_attention_graph(classifier: bool):
    nodes, inits, _ = _patches()
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["s"]),
              helper.make_node("Mul", ["s", "scale"], ["ss"]),
              helper.make_node("Softmax", ["ss"], ["probs"], axis=-1, name="/enc/attn/Softmax"),
              helper.make_node("MatMul", ["probs", "v"], ["o"]),
              helper.make_node("ReduceMean", ["o"], ["pooled"], axes=[1, 2], keepdims=0)]  # (B, dim/heads)
    inits.append(("scale", np.array(0.5, np.float32)))
    outputs = [_value("pooled", ["b", 4])]
    if classifier:
        nodes += [helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
                  helper.make_node("Softmax", ["logits"], ["prob"], axis=-1, name="/classifier/Softmax")]
        inits.append(("head", np.ones((4, 3), np.float32)))
        outputs = [_value("prob", ["b", 3])]
    return _model(nodes, [_value("x", ["b", 3, 8, 8])], outputs, inits)


def test_classifier_softmax_is_left_alone(tmp_path):
    onnx.save(_softmax_attention_graph(classifier=True), tmp_path / "cls.onnx")
    report = instrument_onnx(tmp_path / "cls.onnx", tmp_path / "out.onnx")
    assert [layer.name for layer in report.metadata.layers] == ["enc.attn"]
    assert report.metadata.model_outputs == ["prob"]
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert [o.name for o in out.graph.output] == ["prob", "attn_0"]
    dims = [d.dim_param or d.dim_value for d in out.graph.output[1].type.tensor_type.shape.dim]
    assert dims == ["batch", 2, 16, 16]


def test_rank3_softmax_is_reshaped_to_heads(tmp_path):
    """``[B·heads, Q, K]`` maps (as ``bmm``-based attention keeps them) become ``[B, heads, Q, K]``."""
    nodes, inits, _ = _patches()
    nodes += [helper.make_node("Reshape", [n, "s3h"], [f"{n}3"]) for n in "qkv"]
    nodes += [helper.make_node("Transpose", ["k3"], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q3", "kt"], ["s"]),
              helper.make_node("Softmax", ["s"], ["probs"], axis=2),
              helper.make_node("MatMul", ["probs", "v3"], ["o"])]
    inits.append(("s3h", np.array([-1, 16, 4], np.int64)))
    onnx.save(_model(nodes, [_value("x", ["b", 3, 8, 8])], [_value("o", ["bh", 16, 4])], inits), tmp_path / "r3.onnx")
    instrument_onnx(tmp_path / "r3.onnx", tmp_path / "out.onnx")
    x = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
    maps = OrtSession(tmp_path / "out.onnx", device="cpu").run(x)
    assert maps[0].shape == (3, 2, 16, 16)
    np.testing.assert_allclose(maps[0].sum(-1), 1.0, atol=1e-5)


def test_fused_contrib_attention_is_one_clear_error(tmp_path):
    nodes = [helper.make_node("Reshape", ["x", "s3"], ["p"]),
             helper.make_node("Attention", ["p", "w", "bias"], ["y"], domain="com.microsoft", num_heads=2, name="fused")]
    inits = [("s3", np.array([-1, 16, 12], np.int64)), ("w", np.ones((12, 24), np.float32)),
             ("bias", np.zeros(24, np.float32))]
    model = _model(nodes, [_value("x", ["b", 3, 8, 8])], [_value("y", ["b", 16, 8])], inits)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, tmp_path / "fused.onnx")
    with pytest.raises(ModelError, match="com.microsoft Attention.*cannot output its weights"):
        instrument_onnx(tmp_path / "fused.onnx", tmp_path / "out.onnx")
    assert_one_line_error(attnvis("export", "--model", tmp_path / "fused.onnx", "--output", tmp_path / "o.onnx"),
                          "com.microsoft Attention", "fused")
    assert not (tmp_path / "o.onnx").exists()


def test_bad_inputs_one_clear_line(tmp_path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["l"]),
             helper.make_node("Softmax", ["l"], ["prob"], axis=-1)]
    model = _model(nodes, [_value("x", ["b", 3, 8, 8])], [_value("prob", ["b", 5])], [("w", np.ones((192, 5), np.float32))])
    onnx.save(model, tmp_path / "plain.onnx")
    assert_one_line_error(attnvis("export", "--model", tmp_path / "plain.onnx", "--output", tmp_path / "o.onnx"),
                          "No attention maps found", "Flatten, MatMul, Softmax")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not an onnx file\xff" * 10)
    assert_one_line_error(attnvis("export", "--model", tmp_path / "junk.onnx", "--output", tmp_path / "o.onnx"),
                          "junk.onnx", "cannot read it as an ONNX model")
    onnx.save(_softmax_attention_graph(classifier=False), tmp_path / "attn.onnx")
    assert_one_line_error(attnvis("export", "--model", tmp_path / "attn.onnx", "--output", tmp_path / "o.onnx",
                                  "--grid", "3x3", "--prefix-tokens", "1"), "--grid 3x3", "16 keys")
    assert not (tmp_path / "o.onnx").exists()
    with pytest.raises(InputError, match="dynamic height/width"):  # a (B, 3, H, W) input without --image-size
        bad = _softmax_attention_graph(classifier=False)
        bad.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
        onnx.save(bad, tmp_path / "dyn.onnx")
        instrument_onnx(tmp_path / "dyn.onnx", tmp_path / "o.onnx")


def test_layout_inference():
    assert infer_layout(197, (224, 224), None, 0).grid == (14, 14)
    assert infer_layout(198, (224, 224), None, 0).prefix_tokens == 2
    assert infer_layout(16 * 20, (64, 80), None, 0).grid == (16, 20)  # non-square, no prefix: 4-pixel patches
    assert infer_layout(17, (32, 32), (4, 4), 1).cls_index == 0
    with pytest.raises(InputError, match=r"fit: none\); pass --grid HxW --prefix-tokens N"):
        infer_layout(3, (32, 32), None, 0)
    with pytest.raises(InputError, match="1 prefix \\+ 4x4; 8 prefix \\+ 3x3"):  # 3- and 4-pixel patches both fit
        infer_layout(17, (12, 12), None, 0)


def test_light_install_path_imports_no_torch(tmp_path):
    """The foreign-ONNX path runs where torch is not installed (``pip install attnvis``)."""
    onnx.save(_softmax_attention_graph(classifier=False), tmp_path / "attn.onnx")
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
            "from attnvis.cli import main\n"
            f"rc = main(['export', '--model', {str(tmp_path / 'attn.onnx')!r}, '--output', {str(tmp_path / 'o.onnx')!r}])\n"
            "assert rc == 0, rc")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert OrtSession(tmp_path / "o.onnx", device="cpu").metadata.tokens.grid == (4, 4)


def test_load_source_points_a_foreign_onnx_to_instrumentation(tmp_path):
    pytest.importorskip("torch")
    from attnvis.sources import load_source

    onnx.save(_softmax_attention_graph(classifier=False), tmp_path / "attn.onnx")
    with pytest.raises(InputError, match="made elsewhere: instrument it with 'attnvis export"):
        load_source(str(tmp_path / "attn.onnx"))
