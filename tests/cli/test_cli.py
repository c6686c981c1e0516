"""The command line: seed-compatible files, and one clear line for every bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnvis.models.tiny import make_scene

ROOT = Path(__file__).resolve().parents[2]


def attnvis(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "attnvis", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    import cv2

    rgb, _ = make_scene(1_000_123)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    return path


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    result = attnvis("export", "--model", "default", "--output", path)
    assert result.returncode == 0, result.stderr
    assert "attn_0" in result.stdout  # the validation table
    return path


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_visualize_writes_seed_files(onnx_model, image, tmp_path):
    out = tmp_path / "vis"
    result = attnvis("visualize", "--image", image, "--model", onnx_model, "--output", out, "--save-raw", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    from attnvis.runtime import OrtSession

    meta = OrtSession(onnx_model, device="cpu").metadata
    for i, layer in enumerate(meta.layers):
        assert (out / f"attn_map_layer_{i}_{layer.name}.png").is_file()
        assert (out / f"heatmap_layer_{i}_{layer.name}.png").is_file()
        raw = np.load(out / f"attn_raw_layer_{i}.npy")
        assert raw.shape == (1, layer.heads, layer.q_len, layer.k_len)
    assert not list(out.glob(".*tmp"))


def test_tools_shim_takes_the_same_flags(onnx_model, image, tmp_path):
    out = tmp_path / "shim"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "visualize_attention.py"), "--image", str(image),
                             "--model", str(onnx_model), "--layer", "1", "--head", "0", "--output", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name.split("_layer_")[0] for p in out.iterdir()) == ["attn_map", "heatmap"]


def test_no_avg_heads_writes_one_map_per_head(onnx_model, image, tmp_path):
    result = attnvis("visualize", "--image", image, "--model", onnx_model, "--layer", "0", "--no-avg-heads", "--output", tmp_path)
    assert result.returncode == 0, result.stderr
    heads = len(list(tmp_path.glob("heatmap_layer_0_*_head_*.png")))
    assert heads > 1


def test_closed_output_pipe_ends_quietly(onnx_model, image, tmp_path):
    """`attnvis batch ... | head -0`: the reader is gone before the summary is printed."""
    args = ["batch", image, "--model", onnx_model, "--output", tmp_path / "out", "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "attnvis", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait() == 141 and stderr == ""
    assert (tmp_path / "out" / "manifest.jsonl").is_file()  # the work itself was done


def test_missing_image(onnx_model, tmp_path):
    assert_one_line_error(attnvis("visualize", "--image", tmp_path / "nope.jpg", "--model", onnx_model), "image not found", "nope.jpg")


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 not really a jpeg", b"hello"])
def test_corrupt_image(onnx_model, tmp_path, content):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    assert_one_line_error(attnvis("visualize", "--image", bad, "--model", onnx_model), "bad.jpg")


def test_truncated_jpeg(onnx_model, image, tmp_path):
    import cv2

    data = cv2.imencode(".jpg", cv2.imread(str(image)))[1].tobytes()
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    assert_one_line_error(attnvis("visualize", "--image", bad, "--model", onnx_model), "truncated.jpg")


def test_missing_and_corrupt_model(image, tmp_path):
    assert_one_line_error(attnvis("visualize", "--image", image, "--model", tmp_path / "none.onnx"), "not found")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    assert_one_line_error(attnvis("visualize", "--image", image, "--model", junk), "junk.onnx")


def test_layer_and_head_out_of_range(onnx_model, image, tmp_path):
    assert_one_line_error(attnvis("visualize", "--image", image, "--model", onnx_model, "--layer", "99"), "--layer 99", "valid: 0..")
    assert_one_line_error(attnvis("visualize", "--image", image, "--model", onnx_model, "--head", "99"), "--head 99", "valid: 0..")


def test_model_without_attention(tmp_path):
    result = attnvis("export", "--model", "torch.nn:Identity", "--input-shape", "1,4,8", "--output", tmp_path / "x.onnx")
    assert_one_line_error(result, "No attention maps captured", "Identity")


def test_cuda_without_provider(onnx_model, image):
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(onnx_model), providers=["CUDAExecutionProvider"])
        cuda = "CUDAExecutionProvider" in ort.InferenceSession(str(onnx_model), providers=["CUDAExecutionProvider"]).get_providers()
    except Exception:
        cuda = False
    if cuda:
        pytest.skip("CUDA is usable here: the error path cannot be exercised")
    assert_one_line_error(attnvis("visualize", "--image", image, "--model", onnx_model, "--device", "cuda"), "--device cuda")


def test_demo(tmp_path):
    result = attnvis("demo", "--output", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "predicted" in result.stdout
    assert len(list(tmp_path.glob("attn_map_layer_*.png"))) >= 1
