"""The batch's CUDA branch with CPU stand-ins, against ``--device cpu``: run by test_cuda_batch.py.

Under NUMBA_ENABLE_CUDASIM=1 (numba's CUDA simulator runs the render kernel).
The stand-ins: ONNX Runtime's CPU provider behind a session that says it runs
on CUDA (IO binding then binds host memory), torch's CPU device for the feed's
device tensors, and for nvJPEG the CPU path's own JPEG decoder (refusing one
file, as nvJPEG may). Everything else is the code a GPU runs.

    python cuda_fake_check.py MODEL INPUTS OUT REFUSED_JPEG [images,maps]

Prints one ``ok`` line per check and exits non-zero on the first difference.
"""

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run me with NUMBA_ENABLE_CUDASIM=1"

from attnvis.batch import feed, run  # noqa: E402
from attnvis.batch.manifest import MANIFEST, load  # noqa: E402
from attnvis.runtime import OrtSession  # noqa: E402
from attnvis.runtime._iobind import Binder  # noqa: E402
from attnvis.runtime.images import decode_image  # noqa: E402

model, inputs, out, refused = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]).read_bytes()
modes = sys.argv[5].split(",") if len(sys.argv) > 5 else ["images", "maps"]
MAX_PIXELS = 3000  # one input is over it


class StandInSession(OrtSession):
    """ORT's CPU provider behind a session that says CUDA; its outputs go through the binder, in host memory."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.binder = Binder(self.session, "cpu", self.metadata.reduction == "none")

    @property
    def device(self) -> str:
        return "cuda"


def stand_in_nvjpeg(datas, device):
    assert device.type == "cpu"
    return [None if data == refused else torch.from_numpy(decode_image(data)).permute(2, 0, 1) for data in datas]


opened = run.open_session
run.open_session = lambda config: StandInSession(config.model, device="cpu", io_binding=True) \
    if config.device == "cuda" else opened(config)
feed.gpu_decode_usable = lambda: (True, "")
feed.nvjpeg = stand_in_nvjpeg
feed.TORCH_DEVICE = "cpu"


def batch(device: str, save: str):
    config = run.BatchConfig(inputs=[inputs], output=str(out / f"{device}-{save}"), model=model, device=device,
                             save=save, progress=False, max_pixels=MAX_PIXELS, batch_size=4, workers=2)
    summary = run.run_batch(config)
    return summary, load(summary.output / MANIFEST)


def fail(message: str):
    print("MISMATCH", message)
    sys.exit(1)


for save in modes:
    cpu, cpu_records = batch("cpu", save)
    gpu, gpu_records = batch("cuda", save)
    print(f"notes {save}: {json.dumps(gpu.notes)}")
    if any(note.startswith(("decode:", "render:")) for note in cpu.notes):
        fail(f"a --device cpu run has GPU notes: {cpu.notes}")
    if not any(note.startswith("decode: 2 plain JPEGs by a stand-in on cpu") for note in gpu.notes):
        fail(f"the decoder's note is missing or wrong: {gpu.notes}")
    if (gpu.done, gpu.failed) != (cpu.done, cpu.failed) or cpu.failed < 2:
        fail(f"{save}: done/failed {gpu.done}/{gpu.failed} against {cpu.done}/{cpu.failed}: {gpu.failures} / {cpu.failures}")
    keys = ("status", "error", "files", "size", "prediction", "maps", "thumb", "head_grids", "source_check")
    for key, want in cpu_records.items():
        got = gpu_records[key]
        if any(got.get(k) != want.get(k) for k in keys):
            fail(f"{save} record {key}: {[(k, got.get(k), want.get(k)) for k in keys if got.get(k) != want.get(k)]}")
    print(f"ok {save}: the same {len(cpu_records)} records ({cpu.failed} refused, the same reasons)")
    if save == "images":
        files = sorted(p.relative_to(cpu.output) for p in cpu.output.rglob("*_layer_*.png"))
        if not files or files != sorted(p.relative_to(gpu.output) for p in gpu.output.rglob("*_layer_*.png")):
            fail("images: not the same files")
        worst = max(int(np.abs(cv2.imread(str(cpu.output / f)).astype(int) - cv2.imread(str(gpu.output / f))).max())
                    for f in files)
        if worst > 1:
            fail(f"images: {worst} levels apart")
        print(f"ok images: {len(files)} PNGs within one level (at most {worst})")
    else:
        import attnvis

        a, b = attnvis.load_maps(cpu.output), attnvis.load_maps(gpu.output)
        if sorted(a) != sorted(b):
            fail("maps: not the same keys")
        worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
        roll = max(float(np.abs(a.rollout(k) - b.rollout(k)).max()) for k in a) if a.layout.rollout else 0.0
        if worst > 1e-4 or roll > 1e-4:
            fail(f"maps: {worst} / rollout {roll} apart")
        print(f"ok maps: {len(a)} images' maps within 1e-4 (at most {worst:.2g}, rollout {roll:.2g})")
