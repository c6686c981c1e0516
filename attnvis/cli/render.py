"""``attnvis render OUT --output DIR``: the per-layer files of a batch's images, from its map store."""

from __future__ import annotations

import argparse

from attnvis.cli._args import add_explain_args, add_render_args, render_options


def add_parser(sub) -> None:
    p = sub.add_parser("render", help="render the files of a batch run with --save maps, from its map store")
    p.add_argument("store", metavar="OUT", help="the output folder of 'attnvis batch --save maps' (holds maps/)")
    p.add_argument("--output", required=True, help="where the files go (one subfolder per image, as attnvis batch)")
    p.add_argument("--image", action="append", dest="images", default=None, metavar="KEY",
                   help="only this image (its key in the manifest, e.g. part0/cat.jpg); repeatable")
    p.add_argument("--model", default=None,
                   help="check that the store holds this model's maps (an error names both models if not)")
    p.add_argument("--workers", type=int, default=None, help="render threads (default: the cores available)")
    add_render_args(p)
    add_explain_args(p, target=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Render, print what was done, return 0, or 3 when some sources could not be read."""
    from attnvis.batch.render_store import render_store
    from attnvis.errors import InputError

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers} must be at least 1")
    summary = render_store(args.store, args.output, render_options(args), keys=args.images, model=args.model,
                           workers=args.workers, method=args.method)
    print(summary.text())
    return summary.exit_code
