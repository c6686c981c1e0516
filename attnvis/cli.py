"""The ``attnvis`` console script: argument parsing only; the work is in the library.

Each flag maps to the library parameter of the same name, and its default
lives in the library's dataclass or signature, not here.
"""

from __future__ import annotations

import argparse
import os
import sys

from attnvis.errors import AttnvisError

# Defaults come from the library (one place each).
_VIS_DEFAULTS = {"colormap": "jet", "alpha": 0.5, "format": "png"}


def _render_choices() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from attnvis.render import COLORMAPS, FORMATS

    return COLORMAPS, FORMATS


def _add_model_args(p: argparse.ArgumentParser, *, onnx_ok: bool = True) -> None:
    from attnvis.runtime.loader import BACKENDS
    from attnvis.runtime.session import DEVICES

    what = "an .onnx made by attnvis, " if onnx_ok else ""
    p.add_argument("--model", default=None, help=f"{what}'default' (embedded tiny ViT; also when omitted), a Hugging Face "
                   "model directory, timm:NAME, torchvision:NAME, package.module:factory, or an AoANet model.pth with --infos_path")
    p.add_argument("--weights", default=None, help="local weights file for timm:NAME / torchvision:NAME (nothing is downloaded)")
    p.add_argument("--infos_path", default=None, help="AoANet infos.pkl (a pickle: only give files you trust)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA if usable, else CPU; cuda: fail if not usable")
    p.add_argument("--backend", default="ort", choices=BACKENDS, help="ONNX Runtime (default) or eager PyTorch")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")


def _add_render_args(p: argparse.ArgumentParser) -> None:
    colormaps, formats = _render_choices()
    p.add_argument("--layer", type=int, default=None, help="only this layer (default: all)")
    p.add_argument("--head", type=int, default=None, help="only this head (default: mean over heads)")
    p.add_argument("--no-avg-heads", dest="avg_heads", action="store_false", help="one map per head instead of their mean")
    p.add_argument("--save-raw", action="store_true", help="also write attn_raw_layer_{i}.npy, (1, heads, Q, K)")
    p.add_argument("--colormap", default=_VIS_DEFAULTS["colormap"], choices=colormaps)
    p.add_argument("--alpha", type=float, default=_VIS_DEFAULTS["alpha"], help="heatmap weight in the overlay")
    p.add_argument("--format", default=_VIS_DEFAULTS["format"], choices=formats, help="png is lossless")


def _add_caption_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--att-feats", default=None, help="AoANet region features (.npz with 'feat', N x 2048)")
    p.add_argument("--boxes", default=None, help="AoANet region boxes (.npy, N x 4, xyxy pixels)")
    p.add_argument("--backbone-weights", default=None, help="local torchvision resnet101 weights for grid features")
    p.add_argument("--beam-size", type=int, default=1)


def cmd_visualize(args: argparse.Namespace) -> int:
    if args.infos_path:
        return _visualize_caption(args)
    from attnvis.api import visualize_attention_on_image

    result = visualize_attention_on_image(
        args.model, args.image, args.output, layer=args.layer, head=args.head, avg_heads=args.avg_heads,
        save_raw=args.save_raw, device=args.device, colormap=args.colormap, alpha=args.alpha, format=args.format,
        backend=args.backend, weights=args.weights, threads=args.threads)
    said = f" (predicted: {result.prediction})" if result.prediction else ""
    print(f"wrote {len(result.files)} files for {len(result.layers)} layers to {args.output} [{result.provider}]{said}")
    return 0


def _visualize_caption(args: argparse.Namespace) -> int:
    from attnvis.runtime.caption import visualize_caption_cli

    return visualize_caption_cli(args)


def cmd_export(args: argparse.Namespace) -> int:
    from attnvis.export import export_onnx, export_torchscript, load_source
    from attnvis.export.metadata import TokenLayout

    if args.infos_path:
        from attnvis.export.aoanet import export_aoanet

        for path in export_aoanet(args.model, args.infos_path, args.output or "aoanet_onnx", validate=args.validate):
            print(f"wrote {path}")
        return 0
    tokens = None
    if args.grid:
        h, w = _pair(args.grid, "--grid")
        tokens = TokenLayout(prefix_tokens=args.prefix_tokens, grid=(h, w), cls_index=0 if args.prefix_tokens else None)
    source = load_source(args.model, weights=args.weights, input_shape=args.input_shape,
                         image_size=_pair(args.image_size, "--image-size") if args.image_size else None, tokens=tokens)
    if args.format == "torchscript":
        path = export_torchscript(source, args.output or "model.pt", reduce=args.reduce)
        print(f"wrote {path} (TorchScript)")
        return 0
    report = export_onnx(source, args.output or "model.onnx", reduce=args.reduce, validate=args.validate)
    meta = report.metadata
    print(f"wrote {report.path}: {len(meta.layers)} attention layers, tokens {meta.tokens.prefix_tokens} prefix + "
          f"grid {meta.tokens.grid}, reduction {meta.reduction}, {report.seconds:.1f} s")
    if report.diffs:
        print(report.table())
    return 0


def _pair(text: str, flag: str) -> tuple[int, int]:
    from attnvis.errors import InputError

    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise InputError(f"{flag} {text!r} is not HxW, e.g. 224x320") from None
    return h, w


def cmd_demo(args: argparse.Namespace) -> int:
    if args.caption:
        from attnvis.runtime.caption import demo_caption_cli

        return demo_caption_cli(args)
    from attnvis.api import visualize_attention_on_image
    from attnvis.models.tiny import sample_image_path

    result = visualize_attention_on_image(None, sample_image_path(), args.output, device=args.device)
    print(f"predicted {result.prediction}; wrote {len(result.files)} files to {args.output} [{result.provider}]")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from attnvis.pipeline import run_batch_cli

    return run_batch_cli(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from attnvis.bench import run_bench_cli

    return run_bench_cli(args)


def build_parser() -> argparse.ArgumentParser:
    from attnvis import __version__
    from attnvis.export.metadata import REDUCTIONS

    parser = argparse.ArgumentParser(prog="attnvis", description="Show where a transformer looks.")
    parser.add_argument("--version", action="version", version=f"attnvis {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    vis = sub.add_parser("visualize", help="render every layer's attention over one image")
    vis.add_argument("--image", required=True)
    vis.add_argument("--output", default="attn_vis")
    _add_model_args(vis)
    _add_render_args(vis)
    _add_caption_args(vis)
    vis.set_defaults(func=cmd_visualize)

    exp = sub.add_parser("export", help="export a model with its attention maps as ONNX outputs")
    _add_model_args(exp, onnx_ok=False)
    exp.add_argument("--output", default=None, help="file to write (model.onnx / model.pt; a folder for AoANet)")
    exp.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    exp.add_argument("--reduce", default="none", choices=REDUCTIONS, help="in-graph reduction of the maps")
    exp.add_argument("--input-shape", default=None, help="B,C,H,W or B,N,D for package.module:factory models")
    exp.add_argument("--image-size", default=None, help="HxW input size for models with dynamic image size")
    exp.add_argument("--grid", default=None, help="HxW patch grid for a factory model that does not declare it")
    exp.add_argument("--prefix-tokens", type=int, default=0, help="tokens before the patches (with --grid)")
    exp.add_argument("--no-validate", dest="validate", action="store_false", help="skip the ORT-vs-PyTorch check")
    exp.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="render the embedded sample with the embedded model")
    demo.add_argument("--output", default="attn_vis")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--caption", action="store_true", help="the embedded AoANet captioner instead")
    demo.set_defaults(func=cmd_demo)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub) -> None:
    """Subcommands whose modules add their own arguments (batch, bench)."""
    import importlib

    for command, module in (("batch", "attnvis.pipeline"), ("bench", "attnvis.bench")):
        try:
            add = importlib.import_module(module).add_arguments
        except (ImportError, AttributeError):
            continue
        p = sub.add_parser(command, help=(importlib.import_module(module).__doc__ or "").strip().splitlines()[0])
        add(p)
        p.set_defaults(func=cmd_batch if command == "batch" else cmd_bench)


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input → one line on stderr and a non-zero exit, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AttnvisError as err:
        print(f"attnvis: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # whoever read the output went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 141  # 128 + SIGPIPE, the status a shell reports for a tool killed by the closed pipe
    except OSError as err:  # disk full, permissions on the output folder
        print(f"attnvis: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("attnvis: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
