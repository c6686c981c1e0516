"""``attnvis batch --device cuda`` without a GPU: its CUDA branch with CPU stand-ins equals ``--device cpu``.

The stand-ins (see ``cuda_fake_check.py``) replace only what needs a card: the
CUDA provider, the torch device and nvJPEG; the render kernel runs under
numba's CUDA simulator, which must be chosen before numba.cuda is first
imported: hence a subprocess. Images are tiny: simulated kernels are slow.
"""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("numba_cuda", reason="numba-cuda (the test extra) provides numba.cuda")
pytest.importorskip("torch")
HERE = Path(__file__).parent


def _inputs(folder: Path) -> Path:
    """Three plain JPEGs (one that the stand-in nvJPEG refuses), a PNG, an EXIF-rotated JPEG, a truncated one, a big one."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    smooth = lambda h, w: cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    for name, (h, w) in {"a.jpg": (20, 24), "b.jpg": (18, 30), "refused.jpg": (24, 16)}.items():
        cv2.imwrite(str(folder / name), smooth(h, w))
    cv2.imwrite(str(folder / "c.png"), smooth(16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate: the CPU path turns it
    Image.fromarray(smooth(16, 22)).save(folder / "rotated.jpg", exif=exif.tobytes())
    data = (folder / "a.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(folder / "big.jpg"), smooth(64, 64))  # over --max-pixels 3000
    return folder


def _check(model: str, tmp_path: Path, modes: str) -> str:
    inputs = _inputs(tmp_path / "in")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    result = subprocess.run([sys.executable, str(HERE / "cuda_fake_check.py"), model, str(inputs),
                             str(tmp_path / "out"), str(inputs / "refused.jpg"), modes],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result.stdout


def test_the_cuda_branch_equals_the_cpu_run_with_full_maps(tiny_batch_model, tmp_path):
    out = _check(tiny_batch_model, tmp_path, "images,maps")
    for line in ("ok images: the same 7 records (2 refused", "ok images: 20 PNGs within one level", "ok maps:"):
        assert line in out, out
    assert "render: on the GPU (numba-cuda)" in out and "JPEG(s) nvJPEG refused" in out
    assert "full maps reduced on the GPU to each head's query row and the rollout row" in out
    assert "model: ONNX Runtime, providers used: CPUExecutionProvider" in out  # the stand-in's: what ORT ran


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory):
    """The tiny ViT exported with its maps reduced in-graph (--reduce cls)."""
    import torch

    from attnvis.export.onnx import export_onnx
    from attnvis.metadata import Preprocess, TokenLayout
    from attnvis.models.tiny import TinyViT, TinyViTConfig
    from attnvis.sources import ModelSource

    torch.manual_seed(0)
    net = TinyViT(TinyViTConfig(image_size=32, patch_size=8, dim=16, depth=2, heads=2, num_classes=3)).eval()
    tokens = TokenLayout(prefix_tokens=1, grid=(4, 4), cls_index=0, prefix_names=("cls",))
    source = ModelSource(net, (torch.zeros(2, 3, 32, 32),), tokens, Preprocess(size=(32, 32)), "tiny-cls")
    path = tmp_path_factory.mktemp("model") / "tiny-cls.onnx"
    export_onnx(source, path, reduce="cls", validate=False)
    return str(path)


def test_the_cuda_branch_equals_the_cpu_run_with_cls_rows(cls_model, tmp_path):
    out = _check(cls_model, tmp_path, "maps")
    assert "ok maps: 5 images' maps within 1e-4" in out, out
    assert "maps: reduced in-graph (cls), written by the GPU into one page-locked buffer per batch" in out


@pytest.fixture
def on_a_gpu():
    """Skip unless ORT's CUDA provider and PyTorch's CUDA both run here (before the model is exported)."""
    import torch

    from attnvis.errors import DeviceError
    from attnvis.runtime.device import ort_providers

    try:
        ort_providers("cuda")
    except DeviceError:
        pytest.skip("no usable CUDA execution provider here; the stand-in tests cover the CUDA branch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device here")


@pytest.mark.parametrize("save", ["maps", "images"])
def test_on_a_gpu_the_batch_equals_the_cpu_run(on_a_gpu, tiny_batch_model, tmp_path, save):
    """On a card: PNGs (decoded by the CPU path on both sides) give maps within 1e-4 and images within one level;
    JPEGs go through nvJPEG (its IDCT is not libjpeg-turbo's: only the records and the note are compared)."""
    import attnvis
    from attnvis.batch.manifest import MANIFEST, load
    from attnvis.batch.run import BatchConfig, run_batch

    inputs = _inputs(tmp_path / "in")
    runs = {}
    for device in ("cpu", "cuda"):
        config = BatchConfig(inputs=[str(inputs)], output=str(tmp_path / device), model=tiny_batch_model, device=device,
                             save=save, progress=False, max_pixels=3000, batch_size=4, workers=2)
        runs[device] = (run_batch(config), load(tmp_path / device / MANIFEST))
    (cpu, cpu_records), (gpu, gpu_records) = runs["cpu"], runs["cuda"]
    assert any(note.startswith("decode: ") and "nvJPEG on the GPU" in note for note in gpu.notes), gpu.notes
    assert {k: r["status"] for k, r in gpu_records.items()} == {k: r["status"] for k, r in cpu_records.items()}
    if save == "maps":
        a, b = attnvis.load_maps(tmp_path / "cpu"), attnvis.load_maps(tmp_path / "cuda")
        np.testing.assert_allclose(a["c.png"], b["c.png"], atol=1e-4)
        np.testing.assert_allclose(a.rollout("c.png"), b.rollout("c.png"), atol=1e-4)
    else:
        files = sorted((tmp_path / "cpu" / "c.png").glob("*.png"))
        assert files
        for f in files:
            got = cv2.imread(str(tmp_path / "cuda" / "c.png" / f.name)).astype(int)
            assert np.abs(got - cv2.imread(str(f))).max() <= 1, f.name
