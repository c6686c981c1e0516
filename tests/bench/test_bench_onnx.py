"""`attnvis bench --model instrumented.onnx`: an ONNX made elsewhere runs its ORT variants, no PyTorch source."""

import json
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from attnvis.bench import run as bench_run  # noqa: E402
from attnvis.cli import main  # noqa: E402
from attnvis.export.foreign import ForeignOptions, instrument_onnx  # noqa: E402

ARGS = ["--repeats", "2", "--warmup", "1", "--device", "cpu", "--threads", "1", "--batch-sizes", "1,2", "--no-plot",
        "--no-render"]
# ViT: 2 layers, 4 heads, 1 CLS + 16 patch tokens, float32
ALL_MAPS = 2 * 4 * 17 * 17 * 4
CLS_MAPS = 2 * 16 * 4


@pytest.fixture(scope="module")
def instrumented(tmp_path_factory):
    """(full maps, cls rows): a ViT exported by ``torch.onnx.export`` (no attnvis), then instrumented."""
    folder = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=3)
    model = transformers.ViTForImageClassification(config).eval()
    model.config._attn_implementation = "eager"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(folder / "foreign.onnx"), dynamo=False,
                          input_names=["pixel_values"], opset_version=17, dynamic_axes={"pixel_values": {0: "batch"}})
    instrument_onnx(folder / "foreign.onnx", folder / "full.onnx")
    instrument_onnx(folder / "foreign.onnx", folder / "cls.onnx", ForeignOptions(reduce="cls"))
    return folder


def _no_source(*_args, **_kwargs):
    raise AssertionError("the benchmark of an ONNX file loaded a PyTorch source")


@pytest.mark.parametrize("file, variant, map_bytes", [("full.onnx", "ort-all", ALL_MAPS), ("cls.onnx", "ort-cls", CLS_MAPS)])
def test_bench_runs_the_files_ort_variant(instrumented, tmp_path, monkeypatch, file, variant, map_bytes):
    monkeypatch.setattr(bench_run, "_load", _no_source)
    out = tmp_path / "result.json"
    assert main(["bench", "--model", str(instrumented / file), *ARGS, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["variants"] == [variant]
    assert [(r["variant"], r["batch"]) for r in result["rows"]] == [(variant, 1), (variant, 2)]
    assert all(r["map_bytes_per_image"] == map_bytes for r in result["rows"])
    assert result["model"]["layers"] == 2 and result["model"]["tokens"] == 17 and result["model"]["heads"] == 4
    assert result["model"]["input_shape"] == [3, 32, 32] and result["model"]["parameters"] > 0
    assert f"| {variant} |" in out.with_suffix(".md").read_text()


def test_variants_the_file_cannot_serve_are_one_clear_error(instrumented, capsys):
    rc = main(["bench", "--model", str(instrumented / "cls.onnx"), *ARGS, "--variants", "ort-cls,torch-eager"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "Traceback" not in err[0]
    assert "torch-eager" in err[0] and "serves only ort-cls" in err[0], err
    rc = main(["bench", "--model", str(instrumented / "foreign.onnx"), *ARGS])  # not instrumented
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no attnvis metadata" in err[0] and "attnvis export" in err[0], err
