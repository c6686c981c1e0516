"""``attnvis batch``: folders, globs or lists of images, resumable, never stopped by a bad file."""

from __future__ import annotations

import argparse

from attnvis.batch.decode import DEFAULT_MAX_PIXELS
from attnvis.batch.run import ENGINES, BatchConfig, run_batch
from attnvis.cli._args import add_model_args, add_render_args, render_options
from attnvis.errors import InputError


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="render attention for many images: folders, globs or lists, resumable")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="folder (recursive), glob (quote it), text file with one path per line, or image file")
    p.add_argument("--output", default=BatchConfig.output, help="output folder (one subfolder per image)")
    add_model_args(p)
    add_render_args(p)
    for action in p._actions:  # same flag as visualize, different default here (see BatchConfig)
        if action.dest == "threads":
            action.help = "ONNX Runtime intra-op threads (default: 1 on the CPU, the decode/render threads use the cores)"
    p.add_argument("--batch-size", type=int, default=BatchConfig.batch_size, help="images per inference call")
    p.add_argument("--workers", type=int, default=None, help="decode/render threads (default: the cores available)")
    p.add_argument("--resume", action="store_true", help="skip images whose outputs are complete in the manifest")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse larger images (checked on the header, before decoding)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--no-gallery", dest="gallery", action="store_false", help="do not write index.html")
    p.add_argument("--engine", default="local", choices=ENGINES, help="where the stages run")
    p.add_argument("--address", default=None,
                   help="--engine ray: the cluster, auto or HOST:PORT (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-gpus-per-worker", type=float, default=BatchConfig.num_gpus_per_worker,
                   help="--engine ray: GPUs per inference actor (0: CPU actors)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    """Map parsed flags to a :class:`BatchConfig` (each flag is the field of the same name)."""
    if getattr(args, "infos_path", None):
        raise InputError("--infos_path: batch captioning (AoANet) is not supported yet; use 'attnvis visualize' per image")
    return BatchConfig(inputs=args.inputs, output=args.output, model=args.model, weights=args.weights,
                       device=args.device, backend=args.backend, threads=args.threads, options=render_options(args),
                       batch_size=args.batch_size, workers=args.workers, resume=args.resume,
                       max_pixels=args.max_pixels, progress=args.progress, engine=args.engine, gallery=args.gallery,
                       address=args.address, num_gpus_per_worker=args.num_gpus_per_worker)


def run(args: argparse.Namespace) -> int:
    """Run, print the summary, return the exit code (0, or 3 when some images failed)."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # bad files are reported once, in the manifest
    summary = run_batch(config_from_args(args))
    print(summary.text())
    return summary.exit_code
