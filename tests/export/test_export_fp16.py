"""``export_onnx(fp16=True)`` / ``attnvis export --fp16``: half-precision graph, float32 at the boundary.

The fp16 file is checked against the fp32 export of the same model within the
tolerances stated in :mod:`attnvis.export.fp16`; these tests hold it to them
independently, on inputs the export's own check never saw.
"""

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from attnvis.errors import ModelError
from attnvis.export import fp16 as fp16_module
from attnvis.export.fp16 import FP16_MAP_TOLERANCE, PRECISION_KEY, tolerance
from attnvis.export.onnx import export_onnx
from attnvis.metadata import Preprocess, TokenLayout
from attnvis.models.tiny import TinyViT, TinyViTConfig
from attnvis.runtime import OrtSession
from attnvis.sources import ModelSource


def _source() -> ModelSource:
    torch.manual_seed(0)
    net = TinyViT(TinyViTConfig(image_size=32, patch_size=8, dim=16, depth=2, heads=2, num_classes=3)).eval()
    pre = Preprocess(size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    tokens = TokenLayout(prefix_tokens=1, grid=(4, 4), cls_index=0, prefix_names=("cls",))
    return ModelSource(net, (torch.randn(2, 3, 32, 32),), tokens, pre, "tiny-fp16")


@pytest.fixture(scope="module", params=["none", "cls"])
def pair(request, tmp_path_factory):
    """(fp32 path, fp16 path, fp16 report) for one reduction."""
    folder = tmp_path_factory.mktemp(f"fp16-{request.param}")
    fp32 = folder / "fp32.onnx"
    export_onnx(_source(), fp32, reduce=request.param, validate=False)
    report = export_onnx(_source(), folder / "fp16.onnx", reduce=request.param, validate=True, fp16=True)
    return fp32, folder / "fp16.onnx", report


def test_fp16_file_is_half_inside_and_float32_at_the_boundary(pair):
    _, path, report = pair
    model = onnx.load(str(path))
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.FLOAT}
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {onnx.TensorProto.FLOAT}
    kinds = [t.data_type for t in model.graph.initializer]
    assert kinds.count(onnx.TensorProto.FLOAT16) > kinds.count(onnx.TensorProto.FLOAT)  # the weights went fp16
    assert report.metadata.extra[PRECISION_KEY] == "fp16"
    assert not list(path.parent.glob(".*"))  # the fp32 file used for the check is gone


def test_fp16_report_has_torch_and_fp16_rows_within_tolerance(pair):
    _, _, report = pair
    names = [name for name, _, _ in report.diffs]
    assert any(n.startswith("attn_") and "(fp16)" in n for n in names)
    assert any(n.startswith("attn_") and "(fp16)" not in n for n in names)  # fp32 vs PyTorch ran too
    assert report.ok
    assert "(fp16)" in report.table()


def test_fp16_maps_match_fp32_on_new_inputs(pair):
    fp32, fp16, _ = pair
    x = np.random.default_rng(7).standard_normal((5, 3, 32, 32), dtype=np.float32)
    want, got = OrtSession(fp32, device="cpu").run(x), OrtSession(fp16, device="cpu").run(x)
    assert got.metadata.extra[PRECISION_KEY] == "fp16"
    assert len(got.maps) == len(want.maps) == 2
    for g, w in zip(got.maps, want.maps):
        assert g.dtype == np.float32 and g.shape == w.shape
        assert np.max(np.abs(g - w)) <= FP16_MAP_TOLERANCE
        assert not np.array_equal(g, w)  # it really is another precision
    for name, w in want.outputs.items():
        assert np.max(np.abs(got.outputs[name] - w)) <= tolerance(name, w)


def test_fp16_past_tolerance_is_an_error_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fp16_module, "FP16_MAP_TOLERANCE", 0.0)
    out = tmp_path / "half.onnx"
    with pytest.raises(ModelError, match="fp16 graph disagrees with the fp32 one"):
        export_onnx(_source(), out, fp16=True)
    assert list(tmp_path.iterdir()) == []


def test_output_tolerance_scales_with_the_output():
    assert tolerance("attn_3", np.ones(4)) == FP16_MAP_TOLERANCE
    assert tolerance("logits", np.array([0.5, -0.2])) == pytest.approx(1e-2)
    assert tolerance("logits", np.array([40.0, -3.0])) == pytest.approx(0.4)


def test_cli_fp16_refuses_torchscript_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "attnvis", "export", "--model", "default", "--fp16",
                             "--format", "torchscript", "--output", str(tmp_path / "m.pt")],
                            capture_output=True, text=True)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--fp16" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "m.pt").exists()
