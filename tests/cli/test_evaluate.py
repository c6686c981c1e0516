"""``attnvis evaluate``: scores over images and over a batch's map store, resumable, one line per bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--metrics", "deletion,pointing-game,relevance-mass", "--no-progress", "--device", "cpu"]


def attnvis(*args):
    return subprocess.run([sys.executable, "-m", "attnvis", *map(str, args)], capture_output=True, text=True)


def one_line_error(result, *needles):
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from make_scenes import write_scenes
    finally:
        sys.path.pop(0)
    folder = tmp_path_factory.mktemp("scenes")
    write_scenes(folder, 3)
    return folder


@pytest.fixture(scope="module")
def evaluated(scenes, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("eval") / "eval"
    result = attnvis("evaluate", scenes, "--boxes", scenes / "boxes.json", "--methods", "attention,random", "--output", out, *FAST)
    assert result.returncode == 0, result.stderr
    return out, result


def test_evaluate_images_writes_scores_summary_and_table(evaluated):
    pq = pytest.importorskip("pyarrow.parquet")
    out, result = evaluated
    table = pq.read_table(out / "scores.parquet").to_pydict()
    assert sorted(zip(table["method"], table["image"]))[0] == ("attention", "scene_1000100.png")
    assert len(table["image"]) == 3 * 2
    assert all(len(c) == -(-96 * 96 // 224) + 1 for c in table["deletion_curve"])  # RISE's n + 1 points
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3
    assert set(summary["methods"]) == {"attention", "random"}
    attention, random = summary["methods"]["attention"], summary["methods"]["random"]
    # the trained model's attention sits on the object: it beats noise at localisation
    assert attention["relevance-mass"]["mean"] > random["relevance-mass"]["mean"]
    assert summary["metrics"]["deletion"]["higher_is_better"] is False
    md = (out / "summary.md").read_text()
    assert md.splitlines()[0].startswith("| method | deletion ↓") and md in result.stdout
    assert (out / "curves.png").stat().st_size > 1000


def test_evaluate_values_equal_the_library_functions(evaluated, scenes):
    pq = pytest.importorskip("pyarrow.parquet")
    from attnvis import faithfulness as F
    from attnvis.runtime import load_image, open_model, preprocess
    from attnvis.render.grid import attention_grid

    out, _ = evaluated
    table = pq.read_table(out / "scores.parquet").to_pandas()
    row = table[(table.method == "attention") & (table.image == "scene_1000101.png")].iloc[0]
    session = open_model("default", device="cpu")
    x = preprocess([load_image(scenes / "scene_1000101.png")], session.metadata.preprocess)
    grid = attention_grid(session.run(x)[-1][0], session.metadata.tokens)[None]
    curves, auc = F.deletion(session, x, grid)
    assert row["deletion"] == pytest.approx(float(auc[0]), abs=1e-6)
    np.testing.assert_allclose(row["deletion_curve"], curves[0], atol=1e-6)


def test_resume_keeps_the_images_already_scored(evaluated, scenes):
    out, _ = evaluated
    before = (out / "parts").stat().st_mtime_ns, sorted(p.name for p in (out / "parts").iterdir())
    result = attnvis("evaluate", scenes, "--boxes", scenes / "boxes.json", "--methods", "attention,random", "--output", out,
                     "--resume", *FAST)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "parts").iterdir()) == before[1]  # nothing scored again
    assert json.loads((out / "summary.json").read_text())["scored_this_run"] == 0
    other = attnvis("evaluate", scenes, "--methods", "attention", "--metrics", "deletion", "--output", out, "--resume",
                    "--no-progress")
    one_line_error(other, "--resume", "other settings")


def test_evaluate_a_batch_store(scenes, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    batch = tmp_path / "out"
    done = attnvis("batch", scenes, "--output", batch, "--save", "maps", "--no-progress", "--no-gallery", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    result = attnvis("evaluate", batch, "--output", tmp_path / "eval", "--metrics", "deletion", "--no-progress",
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "eval" / "scores.parquet").to_pydict()
    assert sorted(set(table["method"])) == ["attention", "rollout"]  # what the store holds
    assert len(table["image"]) == 6
    missing = attnvis("evaluate", batch, "--methods", "gae", "--output", tmp_path / "eval2", "--no-progress")
    one_line_error(missing, "gae")


def test_evaluate_a_store_of_explanations(scenes, tmp_path):
    """A store written with ``batch --method`` is scored on its relevance maps: the same scores as the images'."""
    pq = pytest.importorskip("pyarrow.parquet")
    batch = tmp_path / "out"
    done = attnvis("batch", scenes, "--output", batch, "--save", "maps", "--method", "gae,grad-rollout",
                   "--no-progress", "--no-gallery", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    metrics = ["--metrics", "relevance-mass,relevance-rank", "--boxes", scenes / "boxes.json", "--no-progress",
               "--device", "cpu"]
    stored = attnvis("evaluate", batch, "--output", tmp_path / "eval", *metrics)
    assert stored.returncode == 0, stored.stderr
    direct = attnvis("evaluate", scenes, "--methods", "gae,grad-rollout", "--output", tmp_path / "eval2", *metrics)
    assert direct.returncode == 0, direct.stderr
    table = pq.read_table(tmp_path / "eval" / "scores.parquet").to_pandas()
    assert sorted(set(table["method"])) == ["attention", "gae", "grad-rollout", "rollout"]  # what the store holds
    again = pq.read_table(tmp_path / "eval2" / "scores.parquet").to_pandas()
    mine = table[table["method"].isin(["gae", "grad-rollout"])].sort_values(["method", "image"])
    theirs = again.sort_values(["method", "image"])
    assert len(mine) == len(theirs) == 6
    for metric in ("relevance-mass", "relevance-rank"):
        np.testing.assert_allclose(mine[metric].to_numpy(), theirs[metric].to_numpy(), atol=1e-5)
    gae = mine[mine["method"] == "gae"]["relevance-mass"].to_numpy()
    attention = table[table["method"] == "attention"].sort_values("image")["relevance-mass"].to_numpy()
    assert not np.allclose(gae, attention)  # the relevance columns were read, not the layers


@pytest.mark.parametrize("args, needles", [
    (["--metrics", "deletion,accuracy"], ["unknown metric 'accuracy'", "deletion", "road"]),
    (["--methods", "attention,saliency"], ["unknown method 'saliency'", "rollout"]),
    (["--metrics", "pointing-game"], ["pointing-game", "--boxes"]),
])
def test_bad_names_one_line(scenes, tmp_path, args, needles):
    one_line_error(attnvis("evaluate", scenes, "--output", tmp_path / "e", "--no-progress", *args), *needles)
    assert not (tmp_path / "e").exists()  # refused before any work


def test_bad_ground_truth_one_line(scenes, tmp_path):
    import cv2

    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"scene_1000100.png": [[10, 10, 400, 50]]}))
    one_line_error(attnvis("evaluate", scenes, "--boxes", boxes, "--output", tmp_path / "e", "--no-progress"),
                   "outside the 320x240 image")
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "scene_1000101.png"), np.zeros((50, 60), np.uint8))
    one_line_error(attnvis("evaluate", scenes, "--masks", masks, "--output", tmp_path / "e", "--no-progress"),
                   "scene_1000101.png is 60x50", "320x240")
    assert not (tmp_path / "e").exists()


def test_folder_without_store_one_line(tmp_path):
    (tmp_path / "out" / "maps").mkdir(parents=True)
    one_line_error(attnvis("evaluate", tmp_path / "out", "--output", tmp_path / "e", "--no-progress"), "--save maps")


def test_class_specific_methods_come_from_attnvis_explain(scenes, tmp_path):
    pytest.importorskip("torch")  # the default model's explanation graph is exported on first use
    pq = pytest.importorskip("pyarrow.parquet")
    result = attnvis("evaluate", scenes, "--boxes", scenes / "boxes.json", "--methods", "gae,grad-rollout",
                     "--metrics", "pointing-game,relevance-mass", "--output", tmp_path / "e", "--no-progress", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "e" / "scores.parquet").to_pydict()
    assert sorted(set(table["method"])) == ["gae", "grad-rollout"]
    assert all(0.0 <= v <= 1.0 for v in table["relevance-mass"])


def test_methods_needing_explanations_refused_on_a_plain_onnx(scenes, tmp_path, tiny_batch_model):
    result = attnvis("evaluate", scenes, "--model", tiny_batch_model, "--methods", "gae", "--metrics", "deletion",
                     "--output", tmp_path / "e", "--no-progress")
    one_line_error(result, "--explain")
    assert not (tmp_path / "e").exists()
