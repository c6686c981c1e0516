"""``attnvis evaluate``: how far to trust each map, by perturbation and localisation metrics."""

from __future__ import annotations

import argparse

from attnvis.faithfulness.evaluate import DEFAULT_METHODS, DEFAULT_METRICS, LOCALISATION, EvaluateConfig


def add_parser(sub) -> None:
    from attnvis.faithfulness.metrics import METRICS
    from attnvis.runtime.device import DEVICES

    p = sub.add_parser("evaluate", help="score maps by faithfulness (deletion, insertion, perturbation, ROAD) "
                                        "and localisation (pointing game, relevance mass/rank)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image folders, globs, list files or files; or an 'attnvis batch --save maps' output folder")
    p.add_argument("--model", default=EvaluateConfig.model,
                   help="any model spec attnvis opens (default: the embedded model; for a store: the model the batch ran)")
    p.add_argument("--methods", type=_names, default=EvaluateConfig.methods,
                   help=f"maps to score, comma-separated (default: {','.join(DEFAULT_METHODS)}; for a store: those it holds); "
                        "attention, rollout, random, and the attnvis.explain methods (gae, grad-rollout, ...)")
    p.add_argument("--metrics", type=_names, default=EvaluateConfig.metrics,
                   help=f"comma-separated, from {','.join(METRICS)} (default: {','.join(DEFAULT_METRICS)}, "
                        f"plus {','.join(LOCALISATION)} with --boxes/--masks)")
    p.add_argument("--boxes", default=EvaluateConfig.boxes,
                   help='JSON {"image key or path": [[x0, y0, x1, y1], ...]} in the original image\'s pixels')
    p.add_argument("--masks", default=EvaluateConfig.masks, help="folder of binary mask images, one per input (same stem)")
    p.add_argument("--output", default=EvaluateConfig.output, help="folder for scores.parquet, summary.json/.md, curves.png")
    p.add_argument("--device", default=EvaluateConfig.device, choices=DEVICES, help="auto: CUDA if usable, else CPU")
    p.add_argument("--batch-size", type=int, default=EvaluateConfig.batch_size,
                   help="images per step (their masked copies go through the model together)")
    p.add_argument("--resume", action="store_true", help="keep the images already scored in --output")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def run(args: argparse.Namespace) -> int:
    from attnvis.faithfulness.evaluate import evaluate

    config = EvaluateConfig(inputs=args.inputs, output=args.output, model=args.model, methods=args.methods,
                            metrics=args.metrics, boxes=args.boxes, masks=args.masks, device=args.device,
                            batch_size=args.batch_size, resume=args.resume, progress=args.progress)
    summary = evaluate(config)
    return 3 if summary.get("failed") else 0
