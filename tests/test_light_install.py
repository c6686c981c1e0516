"""`pip install attnvis` has no PyTorch: the default model ships as ONNX, and what needs torch says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from attnvis.metadata import ModelMetadata
from attnvis.models import default_onnx_path, sample_image_path


def without(tmp_path: Path, *modules: str) -> dict:
    """An environment whose Python cannot import ``modules`` (as on a machine without them)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    lines = ["import sys"] + [f"sys.modules[{m!r}] = None" for m in modules]
    (blocker / "sitecustomize.py").write_text("\n".join(lines) + "\n")
    return {**os.environ, "PYTHONPATH": str(blocker)}


def attnvis(env: dict, *args):
    return subprocess.run([sys.executable, "-m", "attnvis", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_demo_visualize_and_batch_run_without_torch(tmp_path):
    env = without(tmp_path, "torch", "onnxscript")
    demo = attnvis(env, "demo", "--output", tmp_path / "demo")
    assert demo.returncode == 0, demo.stderr
    assert len(list((tmp_path / "demo").glob("attn_map_layer_*.png"))) == 4
    vis = attnvis(env, "visualize", "--image", sample_image_path(), "--output", tmp_path / "vis", "--layer", "2")
    assert vis.returncode == 0, vis.stderr
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(sample_image_path().read_bytes())
    run = attnvis(env, "batch", folder, "--output", tmp_path / "out", "--no-progress")
    assert run.returncode == 0, run.stderr
    explained = attnvis(env, "demo", "--method", "gae,grad-rollout", "--output", tmp_path / "explain")
    assert explained.returncode == 0, explained.stderr  # the shipped explain graph, on ONNX Runtime alone
    assert sorted(p.name for p in (tmp_path / "explain").iterdir()) == [
        "relevance_gae.png", "relevance_grad-rollout.png", "relevance_heatmap_gae.png", "relevance_heatmap_grad-rollout.png"]
    maps = attnvis(env, "batch", folder, "--output", tmp_path / "maps", "--no-progress", "--method", "rollout",
                   "--save", "maps")
    assert maps.returncode == 0, maps.stderr


@pytest.mark.parametrize("args", [
    ["export", "--model", "default"],
    ["visualize", "--image", str(sample_image_path()), "--model", "timm:vit_tiny_patch16_224", "--random-weights"],
    ["demo", "--caption"],
])
def test_what_needs_torch_says_which_extra_to_install(tmp_path, args):
    result = attnvis(without(tmp_path, "torch"), *args, "--output", tmp_path / "o")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "torch" in lines[0] and 'pip install "attnvis[export]"' in lines[0]


def test_shipped_default_onnx_equals_a_fresh_export(tmp_path):
    """The file in attnvis/models/assets is `attnvis export --model default` of the shipped weights."""
    import onnxruntime as ort

    from attnvis.export.onnx import export_onnx
    from attnvis.sources import default_source

    fresh = export_onnx(default_source(), tmp_path / "fresh.onnx", validate=False).path
    shipped_meta = ModelMetadata.from_props({p.key: p.value for p in onnx.load(default_onnx_path()).metadata_props})
    fresh_meta = ModelMetadata.from_props({p.key: p.value for p in onnx.load(fresh).metadata_props})
    assert (shipped_meta.layers, shipped_meta.tokens, shipped_meta.preprocess, shipped_meta.reduction) == \
        (fresh_meta.layers, fresh_meta.tokens, fresh_meta.preprocess, fresh_meta.reduction)
    x = np.random.default_rng(0).standard_normal((3, 3, *shipped_meta.preprocess.size), dtype=np.float32)
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (default_onnx_path(), fresh)]
    outputs = [s.run(None, {s.get_inputs()[0].name: x}) for s in runs]
    assert [o.name for o in runs[0].get_outputs()] == [o.name for o in runs[1].get_outputs()]
    for a, b in zip(*outputs):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_shipped_explain_graph_equals_a_fresh_export(tmp_path):
    """The file in attnvis/models/assets is `attnvis export --model default --explain ...` of the shipped weights."""
    import onnxruntime as ort

    from attnvis.explain.trace import Options
    from attnvis.export.explain import export_explain
    from attnvis.models import default_explain_methods, default_explain_path
    from attnvis.sources import default_source

    methods = list(default_explain_methods())
    assert {"attention", "rollout", "gae", "grad-rollout"} <= set(methods)
    fresh = export_explain(default_source(), tmp_path / "fresh.onnx", methods, Options(), validate=False).path
    metas = [ModelMetadata.from_props({p.key: p.value for p in onnx.load(str(f)).metadata_props})
             for f in (default_explain_path(), fresh)]
    assert (metas[0].layers, metas[0].tokens, metas[0].explain, metas[0].labels) == \
        (metas[1].layers, metas[1].tokens, metas[1].explain, metas[1].labels)
    x = np.random.default_rng(0).standard_normal((3, 3, *metas[0].preprocess.size), dtype=np.float32)
    target = np.array([-1, 0, 5], np.int64)
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (default_explain_path(), fresh)]
    outputs = [s.run(None, {s.get_inputs()[0].name: x, "target": target}) for s in runs]
    assert [o.name for o in runs[0].get_outputs()] == [o.name for o in runs[1].get_outputs()]
    for a, b in zip(*outputs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(float(np.abs(b).max()), 1e-6))
