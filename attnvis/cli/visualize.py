"""``attnvis visualize``: one image, every layer (or a captioner's words)."""

from __future__ import annotations

import argparse
from pathlib import Path

from attnvis.cli._args import (add_caption_args, add_explain_args, add_figure_args, add_max_pixels, add_model_args,
                               add_render_args, caption_backend, check_prompt, render_options, vlm_backend)


def add_parser(sub) -> None:
    p = sub.add_parser("visualize", help="render every layer's attention over one image")
    p.add_argument("--image", required=True, help="the image to explain")
    p.add_argument("--output", default="attn_vis", help="output folder")
    add_model_args(p)
    add_render_args(p)
    add_figure_args(p)
    add_explain_args(p)
    add_max_pixels(p)
    add_caption_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnvis.captioning.kinds import DEFAULT_CAPTIONER

    check_prompt(args)
    from attnvis.captioning.kinds import is_captioner_dir

    captioner = bool(args.infos_path) or args.model == DEFAULT_CAPTIONER or bool(args.model and is_captioner_dir(args.model))
    if captioner and (args.method or args.target):
        from attnvis.errors import InputError

        raise InputError(f"--method explains image classifiers; {args.model} is a captioner (explaining its words is "
                         "not supported): drop --method/--target")
    if args.infos_path or args.model == DEFAULT_CAPTIONER:
        return run_caption(args)
    if captioner:
        return run_caption(args, hf=True)
    from attnvis.visualize import visualize_attention_on_image

    opts = render_options(args)
    result = visualize_attention_on_image(
        args.model, args.image, args.output, layer=opts.layer, head=opts.head, avg_heads=opts.avg_heads,
        save_raw=opts.save_raw, device=args.device, max_pixels=args.max_pixels, colormap=opts.colormap,
        alpha=opts.alpha, format=opts.format, backend=args.backend, weights=args.weights, threads=args.threads,
        random_weights=args.random_weights, rollout=args.rollout, discard_ratio=args.discard_ratio,
        head_fusion=args.head_fusion, contact_sheet=args.contact_sheet, gif=args.gif, method=args.method,
        target=args.target)
    if result.verdict is not None:
        from attnvis.relevance import verdict_line

        print(verdict_line(result.verdict, result.labels))
        print(f"wrote {len(result.files)} files to {args.output} [{result.provider}]")
        return 0
    said = f" (predicted: {result.prediction})" if result.prediction else ""
    layers = f"{len(result.layers)} layer{'' if len(result.layers) == 1 else 's'}"
    print(f"wrote {len(result.files)} files for {layers} to {args.output} [{result.provider}]{said}")
    return 0


def run_caption(args: argparse.Namespace, hf: bool = False) -> int:
    from attnvis.captioning.figures import CaptionVisOptions, visualize_caption, visualize_default_caption
    from attnvis.captioning.kinds import DEFAULT_CAPTIONER
    from attnvis.captioning.word_figures import visualize_hf_caption

    opts = CaptionVisOptions(
        output=Path(args.output), att_feats=args.att_feats, boxes=args.boxes, backbone_weights=args.backbone_weights,
        beam_size=args.beam_size, head=args.head, layer=args.layer, save_raw=args.save_raw, colormap=args.colormap,
        alpha=args.alpha, device=args.device, backend=caption_backend(vlm_backend(args.model, args.backend)),
        prompt=args.prompt)
    if hf:
        report = visualize_hf_caption(args.image, args.model, opts)
    elif args.model == DEFAULT_CAPTIONER:
        report = visualize_default_caption(args.image, opts)
    else:
        report = visualize_caption(args.image, args.model, args.infos_path, opts)
    print(f"caption: {report.sentence!r}; wrote {len(report.files)} files to {opts.output}")
    return 0
