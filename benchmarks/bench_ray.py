"""``attnvis batch --engine ray`` against ``--engine local`` on one machine, and the per-stage rates that scale out.

    python benchmarks/bench_ray.py                       # 200 images 640×480, default model, a one-node Ray
    python benchmarks/bench_ray.py --address HOST:PORT   # against a running cluster instead

What it measures:

* End to end, the same 200 images through ``attnvis batch`` (default
  settings, each engine warmed up once on a few images first so numba's
  cache and the model export are in place): the local engine, and the Ray
  engine against a running one-node cluster (``ray start --head`` with this
  machine's cores; started and stopped here unless ``--address`` is given).
  ``images/s`` is the summary's (the engine's run, from the first task to
  the last record); ``wall`` is the whole command (Python start, model load,
  Ray connect, gallery). The difference between the engines is Ray's
  overhead on one machine: worker processes, Arrow/pickle copies through the
  object store and scheduling.
* Per stage, in this process on one thread without Ray: what one decode
  task, one CPU inference actor (one ORT session, one thread, batches of
  ``--batch-size``) and one render task (render + encode + write) sustain.
  With ``c`` CPUs per node and ``a = c // 4`` CPU actors (the engine's bound), a
  node sustains about ``min(a * infer, (c - a) / (1/decode + 1/render))`` images/s; nodes add up
  until the shared output file system or the driver's manifest loop (one
  JSON line per image) saturates.

Results are printed and written as JSON. Run it on an otherwise idle
machine: other load skews both engines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).parent))
from bench_batch import make_images  # noqa: E402 - the same 640×480 scenes as the local batch benchmark

SUMMARY = re.compile(r"(\d+) done, (\d+) skipped .*? (\d+) failed of (\d+) images in ([\d.]+) s \(([\d.]+) images/s")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_batch(inputs: Path, out: Path, model: str, batch_size: int, extra: list[str], env: dict) -> dict:
    """One ``attnvis batch`` command: its summary's numbers and its wall time."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "attnvis", "batch", str(inputs), "--output", str(out), "--model", model,
           "--batch-size", str(batch_size), "--device", "cpu", "--no-progress", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    match = SUMMARY.search(proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    done, _, failed, total, seconds, rate = match.groups()
    return {"done": int(done), "failed": int(failed), "engine_s": float(seconds), "images_per_s": float(rate),
            "wall_s": round(wall, 2)}


def compare_outputs(a: Path, b: Path) -> dict:
    """Files of two output trees (manifests aside: they carry times): same names, same bytes, same pixels.

    Pixels are compared apart because a PNG's deflate stream may differ for
    identical pixels (the encoder's choice, not the engine's).
    """
    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and p.name != "manifest.jsonl"}

    fa, fb = files(a), files(b)
    differ = [name for name in fa if fa[name] != fb.get(name)]
    same_pixels = [name for name in differ
                   if name.endswith(".png") and name in fb and _pixels(fa[name]) == _pixels(fb[name])]
    return {"files": len(fa), "same_names": sorted(fa) == sorted(fb), "byte_identical": len(fa) - len(differ),
            "differ_only_in_png_encoding": len(same_pixels), "differ_in_content": len(differ) - len(same_pixels)}


def _pixels(data: bytes) -> bytes:
    import numpy as np

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).tobytes()


class Head:
    """A one-node Ray cluster (``ray start --head --block`` in its own session), killed by session at the end."""

    def __init__(self, num_cpus: int, env: dict):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.tmp = tempfile.mkdtemp(prefix="attnvis-ray-", dir="/tmp")  # Ray's socket paths: ≤ 107 bytes
        self.log = Path(self.tmp) / "head.log"
        ray = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        self.proc = subprocess.Popen(
            [ray, "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.tmp}", "--block"],
            env=env, start_new_session=True, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        while b"Ray runtime started" not in self.log.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start failed:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        import signal

        for _ in range(300):
            members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _live_in_session(int(p), self.proc.pid)]
            if not members:
                break
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        self.proc.poll()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _live_in_session(pid: int, sid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # state ppid pgrp session ...
    except OSError:
        return False
    return fields[0] != b"Z" and int(fields[3]) == sid


def stage_rates(paths: list[Path], model: str, batch_size: int, work: Path) -> dict:
    """Images/s of one decode task, one CPU inference actor and one render task (this thread, no Ray)."""
    from attnvis.visualize import VisualizeOptions
    from attnvis.batch.inputs import Item
    from attnvis.batch.stages import decode_item, infer, make_plan, render_item
    from attnvis.runtime import open_model

    session = open_model(model, device="cpu", threads=1)  # what an actor opens on a CPU node
    plan = make_plan(session.metadata, VisualizeOptions(), model)
    items = [Item(str(p), f"{p.parent.name}/{p.name}") for p in paths]
    first = decode_item(items[0], plan, 10**9)  # warm-up: numba kernels loaded from the cache, ORT arena
    render_item(items[0], first, *_infer_one(session, items[0], plan, batch_size), plan, work)
    start = time.perf_counter()
    decoded = [decode_item(item, plan, 10**9) for item in items]
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    maps, predictions = [], []
    for i in range(0, len(decoded), batch_size):
        m, p, _ = infer(session, [d.tensor for d in decoded[i:i + batch_size]], batch_size)
        maps += m
        predictions += p
    infer_s = time.perf_counter() - start
    start = time.perf_counter()
    for item, d, attn, prediction in zip(items, decoded, maps, predictions):
        render_item(item, d, attn, prediction, plan, work)
    render_s = time.perf_counter() - start
    n = len(items)
    return {"images": n, "decode_per_s": round(n / decode_s, 1), "infer_per_s": round(n / infer_s, 1),
            "render_write_per_s": round(n / render_s, 1)}


def _infer_one(session, item, plan, batch_size: int):
    from attnvis.batch.stages import decode_item, infer

    maps, predictions, _ = infer(session, [decode_item(item, plan, 10**9).tensor], batch_size)
    return maps[0], predictions[0]


def node_estimate(rates: dict, cpus: int) -> float:
    """Images/s one CPU node sustains: up to ``cpus // 4`` inference actors (the engine's bound), the rest rendering."""
    actors = max(1, cpus // 4)
    per_image_s = 1 / rates["decode_per_s"] + 1 / rates["render_write_per_s"]
    return round(min(actors * rates["infer_per_s"], max(1, cpus - actors) / per_image_s), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--address", default=None, help="a running Ray cluster (default: start a one-node head here)")
    parser.add_argument("--work", default=None, help="folder for images and outputs (default: a temporary one)")
    parser.add_argument("--json", default="benchmarks/results/ray.json")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="attnvis-bench-ray-"))
    paths = make_images(work / "images", args.images)
    warm = work / "warm"
    for p in paths[:8]:
        (warm / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, warm / p.parent.name / p.name)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
    result = {"machine": {"cores": cores(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
              "images": args.images,
              "model": args.model, "batch_size": args.batch_size}
    result["stages_1_thread"] = rates = stage_rates(paths[:48], args.model, args.batch_size, work / "stages")
    print("per stage (one thread):", rates, flush=True)

    run_batch(warm, work / "out-warm", args.model, args.batch_size, [], env)
    result["local"] = run_batch(work / "images", work / "out-local", args.model, args.batch_size, [], env)
    print("local:", result["local"], flush=True)
    head = None if args.address else Head(cores(), env)
    try:
        ray_args = ["--engine", "ray", "--address", args.address or head.address]
        run_batch(warm, work / "out-warm-ray", args.model, args.batch_size, ray_args, env)
        result["ray"] = run_batch(work / "images", work / "out-ray", args.model, args.batch_size, ray_args, env)
        print("ray:", result["ray"], flush=True)
    finally:
        if head is not None:
            head.stop()
    result["ray_over_local"] = round(result["ray"]["images_per_s"] / result["local"]["images_per_s"], 2)
    result["outputs_ray_vs_local"] = compare_outputs(work / "out-local", work / "out-ray")
    result["node_estimate_per_s"] = {f"{c}_cpus": node_estimate(rates, c) for c in (2, 8, 32)}
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]  # other load on the machine skews both engines
    print(json.dumps(result, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
