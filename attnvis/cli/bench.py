"""``attnvis bench``: PyTorch against ONNX Runtime on one model."""

from __future__ import annotations

import argparse
import dataclasses

from attnvis.bench.config import PRESETS, VARIANTS, BenchConfig
from attnvis.cli._args import int_list
from attnvis.runtime.device import DEVICES


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark PyTorch against ONNX Runtime: latency, images/s, map bytes, memory")
    d = BenchConfig()
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model", default=d.model, help="'default', a Hugging Face model directory, timm:NAME, "
                       "torchvision:NAME, package.module:factory (with --input-shape), or an .onnx file with attnvis "
                       "metadata (e.g. instrumented by attnvis export): its ORT variants only, no PyTorch source")
    model.add_argument("--preset", default=d.preset, choices=tuple(PRESETS),
                       help="a random-weight timm ViT, no file needed: " + "; ".join(f"{k}: {v.note}" for k, v in PRESETS.items()))
    p.add_argument("--batch-sizes", type=int_list, default=d.batch_sizes, help="comma-separated (default 1,8,32)")
    p.add_argument("--device", default=d.device, choices=DEVICES, help="auto: CUDA if usable, else CPU")
    p.add_argument("--threads", type=int, default=d.threads, help="intra-op threads for both runtimes (default: physical cores)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed calls per variant and batch size")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed calls per variant and batch size first")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of: {', '.join(VARIANTS)} "
                   "(default: all that apply to the device)")
    p.add_argument("--weights", default=d.weights, help="local weights for timm:NAME / torchvision:NAME")
    p.add_argument("--input-shape", default=d.input_shape, help="B,C,H,W for package.module:factory models")
    p.add_argument("--json", default=None, help="write the result here, the markdown table beside it (.md)")
    p.add_argument("--plot", default=None, help="PNG of images/s by batch size (default: beside --json)")
    p.add_argument("--no-plot", dest="want_plot", action="store_false", help="write no plot (no matplotlib needed)")
    p.add_argument("--no-render", dest="render", action="store_false", help="skip the numba render_map timing")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="export into a temporary folder")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` that the parsed flags describe."""
    names = {f.name for f in dataclasses.fields(BenchConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if values.get("variants"):
        values["variants"] = tuple(v.strip() for v in values["variants"].split(",") if v.strip())
    return BenchConfig(**values)


def run(args: argparse.Namespace) -> int:
    """Check the extras first (the benchmark takes minutes), run, print the table, write the files."""
    from attnvis._optional import check

    plot = args.plot if args.want_plot else None
    check("torch", what="attnvis bench")
    if plot or (args.json and args.want_plot):
        check("matplotlib", what="the benchmark plot (--plot, or beside --json; --no-plot skips it)")
    from attnvis.bench.run import run_benchmark, summary, write_outputs

    result = run_benchmark(config_from_args(args))
    print(summary(result))
    for path in write_outputs(result, args.json, plot, plot=args.want_plot):
        print(f"wrote {path}")
    return 0
