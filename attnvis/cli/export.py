"""``attnvis export``: a model with its attention maps as ONNX outputs (or TorchScript)."""

from __future__ import annotations

import argparse
from pathlib import Path

from attnvis.cli._args import add_model_args, pair, triple
from attnvis.errors import InputError
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
    p.add_argument("--mean", default=None, help="R,G,B normalization mean, recorded in the export (default: the model's "
                   "own; 0,0,0 for an ONNX file made elsewhere or a factory model that carries none)")
    p.add_argument("--std", default=None, help="R,G,B normalization std, recorded in the export (default: the model's "
                   "own; 1,1,1 for an ONNX file made elsewhere or a factory model that carries none)")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip the ORT-vs-PyTorch check")
    p.add_argument("--explain", default=None, metavar="METHODS",
                   help="comma-separated explanation methods computed in the graph (forward + backward), one of: "
                   + ", ".join(_method_names()) + "; adds the input 'target' and outputs relevance_{method}")
    p.add_argument("--start-layer", type=int, default=0, help="first layer of rollout / transformer-attribution")
    p.add_argument("--discard-ratio", type=float, default=0.9, help="share of the weights grad-rollout drops")
    p.add_argument("--fp16", action="store_true", help="half-precision graph, float32 inputs and maps; "
                   "checked against the fp32 export (maps within 2e-3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnvis._optional import check

    if args.model and Path(args.model).suffix.lower() == ".onnx":
        return instrument(args)  # an ONNX file made elsewhere: no torch needed
    check("torch", "onnxscript", what="attnvis export")
    if args.fp16 and (args.format == "torchscript" or args.infos_path):
        raise InputError("--fp16 converts an ONNX export; it does not apply to --format torchscript or AoANet (--infos_path)")
    if (args.mean or args.std) and (args.infos_path or args.format == "torchscript"):
        raise InputError("--mean/--std are recorded in an ONNX export's metadata; they do not apply to --format "
                         "torchscript or AoANet (--infos_path)")
    tokens = _layout(args)
    if args.infos_path:
        from attnvis.captioning.export import export_aoanet

        for path in export_aoanet(args.model, args.infos_path, args.output or "aoanet_onnx", validate=args.validate):
            print(f"wrote {path}")
        return 0
    from attnvis.captioning.kinds import is_captioner_dir

    if args.model and is_captioner_dir(args.model):
        if args.explain:
            raise InputError(f"--explain: {args.model} is a captioner; explanations are for image classifiers")
        return run_captioner(args)
    if tokens is None and args.prefix_tokens:
        raise InputError(f"--prefix-tokens {args.prefix_tokens} needs --grid HxW: together they give a "
                         "package.module:factory model's token layout")
    if args.explain:
        return run_explain(args)
    from attnvis.export import export_onnx, export_torchscript
    from attnvis.sources import load_source

    _file_output(args.output)
    source = load_source(args.model, weights=args.weights, random_weights=args.random_weights, input_shape=args.input_shape,
                         image_size=pair(args.image_size, "--image-size") if args.image_size else None, tokens=tokens,
                         mean=triple(args.mean, "--mean"), std=triple(args.std, "--std"))
    if args.format == "torchscript":
        path = export_torchscript(source, args.output or "model.pt", reduce=args.reduce)
        print(f"wrote {path} (TorchScript)")
        return 0
    report = export_onnx(source, args.output or "model.onnx", reduce=args.reduce, validate=args.validate,
                         fp16=args.fp16)
    return _said(report, ", fp16" if args.fp16 else "")


def _method_names() -> list[str]:
    from attnvis.explain.methods import METHODS

    return list(METHODS)


def run_explain(args: argparse.Namespace) -> int:
    """``attnvis export --explain METHODS``: forward + backward + relevance rows in one graph."""
    from attnvis.explain.methods import check_methods
    from attnvis.explain.trace import Options
    from attnvis.export.explain import export_explain
    from attnvis.sources import load_source

    try:
        methods = check_methods(args.explain)
    except ValueError as err:
        raise InputError(f"--explain: {err}") from None
    if args.format != "onnx":
        raise InputError("--explain writes an ONNX graph; it does not apply to --format torchscript")
    if args.reduce != "none":
        raise InputError("--reduce shapes attention outputs; an --explain graph outputs relevance rows "
                         "([B, patches], already reduced in the graph) and no maps: drop --reduce")
    if args.fp16:
        raise InputError("--fp16 does not combine with --explain: ONNX Runtime's fp16 converter turns the traced "
                         "backward pass into an invalid graph (duplicate node names); export the explanation graph "
                         "in fp32")
    _file_output(args.output)
    source = load_source(args.model, weights=args.weights, random_weights=args.random_weights,
                         input_shape=args.input_shape, tokens=_layout(args),
                         image_size=pair(args.image_size, "--image-size") if args.image_size else None,
                         mean=triple(args.mean, "--mean"), std=triple(args.std, "--std"))
    report = export_explain(source, args.output or "model.onnx", methods,
                            Options(args.start_layer, args.discard_ratio), validate=args.validate)
    return _said(report, f", explain {','.join(methods)}")


def instrument(args: argparse.Namespace) -> int:
    """``attnvis export --model foreign.onnx``: add the attention outputs and metadata to an ONNX file made elsewhere."""
    from attnvis.export.foreign import ForeignOptions, instrument_onnx

    if args.explain:
        raise InputError(f"--explain: {args.model} is an ONNX file; explanations need the PyTorch model (their "
                         "backward pass): give the model's spec (timm:NAME, a Hugging Face folder, ...) instead")
    if args.format != "onnx" or args.infos_path or args.input_shape or getattr(args, "fp16", False):
        raise InputError(f"--model {args.model} is an ONNX file: only --output, --reduce, --image-size, --grid, "
                         "--prefix-tokens, --mean, --std and --no-validate apply to it")
    defaults = ForeignOptions()
    _layout(args)  # --grid / --prefix-tokens checked as for a PyTorch export
    options = ForeignOptions(
        image_size=pair(args.image_size, "--image-size") if args.image_size else None,
        grid=pair(args.grid, "--grid") if args.grid else None, prefix_tokens=args.prefix_tokens,
        mean=triple(args.mean, "--mean") or defaults.mean, std=triple(args.std, "--std") or defaults.std,
        reduce=args.reduce)
    report = instrument_onnx(args.model, args.output or "model.onnx", options, validate=args.validate)
    return _said(report)


def _layout(args: argparse.Namespace):
    """The :class:`TokenLayout` that ``--grid`` and ``--prefix-tokens`` give (None without ``--grid``), checked."""
    from attnvis.metadata import TokenLayout

    if args.prefix_tokens < 0:
        raise InputError(f"--prefix-tokens {args.prefix_tokens}: give the number of tokens before the patches "
                         "(CLS, distillation, registers), 0 or more")
    if not args.grid:
        return None
    h, w = pair(args.grid, "--grid")
    return TokenLayout(prefix_tokens=args.prefix_tokens, grid=(h, w), cls_index=0 if args.prefix_tokens else None)


def _file_output(output: str | None) -> None:
    """``--output`` names a file here: an existing folder is refused before the export's minutes of work."""
    if output and Path(output).is_dir():
        raise InputError(f"--output {output} is a folder; give the file to write, e.g. {Path(output) / 'model.onnx'}")


def run_captioner(args: argparse.Namespace) -> int:
    """A Hugging Face captioner directory → ``encoder.onnx`` + ``decoder_step.onnx`` (KV cache, maps as outputs)."""
    from attnvis.captioning.hf import load_hf_captioner
    from attnvis.captioning.hf_export import export_hf_captioner
    from attnvis.captioning.kinds import is_vlm_dir

    if args.mean or args.std or args.grid:
        raise InputError(f"--model {args.model} is a captioner: its encoder's preprocessing and layout come from its "
                         "own configuration; leave out --mean, --std and --grid")
    if is_vlm_dir(args.model):  # LLaVA: vision.onnx + decoder_step.onnx (rows as outputs) + embed_tokens.npy
        from attnvis.captioning.vlm import load_vlm
        from attnvis.captioning.vlm_onnx import export_vlm

        for path in export_vlm(load_vlm(args.model, device="cpu"), args.output or "vlm_onnx"):
            print(f"wrote {path}")
        return 0
    model = load_hf_captioner(args.model, device="cpu")
    for path in export_hf_captioner(model, args.output or "captioner_onnx", validate=args.validate):
        print(f"wrote {path}")
    return 0


def _said(report, extra: str = "") -> int:
    """Print what an export wrote and its validation table; exit code 0."""
    meta = report.metadata
    print(f"wrote {report.path}: {len(meta.layers)} attention layers, tokens {meta.tokens.prefix_tokens} prefix + "
          f"grid {meta.tokens.grid}, reduction {meta.reduction}{extra}, {report.seconds:.1f} s")
    if report.diffs:
        print(report.table())
    return 0
