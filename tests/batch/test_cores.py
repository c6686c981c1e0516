"""The CPU batch's core split (ORT threads from measured costs) and its memory-aware batch size."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from attnvis.batch.cores import CoreSplit, fit_batch, map_bytes, parse_size, split_cores
from attnvis.batch.run import BatchConfig, run_batch
from attnvis.cli import main
from attnvis.metadata import LayerInfo, ModelMetadata, TokenLayout
from attnvis.models.tiny import make_scene


def dinov2_s(reduction: str, n: int = 1374) -> ModelMetadata:
    """Metadata shaped like a DINOv2-S/14 with registers at 518 px: 12 layers, 6 heads, N tokens."""
    layers = [LayerInfo(f"blocks.{i}.attn", "self", 6, n, n) for i in range(12)]
    return ModelMetadata(layers=layers, tokens=TokenLayout(prefix_tokens=5, grid=(37, 37), cls_index=0), reduction=reduction)


@pytest.mark.parametrize("cores,infer,render,want", [
    (2, 0.005, 0.050, 1),  # the default model: rendering is the work
    (2, 1.300, 0.060, 2),  # a ViT-S at 518 px: inference is
    (2, 0.100, 0.100, 1),  # even: either stage on one core
    (16, 0.005, 0.050, 1),
    (16, 1.300, 0.060, 15),
    (64, 0.300, 0.100, 48),
    (4, 0.0, 0.0, 1),
])
def test_ort_gets_the_cores_in_proportion_to_inference(cores, infer, render, want):
    assert split_cores(cores, infer, render) == want


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@pytest.mark.parametrize("infer_s,render_s,threads", [(0.08, 0.002, 2), (0.002, 0.06, 1)])
def test_split_times_the_first_batch_then_sets_the_threads_once(infer_s, render_s, threads):
    opened = []
    split = CoreSplit(2, opened.append, images=4)

    def infer(tensors):
        _burn(infer_s * len(tensors))
        return len(tensors)

    assert split.infer(infer, [0] * 4) == 4  # the first batch, timed
    assert split.measuring and opened == []
    for stage in ("decode", "render", "render"):
        split.timed(stage, _burn, render_s / 2)
    assert split.infer(infer, [0] * 4) == 4  # settled before the second batch
    assert split.threads == threads and opened == ([] if threads == 1 else [2])
    assert f"threads: {threads} for ONNX Runtime of 2 cores" in split.note
    split.infer(infer, [0] * 4)
    assert len(opened) <= 1  # settled once


def test_set_threads_reopens_the_session_in_place(tiny_batch_model):
    from attnvis.runtime import OrtSession

    session = OrtSession(tiny_batch_model, device="cpu", threads=1)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    before = session.run(x)
    old = session.session
    session.set_threads(2)
    assert session.session is not old and session.threads == 2
    after = session.run(x)
    for a, b in zip(before.maps, after.maps):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_full_maps_at_518_px_get_a_batch_that_fits():
    assert map_bytes(dinov2_s("none")) == 4 * 12 * 6 * 1374 ** 2  # 544 MB (519 MiB) an image
    assert map_bytes(dinov2_s("cls")) == 4 * 12 * (1374 - 5)
    fit = fit_batch(dinov2_s("none"), 8, parse_size("6G"))
    assert fit.batch_size == 5  # 6 GiB / (2 copies x 519 MiB)
    assert fit.note == ("batch: 5 per inference instead of 8: each image's maps are 519 MiB, about 2x that per image "
                        "is in flight, and the budget is 6.0 GiB (5 fit; --max-memory to change it)")
    assert fit_batch(dinov2_s("cls"), 8, parse_size("6G")) == fit_batch(dinov2_s("cls"), 8, parse_size("6G"))
    assert fit_batch(dinov2_s("cls"), 8, parse_size("6G")).note == ""
    tiny = fit_batch(dinov2_s("none"), 8, parse_size("100M"))
    assert tiny.batch_size == 1 and "not even one fits" in tiny.note
    assert fit_batch(dinov2_s("none"), 8, None).budget > 0  # a share of the available memory


@pytest.mark.parametrize("text,want", [("8G", 8 * 2**30), ("512M", 512 * 2**20), ("1.5GB", int(1.5 * 2**30)),
                                       ("2GiB", 2 * 2**30), ("1000", 1000)])
def test_sizes(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["lots", "0", "-1G", ""])
def test_bad_sizes(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def _photos(folder: Path, n: int) -> Path:
    for i in range(n):
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"img{i:02d}.jpg"), cv2.resize(make_scene(i)[0], (64, 48))[..., ::-1])
    return folder


def test_batch_summary_says_what_it_chose(tiny_batch_model, tmp_path):
    photos = _photos(tmp_path / "in", 12)
    auto = run_batch(BatchConfig([str(photos)], str(tmp_path / "auto"), model=tiny_batch_model, device="cpu",
                                 batch_size=4, progress=False, gallery=False))
    assert auto.done == 12 and any(note.startswith("threads: ") for note in auto.notes)
    assert "threads: " in auto.text()
    manual = run_batch(BatchConfig([str(photos)], str(tmp_path / "manual"), model=tiny_batch_model, device="cpu",
                                   batch_size=4, progress=False, gallery=False, threads=1, max_memory=1))
    assert manual.done == 12
    assert manual.notes == ["batch: 1 per inference instead of 4: each image's maps are 5 KiB, about 2x that "
                            "per image is in flight, and the budget is 1 B (not even one fits; --max-memory to change it)"]
    same = [p.relative_to(tmp_path / "auto") for p in sorted((tmp_path / "auto").rglob("*.png"))]
    assert len(same) == 12 * 4  # overlay and heatmap of 2 layers
    for p in same:  # batch 1 or 4, one ORT thread or two: the same pictures (up to float rounding)
        a, b = (cv2.imread(str(tmp_path / run / p)).astype(int) for run in ("auto", "manual"))
        assert np.abs(a - b).max() <= 1


def test_cli_max_memory(tiny_batch_model, tmp_path, capsys):
    photos = _photos(tmp_path / "in", 3)
    code = main(["batch", str(photos), "--output", str(tmp_path / "out"), "--model", tiny_batch_model, "--device", "cpu",
                 "--no-progress", "--batch-size", "2", "--max-memory", "1K", "--threads", "1"])
    assert code == 0
    assert "batch: 1 per inference instead of 2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["batch", str(photos), "--max-memory", "lots"])
    assert "'lots' is not a size" in capsys.readouterr().err


def test_the_default_batch_is_chosen_by_device(tiny_batch_model, tmp_path):
    """``--batch-size`` left out: 8 on the CPU, where smaller batches are faster per image; 16 on CUDA."""
    from attnvis.batch.cores import BATCH_SIZES, batch_size_for

    photos = _photos(tmp_path / "in", 3)
    run = run_batch(BatchConfig([str(photos)], str(tmp_path / "out"), model=tiny_batch_model, device="cpu",
                                progress=False, gallery=False, max_memory=1))
    assert run.done == 3 and any(note.startswith(f"batch: 1 per inference instead of {BATCH_SIZES['cpu']}:")
                                 for note in run.notes)
    assert run.seconds < CoreSplit.WAIT_S  # a first batch of one image: the split waits for its one render only
    assert BATCH_SIZES == {"cpu": 8, "cuda": 16}
    assert batch_size_for(None, "cuda") == 16 and batch_size_for(3, "cuda") == 3 and batch_size_for(None, "cpu") == 8
