"""``attnvis demo``: the embedded model on its sample image (or the embedded captioner)."""

from __future__ import annotations

import argparse

from attnvis.cli._args import add_explain_args, caption_backend
from attnvis.runtime.device import DEVICES


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="render the embedded sample with the embedded model")
    p.add_argument("--output", default="attn_vis", help="output folder")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA if usable, else CPU; cuda: fail if not usable")
    p.add_argument("--caption", action="store_true", help="the embedded AoANet captioner instead")
    add_explain_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.caption and (args.method or args.target):
        from attnvis.errors import InputError

        raise InputError("--method explains image classifiers; --caption runs the captioner (explaining its words is "
                         "not supported): drop one of them")
    if args.caption:
        from attnvis.captioning.figures import demo_caption

        report = demo_caption(args.output, device=args.device, backend=caption_backend(getattr(args, "backend", "torch")))
        print(f"caption: {report.sentence!r}; wrote {len(report.files)} files to {args.output}")
        return 0
    from attnvis.models import sample_image_path
    from attnvis.visualize import visualize_attention_on_image

    result = visualize_attention_on_image(None, sample_image_path(), args.output, device=args.device, method=args.method,
                                          target=args.target)
    if result.verdict is not None:
        from attnvis.relevance import verdict_line

        print(f"{verdict_line(result.verdict, result.labels)}; wrote {len(result.files)} files to {args.output} "
              f"[{result.provider}]")
        return 0
    print(f"predicted {result.prediction}; wrote {len(result.files)} files to {args.output} [{result.provider}]")
    return 0
