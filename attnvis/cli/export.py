"""``attnvis export``: a model with its attention maps as ONNX outputs (or TorchScript)."""

from __future__ import annotations

import argparse

from attnvis.cli._args import add_model_args, pair
from attnvis.metadata import REDUCTIONS


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model with its attention maps as ONNX outputs")
    add_model_args(p, onnx_ok=False)
    p.add_argument("--output", default=None, help="file to write (model.onnx / model.pt; a folder for AoANet)")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript"), help="what to write")
    p.add_argument("--reduce", default="none", choices=REDUCTIONS, help="in-graph reduction of the maps")
    p.add_argument("--input-shape", default=None, help="B,C,H,W or B,N,D for package.module:factory models")
    p.add_argument("--image-size", default=None, help="HxW input size for models with dynamic image size")
    p.add_argument("--grid", default=None, help="HxW patch grid for a factory model that does not declare it")
    p.add_argument("--prefix-tokens", type=int, default=0, help="tokens before the patches (with --grid)")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip the ORT-vs-PyTorch check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnvis._optional import check

    check("torch", "onnxscript", what="attnvis export")
    if args.infos_path:
        from attnvis.captioning.export import export_aoanet

        for path in export_aoanet(args.model, args.infos_path, args.output or "aoanet_onnx", validate=args.validate):
            print(f"wrote {path}")
        return 0
    from attnvis.export import export_onnx, export_torchscript
    from attnvis.metadata import TokenLayout
    from attnvis.sources import load_source

    tokens = None
    if args.grid:
        h, w = pair(args.grid, "--grid")
        tokens = TokenLayout(prefix_tokens=args.prefix_tokens, grid=(h, w), cls_index=0 if args.prefix_tokens else None)
    source = load_source(args.model, weights=args.weights, input_shape=args.input_shape,
                         image_size=pair(args.image_size, "--image-size") if args.image_size else None, tokens=tokens)
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
