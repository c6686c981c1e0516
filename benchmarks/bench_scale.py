"""``attnvis batch`` at real-model scale on the CPU: threads chosen by measured cost, ``--reduce cls`` against full maps.

    python benchmarks/bench_scale.py --json benchmarks/results/cpu-scale.json
    python benchmarks/bench_scale.py --timm vit_base_patch16_224 --sizes 224 --no-default --json benchmarks/results/cpu-scale-vit-b.json
    python benchmarks/bench_scale.py --only-default --default-counts 200,1000 --json benchmarks/results/cpu-scale-default.json
    python benchmarks/bench_scale.py --short 16 --rounds 5 --json benchmarks/results/cpu-scale-short.json

The model is a DINOv2-S/14 with registers (timm ``vit_small_patch14_reg4_dinov2``,
seeded random weights saved to a local file and passed with ``--weights``),
exported at 518 px (N = 4 registers + CLS + 37² patches = 1,374 tokens) with
``--reduce none`` and ``--reduce cls``, and at 224 and 336 px for the table
against N. Every variant is an ``attnvis batch`` subprocess over 640×480
photos at ``--batch-size 8``: default threads (settled from the first batch),
``--threads 1`` and ``--threads 2``; the embedded default model the same way.

Rates are marginal: each variant runs over ``--counts`` images (16 and 48),
and images/s = (48 − 16) / (seconds of the 48 run − seconds of the 16 run),
from the runs' own summaries (processing time, without setup), so the first
batch (timed at one ORT thread) and the one-time costs cancel out. The
variants alternate (all at 16, then all at 48), for ``--rounds`` rounds;
each number is the median over the rounds (every round is in the JSON).
Peak RSS is sampled over the process every 20 ms; per round the larger of
its two runs.

``--short N`` is the short-run mode: every variant over N images only (16:
two batches of 8), timed from outside (the whole process, start-up and the
first batch included: what a user waits for), default threads against each
``--manual`` count, the variants interleaved round by round; images/s =
N / seconds, medians over the rounds. Full-map runs
get ``--max-memory 20G`` so they keep batch 8 (the comparison the issue asks
for); one more run shows the batch a smaller budget chooses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import PeakRSS, _link, make_images  # noqa: E402

TIMM = "vit_small_patch14_reg4_dinov2"
SHORT = {TIMM: "dinov2s"}  # export file names
FULL_BATCH = ["--max-memory", "20G"]  # keep batch 8 for the full maps
CLI = str(Path(sys.executable).with_name("attnvis"))  # the console script beside this Python


def make_weights(path: Path, name: str) -> Path:
    """Seeded random weights of timm's ``name`` architecture, as a local safetensors file."""
    if not path.exists():
        import timm
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def export(work: Path, name: str, weights: Path, size: int, reduce: str) -> Path:
    """``attnvis export`` of timm's ``name`` at ``size`` px with ``--reduce``; cached in ``work``."""
    out = work / f"{SHORT.get(name, name)}_{size}_{reduce}.onnx"
    if not out.exists():
        cmd = ["attnvis", "export", "--model", f"timm:{name}", "--weights", str(weights), "--image-size",
               f"{size}x{size}", "--reduce", reduce, "--output", str(out)]
        subprocess.run([CLI, *cmd[1:]], check=True, stdout=subprocess.DEVNULL)
    return out


def batch(inputs: Path, out: Path, model: str, extra: list[str]) -> dict:
    """One ``attnvis batch`` subprocess: its summary's numbers, its notes and the peak RSS."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    cmd = [CLI, "batch", str(inputs), "--output", str(out), "--model", model,
           "--device", "cpu", "--no-progress", "--batch-size", "8", *extra]
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    sampler = PeakRSS(proc.pid)
    sampler.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - began
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"attnvis batch failed ({proc.returncode}):\n{stdout}")
    lines = stdout.splitlines()
    first = lines[0]  # "N done, ... in S s (R images/s, C cores busy; setup T s)"
    return {"seconds": float(first.split(" in ")[1].split(" s (")[0]), "wall_s": round(wall, 3),
            "cores_busy": float(first.split(" cores busy")[0].rsplit(", ", 1)[1]),
            "peak_rss_mb": round(sampler.peak / 2**20), "notes": [line for line in lines[1:] if line.startswith(("threads:", "batch:"))],
            "command": " ".join(["attnvis", *cmd[1:]])}


def summarize(rounds: list[dict], counts: tuple[int, int]) -> dict:
    """Per round the marginal rate and the peak RSS of its two runs; their medians over the rounds."""
    rates, peaks = [], []
    for runs in rounds:
        small, large = runs[counts[0]], runs[counts[1]]
        rates.append(round((counts[1] - counts[0]) / max(large["seconds"] - small["seconds"], 1e-9), 3))
        peaks.append(max(small["peak_rss_mb"], large["peak_rss_mb"]))
    return {"images_per_s": statistics.median(rates), "peak_rss_mb": statistics.median(peaks), "rates": rates,
            "peaks_mb": peaks, "cores_busy": rounds[-1][counts[1]]["cores_busy"], "notes": rounds[-1][counts[1]]["notes"],
            "runs": [{str(k): v for k, v in runs.items()} for runs in rounds]}


def short_runs(args, work: Path, models: dict, big: int) -> dict:
    """``--short N``: whole-process seconds of N-image runs, default threads against ``--manual`` counts."""
    n, manual = args.short, [f"t{t}" for t in args.manual.split(",")]
    photos = make_images(work / "photos", n)
    _link(photos[:n], work / "photos", work / f"in_{n}")
    variants = {f"{reduce}-{big}-{threads}": (models[big, reduce], (FULL_BATCH if reduce == "none" else [])
                                              + ([] if threads == "auto" else ["--threads", threads[1:]]))
                for reduce in args.reduces.split(",") for threads in ("auto", *manual)}
    batch(work / f"in_{n}", work / "warmup", "default", [])  # numba's cache, the photos in the page cache
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    started = time.time()
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))  # neither variant always runs first
        for name in order:
            model, flags = variants[name]
            runs[name].append(batch(work / f"in_{n}", work / "out", model, flags))
            print(r, name, runs[name][-1], flush=True)
    result = {"mode": f"short: {n} images per run, whole-process seconds", "rounds": args.rounds,
              "minutes": round((time.time() - started) / 60, 1), "load_average_end": os.getloadavg(), "variants": {}}
    for name, done in runs.items():
        rates = [round(n / run["wall_s"], 3) for run in done]
        result["variants"][name] = {"images_per_s": statistics.median(rates), "rates": rates,
                                    "wall_s": [run["wall_s"] for run in done], "notes": done[-1]["notes"], "runs": done}
    v = result["variants"]
    result["checks"] = {}
    for reduce in args.reduces.split(","):
        best = max(v[f"{reduce}-{big}-{t}"]["images_per_s"] for t in manual)
        result["checks"][f"{reduce}-{big}_auto_over_best_manual"] = round(v[f"{reduce}-{big}-auto"]["images_per_s"] / best, 3)
        per_round = [v[f"{reduce}-{big}-auto"]["rates"][r] / max(v[f"{reduce}-{big}-{t}"]["rates"][r] for t in manual)
                     for r in range(args.rounds)]
        result["checks"][f"{reduce}-{big}_median_round_ratio"] = round(statistics.median(per_round), 3)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="folder for weights, exports, photos, outputs (default: temporary)")
    parser.add_argument("--counts", default="16,48", help="the two image counts of the marginal rate")
    parser.add_argument("--default-counts", default="48,192", help="the same for the (fast) default model")
    parser.add_argument("--sizes", default="224,336,518", help="image sizes of the table against N")
    parser.add_argument("--timm", default=TIMM, help="the timm architecture (random weights)")
    parser.add_argument("--no-default", action="store_true", help="skip the default model's variants")
    parser.add_argument("--only-default", action="store_true", help="only the default model's variants")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every variant; medians are reported")
    parser.add_argument("--json", default="bench_scale.json")
    parser.add_argument("--short", type=int, default=0, metavar="N",
                        help="short-run mode: N-image runs timed from outside, at the largest --sizes only")
    parser.add_argument("--manual", default="1,2", help="--short: the --threads counts default threads are compared with")
    parser.add_argument("--reduces", default="none,cls", help="--short: the exports compared")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="attnvis-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    counts = tuple(int(n) for n in args.counts.split(","))
    default_counts = tuple(int(n) for n in args.default_counts.split(","))
    sizes = [] if args.only_default else [int(s) for s in args.sizes.split(",")]
    if args.short:
        sizes = [max(sizes)]  # the short-run comparison is at the largest size only

    models = {}
    if sizes:
        weights = make_weights(work / f"{SHORT.get(args.timm, args.timm)}.safetensors", args.timm)
        models = {(size, reduce): str(export(work, args.timm, weights, size, reduce))
                  for size in sizes for reduce in ("none", "cls")}
    if args.short:
        big = max(sizes)
        result = short_runs(args, work, models, big)
        result.update(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                      model=f"timm {args.timm}, random weights (--weights), {big} px", photos="640x480 JPEG", batch_size=8)
        print(json.dumps(result["checks"], indent=2))
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return
    photos = make_images(work / "photos", max(*counts, *default_counts))
    for n in {*counts, *default_counts}:
        _link(photos[:n], work / "photos", work / f"in_{n}")

    big = max(sizes, default=0)
    variants = {  # name: (model, flags, counts)
        **{f"{reduce}-{big}-{threads}": (models[big, reduce], (FULL_BATCH if reduce == "none" else [])
                                         + ([] if threads == "auto" else ["--threads", threads[1:]]), counts)
           for reduce in ("none", "cls") for threads in ("auto", "t1", "t2") if sizes},
        **{f"default-{threads}": ("default", [] if threads == "auto" else ["--threads", threads[1:]], default_counts)
           for threads in ("auto", "t1", "t2") if not args.no_default},
        **{f"{reduce}-{size}-auto": (models[size, reduce], FULL_BATCH if reduce == "none" else [], counts)
           for size in sizes if size != big for reduce in ("none", "cls")},
    }
    batch(work / f"in_{default_counts[0]}", work / "warmup", "default", [])  # numba's cache, page cache
    runs: dict[str, list[dict]] = {name: [{} for _ in range(args.rounds)] for name in variants}
    started = time.time()
    for r in range(args.rounds):
        for step in (0, 1):  # every variant at the small count, then every variant at the large one
            for name, (model, flags, n) in variants.items():
                runs[name][r][n[step]] = batch(work / f"in_{n[step]}", work / "out", model, flags)
                print(r, name, n[step], runs[name][r][n[step]], flush=True)
    budget = batch(work / f"in_{counts[0]}", work / "out", models[big, "none"], ["--max-memory", "6G"]) if sizes else None
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "model": f"timm {args.timm}, random weights (--weights), {big} px", "photos": "640x480 JPEG", "batch_size": 8,
              "counts": counts, "default_counts": default_counts, "rounds": args.rounds,
              "minutes": round((time.time() - started) / 60, 1),
              "load_average_end": os.getloadavg(),
              "variants": {name: summarize(r, variants[name][2]) for name, r in runs.items()},
              "none_with_6G_budget": budget}
    v = result["variants"]
    best = {kind: max(v[f"{kind}-t1"]["images_per_s"], v[f"{kind}-t2"]["images_per_s"])
            for kind in ((f"none-{big}", f"cls-{big}") if sizes else ()) + (() if args.no_default else ("default",))}
    result["checks"] = {f"{kind}_auto_over_best_manual": round(v[f"{kind}-auto"]["images_per_s"] / best[kind], 3)
                        for kind in best}
    if sizes:
        result["checks"]["cls_rss_over_none"] = round(v[f"cls-{big}-auto"]["peak_rss_mb"] / v[f"none-{big}-auto"]["peak_rss_mb"], 3)
        result["checks"]["cls_rate_over_none"] = round(v[f"cls-{big}-auto"]["images_per_s"] / v[f"none-{big}-auto"]["images_per_s"], 3)
    result["by_n"] = [{"size": size, "reduce": reduce, "images_per_s": v[f"{reduce}-{size}-auto"]["images_per_s"],
                       "peak_rss_mb": v[f"{reduce}-{size}-auto"]["peak_rss_mb"]}
                      for size in sizes for reduce in ("none", "cls")]
    print(json.dumps(result["checks"], indent=2))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
