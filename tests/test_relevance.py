"""``visualize --method`` / ``demo --method``: the relevance files equal ``attnvis.explain`` and the renderer; refusals."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import attnvis
from attnvis.models import default_explain_path, default_onnx_path, sample_image_path
from attnvis.models.tiny import HELD_OUT_SEED, make_scene

METHODS = ("attention", "rollout", "gae", "grad-rollout")  # at least these are in the shipped graph


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "attnvis", *map(str, args)], capture_output=True, text=True, timeout=600)


def assert_one_line_error(result, *needles):
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def explain_onnx(tmp_path_factory) -> Path:
    """The default model's explain graph as a user's ``.onnx`` file (it is ``export --model default --explain``)."""
    path = tmp_path_factory.mktemp("model") / "tiny_explain.onnx"
    shutil.copyfile(default_explain_path(), path)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    rgb, _ = make_scene(HELD_OUT_SEED + 7)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    return path


def test_the_shipped_graph_holds_the_methods_demo_needs():
    from attnvis.models import default_explain_methods

    assert set(METHODS) <= set(default_explain_methods())


def test_visualize_writes_each_methods_files_equal_to_attnvis_explain(explain_onnx, scene, tmp_path):
    from attnvis.render import render_map
    from attnvis.runtime import load_image

    out = tmp_path / "vis"
    result = run_cli("visualize", "--image", scene, "--model", explain_onnx, "--method", "gae,grad-rollout",
                     "--save-raw", "--output", out)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["relevance_gae.npy", "relevance_gae.png", "relevance_grad-rollout.npy", "relevance_grad-rollout.png",
                     "relevance_heatmap_gae.png", "relevance_heatmap_grad-rollout.png"]  # no attention files
    image = load_image(scene)
    for method in ("gae", "grad-rollout"):
        ex = attnvis.explain(str(explain_onnx), [str(scene)], method=method)
        saved = np.load(out / f"relevance_{method}.npy")
        assert saved.dtype == np.float32 and saved.shape == ex.relevance.shape[1:]
        np.testing.assert_allclose(saved, ex.relevance[0], rtol=1e-6, atol=1e-7 * np.abs(ex.relevance).max())
        heat, over = render_map(saved, image)  # the attention files' kernel, min-max normalized
        np.testing.assert_array_equal(cv2.imread(str(out / f"relevance_{method}.png"))[..., ::-1], over)
        np.testing.assert_array_equal(cv2.imread(str(out / f"relevance_heatmap_{method}.png"))[..., ::-1], heat)
    ex = attnvis.explain(str(explain_onnx), [str(scene)], method="gae")
    top = int(ex.prediction[0])
    label = ex.labels[top]
    assert f"predicted: {label} ({top}), p = {float(ex.probability[0]):.3f}; explained: {label} ({top})" in result.stdout


def test_target_by_index_and_by_label_explain_that_class(explain_onnx, scene, tmp_path):
    ex = attnvis.explain(str(explain_onnx), [str(scene)], method="gae")
    other = (int(ex.prediction[0]) + 1) % len(ex.labels)
    by_index = attnvis.visualize_attention_on_image(str(explain_onnx), scene, tmp_path / "i", method="gae",
                                                    target=other, save_raw=True)
    by_label = run_cli("visualize", "--image", scene, "--model", explain_onnx, "--method", "gae", "--target",
                       ex.labels[other], "--save-raw", "--output", tmp_path / "l")
    assert by_label.returncode == 0, by_label.stderr
    assert by_index.verdict.target == other and by_index.verdict.prediction == int(ex.prediction[0])
    assert f"explained: {ex.labels[other]} ({other})" in by_label.stdout
    want = attnvis.explain(str(explain_onnx), [str(scene)], method="gae", target=other).relevance[0]
    np.testing.assert_allclose(by_index.verdict.relevance["gae"], want, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(np.load(tmp_path / "i" / "relevance_gae.npy"), np.load(tmp_path / "l" / "relevance_gae.npy"))
    top = np.load(tmp_path / "i" / "relevance_gae.npy")
    assert not np.allclose(top, ex.relevance[0])  # another class, another map


def test_attention_files_only_where_asked_for(scene, tmp_path):
    alone = attnvis.visualize_attention_on_image("default", scene, tmp_path / "a", method="gae")
    assert sorted(p.name for p in alone.files) == ["relevance_gae.png", "relevance_heatmap_gae.png"]
    both = attnvis.visualize_attention_on_image("default", scene, tmp_path / "b", method="gae", layer=2, rollout=True)
    names = sorted(p.name for p in both.files)
    assert names == ["attention_rollout.png", "attn_map_layer_2_blocks.2.attn.png", "heatmap_layer_2_blocks.2.attn.png",
                     "relevance_gae.png", "relevance_heatmap_gae.png"]
    plain = attnvis.visualize_attention_on_image("default", scene, tmp_path / "c", layer=2)
    assert (tmp_path / "b" / names[1]).read_bytes() == plain.files[0].read_bytes()  # the same attention file


def test_torch_backend_gives_the_graphs_map(scene, tmp_path):
    ort = attnvis.visualize_attention_on_image("default", scene, tmp_path / "o", method="gae")
    eager = attnvis.visualize_attention_on_image("default", scene, tmp_path / "t", method="gae", backend="torch",
                                                 device="cpu")
    assert eager.provider == "torch-cpu" and eager.verdict.prediction == ort.verdict.prediction
    want = ort.verdict.relevance["gae"]
    np.testing.assert_allclose(eager.verdict.relevance["gae"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_demo_method_uses_the_shipped_graph(tmp_path):
    result = run_cli("demo", "--method", "gae", "--output", tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relevance_gae.png", "relevance_heatmap_gae.png"]
    ex = attnvis.explain(str(default_explain_path()), [str(sample_image_path())], method="gae")
    assert result.stdout.startswith(f"predicted: {ex.labels[int(ex.prediction[0])]} ")


# --------------------------------------------------------------------------- refusals: one line, before any work


def _foreign(tmp_path: Path) -> Path:
    """The explain graph without attnvis's metadata: an ONNX file made elsewhere."""
    import onnx

    proto = onnx.load(str(default_onnx_path()))
    del proto.metadata_props[:]
    path = tmp_path / "foreign.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("case", ["unknown method", "index out of range", "unknown label", "not exported", "plain graph",
                                  "made elsewhere", "captioner", "target alone", "layer of an explain graph"])
def test_refusals_are_one_line_and_write_nothing(case, explain_onnx, scene, tmp_path):
    out = tmp_path / "out"
    base = ["visualize", "--image", scene, "--output", out]
    args, needles = {
        "unknown method": (["--model", explain_onnx, "--method", "gae,nope"],
                           ["'nope' is not a known method", "gae", "grad-rollout", "transformer-attribution"]),
        "index out of range": (["--model", explain_onnx, "--method", "gae", "--target", "99"],
                               ["99 is out of range", "6 classes", "'circle'"]),
        "unknown label": (["--model", explain_onnx, "--method", "gae", "--target", "dog"], ["'dog'", "'circle'", "'square'"]),
        "not exported": (["--model", explain_onnx, "--method", f"{_absent()},gae"], ["--explain", _absent()]),
        "plain graph": (["--model", default_onnx_path(), "--method", "gae"], ["exported without --explain"]),
        "made elsewhere": (["--model", _foreign(tmp_path), "--method", "gae"], ["made elsewhere", "PyTorch model"]),
        "captioner": (["--model", "default-captioner", "--method", "gae"], ["captioner"]),
        "target alone": (["--model", explain_onnx, "--target", "1"], ["--target", "--method"]),
        "layer of an explain graph": (["--model", explain_onnx, "--method", "gae", "--layer", "1"], ["attention"]),
    }[case]
    if case == "not exported" and _absent() == "":
        pytest.skip("the shipped graph holds every method")
    assert_one_line_error(run_cli(*base, *args), *needles)
    assert not out.exists()


def _absent() -> str:
    """A method of the registry that the shipped graph lacks ("" if none)."""
    from attnvis.explain import METHODS
    from attnvis.models import default_explain_methods

    return next((m for m in METHODS if m not in default_explain_methods()), "")


def test_a_model_object_is_explained_eagerly(scene, tmp_path):
    from attnvis.models.tiny import load_default_model

    result = attnvis.visualize_attention_on_image(load_default_model(), scene, tmp_path / "m", method="gae")
    assert result.provider.startswith("torch-")  # an nn.Module: the torch backend, as pytorch-grad-cam users expect
    want = attnvis.explain(str(default_explain_path()), [str(scene)], method="gae").relevance[0]
    np.testing.assert_allclose(result.verdict.relevance["gae"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
