"""``attnvis batch``: folders, globs or lists of images, resumable, never stopped by a bad file."""

from __future__ import annotations

import argparse
import shlex
import sys

from attnvis.batch.cores import BATCH_SIZES
from attnvis.batch.run import ENGINES, BatchConfig, BatchInterrupted, run_batch
from attnvis.batch.stages import SAVE_MODES
from attnvis.cli._args import (add_explain_args, add_max_pixels, add_model_args, add_prompt_arg, add_render_args,
                               check_prompt, render_options, vlm_backend)
from attnvis.errors import InputError


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="render attention for many images: folders, globs or lists, resumable")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="folder (recursive), glob (quote it), text file with one path per line, or image file")
    p.add_argument("--output", default=BatchConfig.output, help="output folder (one subfolder per image)")
    add_model_args(p)
    add_render_args(p)
    add_explain_args(p)
    for action in p._actions:  # same flag as visualize, different default here (see BatchConfig)
        if action.dest == "threads":
            action.help = ("ONNX Runtime intra-op threads (default on the CPU: settled from the first batch's costs, "
                           "1 for a render-bound model up to every core for an inference-bound one)")
    p.add_argument("--batch-size", type=int, default=BatchConfig.batch_size,
                   help=f"images per inference call (default: {BATCH_SIZES['cpu']} when the model runs on the CPU, "
                        f"{BATCH_SIZES['cuda']} on CUDA)")
    p.add_argument("--workers", type=int, default=None, help="decode/render threads (default: the cores available)")
    p.add_argument("--max-memory", type=_size, default=BatchConfig.max_memory, metavar="SIZE",
                   help="memory for the maps in flight, e.g. 8G: a smaller inference batch where full maps would "
                        "not fit (default: 60%% of the memory available at the start)")
    p.add_argument("--resume", action="store_true", help="skip images whose outputs are complete in the manifest")
    add_max_pixels(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--no-gallery", dest="gallery", action="store_false", help="do not write index.html")
    p.add_argument("--save", default=BatchConfig.save, choices=SAVE_MODES,
                   help="images: every layer's PNGs; maps: only the maps, in OUTPUT/maps/*.parquet (render later with "
                        "'attnvis render', or in the gallery); both")
    p.add_argument("--store-heads", action="store_true", help="--save maps|both: store every head's map too")
    p.add_argument("--verbose", action="store_true", help="--engine ray: show Ray's own logs and its workers' stderr")
    p.add_argument("--engine", default="local", choices=ENGINES, help="where the stages run")
    p.add_argument("--address", default=None,
                   help="--engine ray: the cluster, auto or HOST:PORT (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-gpus-per-worker", type=float, default=BatchConfig.num_gpus_per_worker,
                   help="--engine ray: GPUs per inference actor (0: CPU actors)")
    p.add_argument("--att-feats-dir", default=None, help="AoANet: folder of {id}.npz region features ('feat')")
    p.add_argument("--fc-feats-dir", default=None, help="AoANet: folder of {id}.npy fc features")
    p.add_argument("--boxes-dir", default=None, help="AoANet: folder of {id}.npy region boxes (xyxy pixels)")
    p.add_argument("--backbone-weights", default=None, help="AoANet: local torchvision resnet101 weights (grid features)")
    p.add_argument("--beam-size", type=int, default=1, help="captioners: 1 for greedy search")
    add_prompt_arg(p)
    p.set_defaults(func=run)


def _size(text: str) -> int:
    """``--max-memory`` (an argparse ``type``): ``8G``, ``512M`` or bytes."""
    from attnvis.batch.cores import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    """Map parsed flags to a :class:`BatchConfig` (each flag is the field of the same name)."""
    from attnvis.batch.caption import CaptionOptions
    from attnvis.relevance import parse_methods

    caption = CaptionOptions(infos_path=args.infos_path, att_feats_dir=args.att_feats_dir,
                             fc_feats_dir=args.fc_feats_dir, boxes_dir=args.boxes_dir,
                             backbone_weights=args.backbone_weights, beam_size=args.beam_size, prompt=args.prompt)
    check_prompt(args)
    if caption.beam_size < 1:
        raise InputError(f"--beam-size must be a positive integer (1: greedy search), got {caption.beam_size}")
    return BatchConfig(caption=caption, inputs=args.inputs, output=args.output, model=args.model, weights=args.weights,
                       random_weights=args.random_weights,
                       device=args.device, backend=vlm_backend(args.model, args.backend), threads=args.threads,
                       max_memory=args.max_memory,
                       options=render_options(args),
                       batch_size=args.batch_size, workers=args.workers, resume=args.resume,
                       max_pixels=args.max_pixels, progress=args.progress, engine=args.engine, gallery=args.gallery,
                       address=args.address, num_gpus_per_worker=args.num_gpus_per_worker,
                       verbose=args.verbose, save=args.save, store_heads=args.store_heads,
                       method=parse_methods(args.method), target=args.target)


def run(args: argparse.Namespace) -> int:
    """Run, print the summary, return the exit code (0, or 3 when some images failed)."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # bad files are reported once, in the manifest
    try:
        summary = run_batch(config_from_args(args))
    except BatchInterrupted as stop:
        print(stop.summary.text())
        print(f"interrupted: every finished image is in the manifest; to go on, run:\n  {resume_command(args.argv)}",
              file=sys.stderr)
        return 130
    print(summary.text())
    return summary.exit_code


def resume_command(argv: list[str]) -> str:
    """The command line ``argv`` (after ``attnvis``) with ``--resume`` (added once), quoted for a POSIX shell."""
    args = list(argv)
    return shlex.join(["attnvis", *args, *([] if "--resume" in args else ["--resume"])])
