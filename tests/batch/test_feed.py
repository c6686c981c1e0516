"""Feeding the GPU: the decoder is chosen by what is usable; the CPU pool equals the per-file decode."""

import cv2
import numpy as np
import pytest

from attnvis.batch import feed
from attnvis.batch.decode import decode
from attnvis.metadata import Preprocess
from attnvis.runtime.images import preprocess

PRE = Preprocess(size=(32, 32), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(48, 64), (30, 20), (64, 64)]):
        path = tmp_path / f"im{i}.{'jpg' if i != 1 else 'png'}"
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(str(path))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"garbage" * 10)
    return paths, str(bad)


def test_cpu_decoder_equals_per_file_decode_and_reports_bad_files(files):
    paths, bad = files
    batch = feed.CpuDecoder(PRE, threads=2)([paths[0], bad, *paths[1:]])
    assert batch.names == paths
    assert list(batch.errors) == [bad] and "bad.jpg" in batch.errors[bad]
    assert batch.tensor.shape == (3, 3, 32, 32) and batch.tensor.dtype == np.float32
    for i, path in enumerate(paths):
        want = decode(path, path, PRE)
        np.testing.assert_array_equal(batch.images[i], want.image)
        np.testing.assert_array_equal(batch.tensor[i], want.tensor)


def test_choose_decoder_takes_the_gpu_only_when_usable(monkeypatch):
    monkeypatch.setattr(feed, "gpu_decode_usable", lambda: (False, "PyTorch sees no CUDA device"))
    chosen = feed.choose_decoder("cuda", PRE)
    assert chosen.kind == "cpu" and chosen.reason == "PyTorch sees no CUDA device"
    assert feed.choose_decoder("cpu", PRE).kind == "cpu"
    made = []
    monkeypatch.setattr(feed, "gpu_decode_usable", lambda: (True, ""))
    monkeypatch.setattr(feed, "GpuDecoder", lambda *a: made.append(a) or "gpu")
    assert feed.choose_decoder("cuda", PRE) == "gpu" and len(made) == 1
    assert feed.choose_decoder("cpu", PRE).kind == "cpu"  # never the GPU for a CPU run
    assert len(made) == 1


def test_gpu_decode_usable_says_why_not_here():
    import torch

    usable, why = feed.gpu_decode_usable()
    assert usable == torch.cuda.is_available()
    assert usable or why


@pytest.mark.parametrize("shape", [(480, 640), (61, 45), (100, 100)])
@pytest.mark.parametrize("resize_short, crop_pct", [(False, 1.0), (True, 0.875), (True, 1.0)])
def test_resize_plan_matches_preprocess(shape, resize_short, crop_pct, monkeypatch):
    from attnvis.runtime import images

    pre = Preprocess(size=(24, 24), resize_short=resize_short, crop_pct=crop_pct)
    seen = []
    real = images._pil_resize
    monkeypatch.setattr(images, "_pil_resize", lambda im, size, interp: seen.append(size) or real(im, size, interp))
    preprocess([np.zeros((*shape, 3), np.uint8)], pre)
    (h, w), _ = feed.resize_plan(*shape, pre)
    assert seen and seen[0] == (w, h)


def test_gpu_decoder_matches_cpu_within_two_levels(files):
    import torch

    if not feed.gpu_decode_usable()[0]:
        pytest.skip("no CUDA device for torchvision's decode_jpeg here")
    paths, _ = files
    gpu, cpu = feed.GpuDecoder(PRE)(paths), feed.CpuDecoder(PRE)(paths)
    assert gpu.names == cpu.names
    got = gpu.tensor.cpu().numpy()
    levels = np.abs(got - cpu.tensor) * np.asarray(PRE.std, np.float32)[:, None, None] / PRE.scale  # in 0..255 units
    assert levels.mean() <= 1.0 and levels.max() <= 8.0  # nvJPEG vs libjpeg, torch's antialias vs PIL's filter
    assert isinstance(gpu.tensor, torch.Tensor) and gpu.tensor.is_cuda


@pytest.fixture(scope="module")
def meta(tiny_batch_model):
    from attnvis.runtime import OrtSession

    return OrtSession(tiny_batch_model, device="cpu").metadata


def _for_run(meta, device="cuda", backend="ort", save="images", **options):
    from types import SimpleNamespace

    from attnvis.batch.stages import make_plan
    from attnvis.visualize import VisualizeOptions

    plan = make_plan(meta, VisualizeOptions(**options), "tiny", save=save)
    return feed.for_run(SimpleNamespace(device=device), plan, backend)


def test_a_cpu_run_gets_no_gpu_side(meta):
    got, plan, notes = _for_run(meta, device="cpu")
    assert got is None and plan.renderer == "cpu" and notes == []


def test_the_gpu_side_says_what_runs_where_and_why(meta, monkeypatch):
    from attnvis.render import gpu

    monkeypatch.setattr(feed, "gpu_decode_usable", lambda: (True, ""))
    monkeypatch.setattr(feed, "TORCH_DEVICE", "cpu")
    monkeypatch.setattr(gpu, "cuda_render_usable", lambda: False)
    got, plan, notes = _for_run(meta)
    assert got is not None and got.reduce_maps and plan.renderer == "cpu"
    assert notes.pop(0) == "model: ort on cuda"  # a session without ORT's providers list (this stand-in)
    assert notes[0].startswith("maps: full maps reduced on the GPU to each head's query row, copied")
    assert notes[1].startswith("render: on the CPU threads (numba-cuda is not installed or sees no GPU")
    got, _, (_, *notes) = _for_run(meta, save="maps")
    assert "and the rollout row" in notes[0] and "draws only the gallery's thumbnails" in notes[1]
    got, _, (_, *notes) = _for_run(meta, save_raw=True)
    assert not got.reduce_maps and notes[0] == "maps: full maps copied to the host (--save-raw writes the full maps)"
    got, _, (_, *notes) = _for_run(meta, backend="torch")
    assert got is None and notes[0] == "decode: on the CPU threads, not nvJPEG: the torch backend reads host arrays"
    monkeypatch.setattr(feed, "gpu_decode_usable", lambda: (False, "PyTorch sees no CUDA device"))
    got, _, (_, *notes) = _for_run(meta)
    assert got is None and notes[:2] == ["decode: on the CPU threads, not nvJPEG: PyTorch sees no CUDA device",
                                         "maps: full maps copied to the host (PyTorch sees no CUDA device)"]
