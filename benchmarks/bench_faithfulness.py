"""Faithfulness metrics: each against the forward passes it needs, ROAD against grad-cam, evaluate's images/s.

On the embedded default model (ORT, CPU unless --device cuda) and its held-out scenes, with the
last layer's attention as the maps:

- every perturbation metric's time against the same number of forward passes alone, at the same
  batch size (goal: ratio <= 1.3);
- ``road_combined`` against pytorch-grad-cam's ``ROADCombined`` (same percentiles, same maps, the
  same model in PyTorch), seconds per image (goal: >= 20x); skipped with a note where grad-cam is
  not installed;
- ``attnvis evaluate`` (library call) over the scenes for the methods and metrics given: images/s.

numba's first call (compilation) is run before timing and reported apart. Prints a table and writes JSON.

Usage:
    python benchmarks/bench_faithfulness.py --images 16 --road-images 4 --json benchmarks/results/faithfulness.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def scenes(count: int):
    from attnvis.models.tiny import make_scene
    from attnvis.runtime import open_model, preprocess

    session = open_model("default", device="cpu")
    images = [make_scene(1_000_100 + i)[0] for i in range(count)]
    return preprocess(images, session.metadata.preprocess)


def attention_maps(session, x):
    from attnvis.render.grid import attention_grid

    maps = session.run(x)
    return np.stack([attention_grid(maps[-1][b], session.metadata.tokens) for b in range(len(x))])


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def metric_rows(clf, x, maps, target, repeats):
    from attnvis import faithfulness as F

    cases = {
        "deletion": (lambda: F.deletion(clf, x, maps), -(-96 * 96 // 224) + 1),
        "insertion": (lambda: F.insertion(clf, x, maps), -(-96 * 96 // 224) + 1),
        "perturbation": (lambda: F.perturbation(clf, x, maps, target), 10),
        "road_combined": (lambda: F.road_combined(clf, x, maps, target), 8),
    }
    rows = []
    for name, (call, copies) in cases.items():
        call()  # warm-up (numba compiles ROAD's solver on its first call)
        alone_x = np.repeat(x, copies, axis=0)
        forward = timed(lambda: clf.logits(alone_x), repeats) + timed(lambda: clf.logits(x), repeats)
        metric = timed(call, repeats)
        rows.append({"metric": name, "images": len(x), "copies_per_image": copies, "metric_s": metric,
                     "forward_s": forward, "ratio": metric / forward})
    return rows


def gradcam_road(x, maps, target, percentiles):
    try:
        import torch
        from pytorch_grad_cam.metrics.road import ROADCombined
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    except ImportError as err:
        return None, f"grad-cam not installed ({err.name}): ROAD speed-up not measured"
    from attnvis.models.tiny import load_default_model

    net = load_default_model()
    metric = ROADCombined(percentiles=list(percentiles))
    targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in target]
    start = time.perf_counter()
    with torch.no_grad():
        metric(torch.from_numpy(x), maps, targets, net)
    return time.perf_counter() - start, None


def evaluate_rate(count: int, methods: str, metrics: str, device: str) -> dict:
    sys.path.insert(0, str(ROOT / "tools"))
    from make_scenes import write_scenes

    from attnvis.faithfulness.evaluate import EvaluateConfig, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        boxes = write_scenes(Path(tmp) / "scenes", count)
        config = EvaluateConfig(inputs=[str(Path(tmp) / "scenes")], output=str(Path(tmp) / "eval"), methods=tuple(methods.split(",")),
                                metrics=tuple(metrics.split(",")), boxes=str(boxes), device=device, progress=False)
        summary = evaluate(config)
        table = (Path(tmp) / "eval" / "summary.md").read_text()
    return {"images": count, "methods": methods, "metrics": metrics, "seconds": summary["seconds"],
            "images_per_second": summary["images_per_second"], "table": table, "summary": summary["methods"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images for the metric-vs-forward ratios")
    parser.add_argument("--road-images", type=int, default=4, help="images for ROAD against grad-cam")
    parser.add_argument("--evaluate-images", type=int, default=0, help="scenes for attnvis evaluate (0: skip)")
    parser.add_argument("--methods", default="attention,rollout,gae,grad-rollout")
    parser.add_argument("--metrics", default="deletion,insertion,perturbation,road,pointing-game,relevance-mass,relevance-rank")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default="bench_faithfulness.json")
    args = parser.parse_args()

    from attnvis.faithfulness import Classifier, road_combined

    clf = Classifier("default", device=args.device)
    x = scenes(max(args.images, args.road_images))
    maps = attention_maps(clf.session, x)
    target = clf.logits(x).argmax(1)
    result = {"device": clf.session.device, "metrics": metric_rows(clf, x[:args.images], maps[:args.images], target[:args.images],
                                                                   args.repeats)}
    for row in result["metrics"]:
        print(f"{row['metric']:>14}: {row['metric_s']:.3f} s vs forward passes alone {row['forward_s']:.3f} s "
              f"-> {row['ratio']:.2f}x ({row['images']} images, {row['copies_per_image']} copies each)")
    n, percentiles = args.road_images, (20, 40, 60, 80)
    ours = timed(lambda: road_combined(clf, x[:n], maps[:n], target[:n], percentiles=percentiles), args.repeats) / n
    theirs, note = gradcam_road(x[:n], np.stack([__import__("cv2").resize(m, (96, 96)) for m in maps[:n]]), target[:n], percentiles)
    result["road"] = {"images": n, "percentiles": percentiles, "ours_s_per_image": ours,
                      "gradcam_s_per_image": None if theirs is None else theirs / n,
                      "speedup": None if theirs is None else theirs / n / ours, "note": note}
    print(f"ROADCombined: ours {ours:.3f} s/image" + (f", grad-cam {theirs / n:.3f} s/image -> {theirs / n / ours:.1f}x"
                                                      if theirs else f" ({note})"))
    if args.evaluate_images:
        result["evaluate"] = evaluate_rate(args.evaluate_images, args.methods, args.metrics, args.device)
        print(f"evaluate: {result['evaluate']['images_per_second']} images/s\n{result['evaluate']['table']}")
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
