"""``attnvis batch`` against the seed-style loop, and peak memory against the number of images.

    python benchmarks/bench_batch.py                  # 200 images 640×480, default model
    python benchmarks/bench_batch.py --rss 50,1000    # also peak RSS (all processes) for 50 and 1,000 images

The seed-style loop is one process doing, per image: read, run the same ONNX
model, then per layer a NumPy head mean, ``cv2.resize`` / ``normalize`` /
``applyColorMap`` / ``addWeighted`` and two ``cv2.imwrite`` PNGs. The batch
runs as the user would run it (``attnvis batch``, default settings) after one
warm-up run (numba's first-call compile is timed apart). Both rates cover
the images' processing only: the seed loop's clock starts after its model
is open, the batch's after its setup (model open, kernels loaded; reported
as ``setup_s``, and in ``wall_s`` with the process start). The two alternate
for ``--rounds`` pairs (the machine's slow spells then fall on both), each
run after ``sync`` so that none inherits the other's dirty page cache; the
median pair is the result, every pair is in the JSON. The two runs'
overlays are decoded and compared pixel by pixel (lossless output).
Results are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np


def make_images(folder: Path, n: int, size=(640, 480)) -> list[Path]:
    """``n`` JPEGs (quality 90) of the tiny model's synthetic scenes, in 4 subfolders."""
    from attnvis.models.tiny import HELD_OUT_SEED, make_scene

    paths = []
    for i in range(n):
        path = folder / f"part{i % 4}" / f"scene_{i:05d}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            image = cv2.resize(make_scene(HELD_OUT_SEED + 10_000 + i)[0], size, interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(path), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def seed_loop(paths: list[Path], model: str, out: Path) -> dict:
    """The seed guide's per-image loop, one process: images/s and CPU ms per image."""
    from attnvis.runtime import open_model

    shutil.rmtree(out, ignore_errors=True)  # as the batch's output folder: files are created, not overwritten

    session = open_model(model, device="cpu")
    meta = session.metadata
    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        bgr = cv2.imread(str(path))
        maps = session.run_images([bgr[..., ::-1]])
        folder = out / path.parent.name / path.name
        folder.mkdir(parents=True, exist_ok=True)
        for i, layer in enumerate(meta.layers):
            attn = maps[i][0].mean(axis=0)  # (Q, K): head mean
            row = attn[meta.tokens.cls_index, meta.tokens.prefix_tokens:].reshape(meta.tokens.grid)
            resized = cv2.resize(row, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
            norm = cv2.normalize(resized, None, 0, 1, cv2.NORM_MINMAX)
            heat = cv2.applyColorMap(np.uint8(255 * norm), cv2.COLORMAP_JET)
            overlay = cv2.addWeighted(bgr, 0.5, heat, 0.5, 0)
            cv2.imwrite(str(folder / f"attn_map_layer_{i}_{layer.name}.png"), overlay)
            cv2.imwrite(str(folder / f"heatmap_layer_{i}_{layer.name}.png"), heat)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"images_per_s": round(len(paths) / wall, 2), "cpu_ms_per_image": round(1000 * cpu / len(paths), 1)}


class PeakRSS(threading.Thread):
    """Samples the summed RSS of a process and all its children every 20 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            self.stop.wait(0.02)


def run_batch(inputs: Path, out: Path, model: str, extra: list[str] = ()) -> dict:
    """``attnvis batch`` as a subprocess; wall time, images/s from its summary, peak RSS (``ru_maxrss``, Linux)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "attnvis.cli", "batch", str(inputs), "--output", str(out), "--model", model,
           "--device", "cpu", "--no-progress", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    with proc.stdout:
        stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # the kernel's high-water mark: no sampler taking CPU from the run
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"attnvis batch failed ({proc.returncode}):\n{stdout}")
    line = stdout.splitlines()[0]  # "N done, ... in S s (R images/s, C cores busy; setup T s)"
    rate, cores = float(line.split(" images/s")[0].rsplit("(", 1)[1]), float(line.split(" cores busy")[0].rsplit(", ", 1)[1])
    setup = float(line.split("setup ")[1].split(" s)")[0])
    return {"command": " ".join(cmd), "wall_s": round(wall, 2), "setup_s": setup, "images_per_s": rate, "cores_busy": cores,
            "cpu_ms_per_image": round(1000 * cores / rate, 1), "peak_rss_mb": round(usage.ru_maxrss * 1024 / 2**20, 1), "summary": line}


def compare(seed_out: Path, batch_out: Path) -> dict:
    """Pixels of every overlay and heatmap of the two runs (they differ only by float rounding in normalize)."""
    files = sorted(p.relative_to(seed_out) for p in seed_out.rglob("*.png"))
    worst, differing, total = 0, 0, 0
    for rel in files:
        diff = np.abs(cv2.imread(str(seed_out / rel)).astype(int) - cv2.imread(str(batch_out / rel)).astype(int)).max(-1)
        worst, differing, total = max(worst, int(diff.max())), differing + int((diff > 0).sum()), total + diff.size
    return {"files": len(files), "pixels_differing_pct": round(100 * differing / max(total, 1), 4), "max_abs_diff": worst}


def lossless(paths: list[Path], root: Path, batch_out: Path, model: str) -> bool:
    """Whether the batch's PNGs decode to exactly the arrays attnvis renders for these images."""
    from attnvis.visualize import VisualizeOptions, layer_files
    from attnvis.runtime import load_image, open_model

    session = open_model(model, device="cpu", threads=1)
    for path in paths:
        image = load_image(path)
        attn = [m[0] for m in session.run(np.stack([_tensor(image, session)] * 16)).maps]  # batch 16, as the run
        for name, rgb in layer_files(attn, image, session.metadata, list(range(len(attn))), VisualizeOptions()):
            if not np.array_equal(cv2.imread(str(batch_out / path.relative_to(root) / name))[..., ::-1], rgb):
                return False
    return True


def _tensor(image: np.ndarray, session) -> np.ndarray:
    from attnvis.runtime import preprocess

    return preprocess([image], session.metadata.preprocess)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default="default")
    parser.add_argument("--rss", default="", help="comma-separated image counts for the peak-RSS runs, e.g. 50,1000")
    parser.add_argument("--work", default=None, help="folder for images and outputs (default: a temporary one)")
    parser.add_argument("--rounds", type=int, default=3, help="seed loop / batch pairs, interleaved; the median pair is reported")
    parser.add_argument("--json", default="bench_batch.json")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="attnvis-bench-"))
    images = work / "images"
    paths = make_images(images, max([args.images, *[int(n) for n in args.rss.split(",") if n]]))
    subset = work / f"in_{args.images}"
    _link(paths[: args.images], images, subset)
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "images": args.images,
              "size": "640x480"}
    start = time.perf_counter()
    run_batch(subset, work / "warmup", args.model, ["--no-gallery"])  # exports/caches the model, compiles numba
    result["warmup_s"] = round(time.perf_counter() - start, 1)
    seed_loop(paths[:5], args.model, work / "seed")  # warm-up
    rounds = []  # seed, batch, seed, batch, ...: the shared machine's slow spells fall on both alike
    for _ in range(args.rounds):
        os.sync()  # each run starts with no dirty pages from the one before (writing into a full page cache costs more CPU)
        seed = seed_loop(paths[: args.images], args.model, work / "seed")
        os.sync()
        batch = run_batch(subset, work / "batch", args.model)
        rounds.append({"seed_loop": seed, "batch": batch, "speedup": round(batch["images_per_s"] / seed["images_per_s"], 2),
                       "cpu_per_image_ratio": round(seed["cpu_ms_per_image"] / batch["cpu_ms_per_image"], 2)})
    middle = sorted(rounds, key=lambda r: r["speedup"])[len(rounds) // 2]  # the median round
    result.update(middle)
    result["rounds"] = rounds
    result["load_average"] = os.getloadavg()  # other processes' demand for these cores during the run
    result["pixels_vs_seed"] = compare(work / "seed", work / "batch")
    result["lossless"] = lossless(paths[:3], images, work / "batch", args.model)
    for n in [int(n) for n in args.rss.split(",") if n]:
        _link(paths[:n], images, work / f"in_{n}")
        result[f"rss_{n}"] = run_batch(work / f"in_{n}", work / f"rss_out_{n}", args.model, ["--no-gallery"])
    print(json.dumps(result, indent=2))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def _link(paths: list[Path], root: Path, folder: Path) -> None:
    """A folder with links to ``paths`` (same relative layout), so runs of different sizes share the files."""
    for path in paths:
        target = folder / path.relative_to(root)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)


if __name__ == "__main__":
    main()
