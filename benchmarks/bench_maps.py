"""``attnvis batch --save maps`` against ``--save images``: marginal images/s, bytes per image, peak memory.

    python benchmarks/bench_maps.py                        # 200 → 800 JPEGs of 640×480, default model, 3 rounds
    python benchmarks/bench_maps.py --rss 1000,10000       # also peak RSS of --save maps for 1,000 and 10,000 images

Each round runs, alternating, ``--save images`` and ``--save maps`` on 200
and on 800 images (``attnvis batch`` as a subprocess, default settings,
``sync`` before each run). The marginal rate ``600 / (wall(800) - wall(200))``
cancels the process start, the model opening and the gallery's fixed cost;
the median round is reported, every round is in the JSON. The maps-only
folder of the 800-image run is measured with thumbnails, gallery and
manifest included (apparent bytes and disk blocks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import _link, make_images, run_batch  # noqa: E402 - the batch benchmark's images and runner


def run(inputs: Path, out: Path, model: str, save: str) -> dict:
    """One ``attnvis batch --save SAVE`` run after ``sync``: wall time, peak RSS, its summary line."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    result = run_batch(inputs, out, model, ["--save", save])
    return {key: result[key] for key in ("wall_s", "peak_rss_mb", "summary")}


def folder_size(root: Path) -> dict:
    """Apparent bytes and disk bytes (st_blocks) of every file under root."""
    apparent = disk = files = 0
    for path in root.rglob("*"):
        if path.is_file():
            st = path.stat()
            apparent, disk, files = apparent + st.st_size, disk + 512 * st.st_blocks, files + 1
    return {"files": files, "apparent_bytes": apparent, "disk_bytes": disk}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="default")
    parser.add_argument("--rss", default="", help="image counts for --save maps peak-RSS runs, e.g. 1000,10000")
    parser.add_argument("--work", default=None)
    parser.add_argument("--json", default="bench_maps.json")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="attnvis-bench-maps-"))
    counts = [int(n) for n in args.rss.split(",") if n]
    paths = make_images(work / "images", max([args.large, *counts]))
    for n in {args.small, args.large, *counts}:
        _link(paths[:n], work / "images", work / f"in_{n}")
    run(work / f"in_{args.small}", work / "warmup", args.model, "images")  # model cache, numba cache
    rounds = []
    for _ in range(args.rounds):
        walls = {}
        for save in ("images", "maps"):
            for n in (args.small, args.large):
                walls[(save, n)] = run(work / f"in_{n}", work / f"out_{save}_{n}", args.model, save)
        rate = {save: round((args.large - args.small) / (walls[(save, args.large)]["wall_s"] - walls[(save, args.small)]["wall_s"]), 1)
                for save in ("images", "maps")}
        rounds.append({"marginal_images_per_s": rate, "speedup": round(rate["maps"] / rate["images"], 2),
                       "runs": {f"{save}_{n}": result for (save, n), result in walls.items()}})
    middle = sorted(rounds, key=lambda r: r["speedup"])[len(rounds) // 2]
    size = folder_size(work / f"out_maps_{args.large}")
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "images": f"{args.small} -> {args.large} JPEGs 640x480", "median_round": middle,
              "speedups": [r["speedup"] for r in rounds], "rounds": rounds,
              "maps_folder": size | {"per_image_kib_apparent": round(size["apparent_bytes"] / args.large / 1024, 1),
                                     "per_image_kib_disk": round(size["disk_bytes"] / args.large / 1024, 1)},
              "images_folder_per_image_kib": round(folder_size(work / f"out_images_{args.large}")["apparent_bytes"] / args.large / 1024, 1)}
    for n in counts:
        result[f"maps_rss_{n}"] = run(work / f"in_{n}", work / f"rss_{n}", args.model, "maps")
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print("median speedup", statistics.median(result["speedups"]), file=sys.stderr)


if __name__ == "__main__":
    main()
