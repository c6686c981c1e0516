"""``batch --method``: relevance files and store columns equal ``attnvis.explain``; render byte for byte; the gallery."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import attnvis
from attnvis.models import default_explain_path
from attnvis.models.tiny import HELD_OUT_SEED, make_scene

pytest.importorskip("pyarrow")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "attnvis", *map(str, args)], capture_output=True, text=True, timeout=600)


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Five held-out scenes of the default model's classes, two sizes, in two folders."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for i in range(5):
        rgb, _ = make_scene(HELD_OUT_SEED + 20 + i)
        rgb = rgb if i % 2 else cv2.resize(rgb, (160, 120))
        cv2.imwrite(str(root / ("sub" if i > 2 else ".") / f"s{i}.png"), rgb[..., ::-1])
    return root


@pytest.fixture(scope="module")
def explain_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny_explain.onnx"
    shutil.copyfile(default_explain_path(), path)
    return path


@pytest.fixture(scope="module")
def runs(folder, explain_onnx, tmp_path_factory):
    """The same images and flags with --save images and --save maps (spec: layers stored too) and a maps run of
    the explain graph alone (no attention outputs), each explaining class 'square' with gae and grad-rollout."""
    out = tmp_path_factory.mktemp("runs")
    common = ["--method", "gae,grad-rollout", "--target", "square", "--no-progress", "--batch-size", "2"]
    ok(run_cli("batch", folder, "--output", out / "images", *common))
    ok(run_cli("batch", folder, "--output", out / "maps", "--save", "maps", *common))
    ok(run_cli("batch", folder, "--output", out / "graph", "--save", "maps", "--model", explain_onnx, *common))
    return out


def _keys(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


def test_images_run_writes_the_relevance_files_of_attnvis_explain(runs, folder, explain_onnx):
    from attnvis.render import render_map
    from attnvis.runtime import load_image

    square = 1
    for key in _keys(folder):
        names = sorted(p.name for p in (runs / "images" / key).iterdir())
        assert names == ["relevance_gae.png", "relevance_grad-rollout.png", "relevance_heatmap_gae.png",
                         "relevance_heatmap_grad-rollout.png", "thumbnail.jpg"]  # no attention file: none asked for
        image = load_image(folder / key)
        stored = attnvis.load_maps(runs / "maps")
        for method in ("gae", "grad-rollout"):
            want = attnvis.explain(str(explain_onnx), [str(folder / key)], method=method, target="square")
            assert int(want.target[0]) == square
            got = stored.relevance(key, method)
            np.testing.assert_allclose(got, want.relevance[0], rtol=1e-5, atol=1e-5 * np.abs(want.relevance).max())
            _, overlay = render_map(got, image)
            drawn = cv2.imread(str(runs / "images" / key / f"relevance_{method}.png"))[..., ::-1]
            assert np.abs(drawn.astype(int) - overlay).max() <= 1  # the store's floats and the file's: the same map


def test_maps_run_stores_relevance_and_class_columns(runs, folder, explain_onnx):
    import pyarrow.parquet as pq

    store = attnvis.load_maps(runs / "maps")
    table = store.table()
    assert {"relevance_gae", "relevance_grad_rollout", "target", "prediction", "probability"} <= set(table.column_names)
    assert {f"layer_{i}" for i in range(4)} <= set(table.column_names)  # the layers beside them (a spec: both graphs)
    schema = pq.read_schema(next((runs / "maps" / "maps").glob("part-*.parquet")))
    assert str(schema.field("target").type) == "int64" and str(schema.field("probability").type) == "float"
    relevance = schema.field("relevance_gae").type
    assert relevance.list_size == 144 and str(relevance.value_type) == "float"  # the 12x12 patch grid, float32
    keys = _keys(folder)
    assert sorted(store) == keys
    ex = attnvis.explain(str(explain_onnx), [str(folder / k) for k in keys], method="gae", target="square")
    for b, key in enumerate(keys):
        relevance = store.relevance(key, "gae")
        assert relevance.dtype == np.float32 and relevance.shape == (12, 12)
        verdict = store.verdict(key)
        assert (verdict.target, verdict.prediction) == (1, int(ex.prediction[b]))
        assert verdict.probability == pytest.approx(float(ex.probability[b]), rel=1e-5)
        np.testing.assert_array_equal(store.relevance(key, "grad_rollout"), store.relevance(key, "grad-rollout"))
    with pytest.raises(ValueError, match="gae, grad-rollout"):
        store.relevance(keys[0], "attention")
    graph = attnvis.load_maps(runs / "graph")  # the explain graph alone: relevance, no layers
    assert graph.layout.layers == 0 and graph[keys[0]].shape == (0, 12, 12)
    np.testing.assert_array_equal(graph.relevance(keys[0], "gae"), store.relevance(keys[0], "gae"))
    lines = [json.loads(line) for line in (runs / "maps" / "manifest.jsonl").read_text().splitlines()]
    assert all(line["explained"]["target"] == 1 and line["prediction"] for line in lines)


@pytest.mark.parametrize("run", ["maps", "graph"])
def test_render_draws_the_images_runs_bytes(runs, folder, run, tmp_path):
    ok(run_cli("render", runs / run, "--output", tmp_path / "r"))
    written = sorted(p.relative_to(tmp_path / "r").as_posix() for p in (tmp_path / "r").rglob("*.png") if p.is_file())
    assert written == sorted(f"{k}/relevance_{kind}{m}.png" for k in _keys(folder) for kind in ("", "heatmap_")
                             for m in ("gae", "grad-rollout"))
    for rel in written:
        assert (tmp_path / "r" / rel).read_bytes() == (runs / "images" / rel).read_bytes(), rel
    ok(run_cli("render", runs / run, "--output", tmp_path / "one", "--method", "grad-rollout"))
    assert {p.name for p in (tmp_path / "one").rglob("*.png") if p.is_file()} == {"relevance_grad-rollout.png",
                                                                  "relevance_heatmap_grad-rollout.png"}


def test_render_with_a_layer_adds_the_images_runs_layer_files(runs, folder, tmp_path):
    layer = ["--method", "gae", "--target", "square", "--layer", "3", "--no-progress"]
    ok(run_cli("batch", folder, "--output", tmp_path / "img", *layer))
    ok(run_cli("render", runs / "maps", "--output", tmp_path / "r", "--layer", "3", "--method", "gae"))
    written = sorted(p.relative_to(tmp_path / "r").as_posix() for p in (tmp_path / "r").rglob("*.png") if p.is_file())
    assert len(written) == 4 * len(_keys(folder)) and any("attn_map_layer_3" in w for w in written)
    for rel in written:
        assert (tmp_path / "r" / rel).read_bytes() == (tmp_path / "img" / rel).read_bytes(), rel


def test_gallery_pages_carry_the_verdicts_and_the_methods(runs):
    run_js = (runs / "maps" / "gallery" / "run.js").read_text()
    info = json.loads(run_js[run_js.index("(") + 1:run_js.rindex(")")])
    assert info["maps"]["methods"] == ["gae", "grad-rollout"] and info["classes"][1] == "square"
    page = (runs / "images" / "gallery" / "page_0000.js").read_text()
    assert '"verdict": [' in page and '"rel": [["gae", ' in page


def _body(dom: str) -> str:
    return re.search(r"<body([^>]*)>", dom).group(1)


def test_gallery_shows_a_button_per_method_and_the_predicted_label(runs, chromium, folder):
    key = _keys(folder)[0]
    for run in ("maps", "graph"):  # drawn in the browser from the stored relevance map
        dom = chromium((runs / run / "index.html").as_uri() + "#page=0&img=0&rel=grad-rollout", "--dump-dom")
        assert 'data-state="ready"' in _body(dom) and 'data-broken="0"' in _body(dom), _body(dom)
        assert "<b>explain</b><button>gae</button><button class=\"on\">grad-rollout</button>" in dom.replace(' class=""', "")
        assert ("<b>layer</b>" in dom) == (run == "maps")  # the layers beside the methods where they were stored
        assert '<canvas width="' in dom and "explained: square (1)" in dom and key in dom
    dom = chromium((runs / "images" / "index.html").as_uri() + "#page=0&img=0&rel=gae&view=heatmap", "--dump-dom")
    main = re.search(r'<img class="main" src="([^"]+)"', dom).group(1)
    assert main.endswith("/relevance_heatmap_gae.png") and 'data-broken="0"' in _body(dom)
    assert re.search(r"predicted: \w+ \(\d\), \d+\.\d%", dom)


def test_gallery_draws_the_relevance_map_as_the_renderer(runs, chromium, folder, tmp_path):
    """The browser's heatmap of a stored relevance map is the file --save images wrote, level for level."""
    key = _keys(folder)[0]
    shot = tmp_path / "shot.png"
    dom = chromium((runs / "graph" / "index.html").as_uri() + "#page=0&img=0&rel=gae&view=heatmap", "--dump-dom")
    left, top, width, height = (int(v) for v in _body(dom).split('data-canvas="')[1].split('"')[0].split(","))
    chromium((runs / "graph" / "index.html").as_uri() + "#page=0&img=0&rel=gae&view=heatmap", f"--screenshot={shot}")
    pixels = cv2.imread(str(shot))[top:top + height, left:left + width]
    want = cv2.imread(str(runs / "images" / key / "relevance_heatmap_gae.png"))
    assert pixels.shape == want.shape
    assert np.abs(pixels.astype(int) - want).max() <= 1


@pytest.mark.parametrize("case", ["ray", "captioner", "target alone", "store heads of the graph"])
def test_batch_refusals_are_one_line(case, folder, explain_onnx, tmp_path):
    args, needle = {
        "ray": (["--method", "gae", "--engine", "ray"], "--engine ray"),
        "captioner": (["--method", "gae", "--model", "default-captioner"], "captioner"),
        "target alone": (["--target", "1"], "--method"),
        "store heads of the graph": (["--method", "gae", "--model", explain_onnx, "--save", "maps", "--store-heads"],
                                     "attention maps"),
    }[case]
    result = run_cli("batch", folder, "--output", tmp_path / "out", "--no-progress", *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_a_store_of_other_methods_is_named(runs, folder, tmp_path):
    shutil.copytree(runs / "maps", tmp_path / "out", ignore=shutil.ignore_patterns(".attnvis-*"))  # no locks of other runs
    result = run_cli("batch", folder, "--output", tmp_path / "out", "--save", "maps", "--method", "rollout", "--target",
                     "square", "--no-progress")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "relevance of gae,grad-rollout" in lines[0] and "relevance of rollout" in lines[0]
