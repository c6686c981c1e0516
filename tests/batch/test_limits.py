"""What a batch allocates and how it starts: numbers checked up front, batches never padded past the images,
the memory budget counting what ONNX Runtime holds, the first batch at the threads the model wants."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnvis.batch.cores import CoreSplit, first_threads, fit_batch, parse_size, work_bytes
from attnvis.batch.run import BatchConfig, run_batch
from attnvis.cli import main
from attnvis.metadata import LayerInfo, ModelMetadata, Preprocess, TokenLayout


def dinov2_s(reduction: str, n: int = 1374) -> ModelMetadata:
    """Metadata shaped like a DINOv2-S/14 with registers at 518 px: 12 layers, 6 heads, N tokens."""
    layers = [LayerInfo(f"blocks.{i}.attn", "self", 6, n, n) for i in range(12)]
    return ModelMetadata(layers=layers, tokens=TokenLayout(prefix_tokens=5, grid=(37, 37), cls_index=0),
                         preprocess=Preprocess(size=(518, 518)), reduction=reduction)


def make_inputs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("flag,value", [("--threads", "-1"), ("--threads", "0"), ("--workers", "0"),
                                        ("--workers", "-2"), ("--batch-size", "0"), ("--batch-size", "-3")])
def test_batch_refuses_a_bad_number_before_any_work(tiny_batch_model, tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    code = main(["batch", str(make_inputs(tmp_path / "in", 1)), "--output", str(out), "--model", tiny_batch_model,
                 "--no-progress", f"{flag}={value}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"{flag} {value}" in err, err
    assert not out.exists()


@pytest.mark.parametrize("value", ["-1", "0"])
def test_visualize_refuses_threads_below_one(tiny_batch_model, tmp_path, capsys, value):
    image = make_inputs(tmp_path / "in", 1) / "0.png"
    code = main(["visualize", "--image", str(image), "--model", tiny_batch_model, "--output", str(tmp_path / "out"),
                 f"--threads={value}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"--threads {value}" in err, err


def test_a_huge_batch_size_is_not_padded_past_the_images(tiny_batch_model, tmp_path, monkeypatch, capsys):
    from attnvis.runtime.session import OrtSession

    rows, real = [], OrtSession.run

    def counted(self, *inputs, **kwargs):
        rows.append(inputs[0].shape[0])
        return real(self, *inputs, **kwargs)

    monkeypatch.setattr(OrtSession, "run", counted)
    start = time.perf_counter()
    code = main(["batch", str(make_inputs(tmp_path / "in", 6)), "--output", str(tmp_path / "out"), "--model",
                 tiny_batch_model, "--device", "cpu", "--no-progress", "--no-gallery", "--batch-size", "100000",
                 "--max-memory", "64M"])
    assert code == 0 and "6 done" in capsys.readouterr().out
    assert rows == [6]  # one call, six rows: the 100,000 asked (or the thousands 64M allowed) would be zeros
    assert time.perf_counter() - start < 60


def test_max_memory_bounds_the_batch_whatever_batch_size_says():
    """A ``--reduce cls`` image outputs 66 KB of maps, but ORT holds its input and a layer's 45 MB of scores."""
    meta = dinov2_s("cls")
    budget = parse_size("1G")
    fit = fit_batch(meta, 100_000, budget)
    scores = 4 * 6 * 1374 ** 2  # bytes of one layer's attention probabilities, one image
    assert work_bytes(meta) == 4 * 3 * 518 * 518 + 2 * scores
    assert 1 <= fit.batch_size and fit.batch_size * (scores + 4 * 3 * 518 * 518) <= budget
    assert fit.batch_size == budget // (2 * fit.map_bytes + work_bytes(meta))
    assert "input and attention scores" in fit.note and "instead of 100000" in fit.note
    assert fit_batch(dinov2_s("none"), 8, parse_size("6G")).batch_size == 5  # full maps: the maps still rule


def test_the_first_guess_gives_an_inference_bound_model_the_cores():
    assert first_threads(2, dinov2_s("none"), 88_245_200, 12) == 2  # ViT-S at 518 px: ~95 GFLOP an image
    assert first_threads(16, dinov2_s("none"), 88_245_200, 12) >= 14
    tiny = ModelMetadata(layers=[LayerInfo(f"blocks.{i}.attn", "self", 4, 145, 145) for i in range(4)],
                         tokens=TokenLayout(prefix_tokens=1, grid=(12, 12), cls_index=0))
    assert first_threads(2, tiny, 881_173, 4) == 1  # the embedded model: rendering is the work


def _burn_two_threads(seconds: float) -> None:
    """CPU on the calling thread and one more, as ORT at two threads uses it."""
    import threading

    def burn():
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    other = threading.Thread(target=burn)
    other.start()
    burn()
    other.join()


def test_a_first_batch_at_two_threads_is_measured_without_a_one_thread_batch():
    opened = []
    split = CoreSplit(2, opened.append, images=2, threads=2)

    def infer(tensors):
        _burn_two_threads(0.05 * len(tensors))
        return len(tensors)

    split.infer(infer, [0, 0])  # the first batch, at the guess's two threads, timed by the process's CPU clock
    split.infer(infer, [0, 0])  # no render timed yet: the driver goes on instead of waiting for one
    assert split.measuring and opened == []
    for stage in ("decode", "render", "render"):
        split.timed(stage, time.sleep, 0.001)  # next to no CPU
    split.infer(infer, [0, 0])
    assert not split.measuring and split.threads == 2 and opened == []  # settled where it was: not re-opened
    per_image_ms = int(split.note.split("inference ")[1].split(" ms")[0])
    assert 70 <= per_image_ms <= 200  # ~100 ms an image: both threads' CPU (2 x 50 ms), not the driver's alone


def test_a_run_too_short_to_settle_says_it_kept_the_guess():
    split = CoreSplit(2, lambda n: None, images=8, threads=2)
    split.infer(lambda tensors: len(tensors), [0] * 3)
    split.finish()
    assert split.note.startswith("threads: 2 for ONNX Runtime of 2 cores, guessed from the model's size")


def test_the_session_starts_at_the_guessed_threads(tiny_batch_model, tmp_path, monkeypatch):
    from attnvis.batch import cores
    from attnvis.runtime.session import OrtSession

    seen, real = [], OrtSession.run

    def recorded(self, *inputs, **kwargs):
        seen.append(self.threads)
        return real(self, *inputs, **kwargs)

    monkeypatch.setattr(OrtSession, "run", recorded)
    monkeypatch.setattr(cores, "first_threads", lambda *args: 2)  # as an inference-bound model would guess
    summary = run_batch(BatchConfig([str(make_inputs(tmp_path / "in", 4))], str(tmp_path / "out"),
                                    model=tiny_batch_model, device="cpu", batch_size=2, progress=False, gallery=False))
    assert summary.done == 4 and seen[0] == 2  # no batch at one thread first
