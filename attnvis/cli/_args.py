"""Argument groups that several commands share, and small argument parsers.

Each flag maps to the library parameter of the same name, and its default
lives in the library's dataclass or signature, not here.
"""

from __future__ import annotations

import argparse

from attnvis.errors import InputError
from attnvis.runtime.device import DEVICES
from attnvis.runtime.loader import BACKENDS
from attnvis.visualize import VisualizeOptions

_VIS = VisualizeOptions()


def add_model_args(p: argparse.ArgumentParser, *, onnx_ok: bool = True) -> None:
    """``--model --weights --infos_path --device --backend --threads``."""
    what = "an .onnx made by attnvis, " if onnx_ok else ""
    p.add_argument("--model", default=None, help=f"{what}'default' (embedded tiny ViT; also when omitted), a Hugging Face "
                   "model directory, timm:NAME, torchvision:NAME, package.module:factory, or an AoANet model.pth with --infos_path")
    p.add_argument("--weights", default=None, help="local weights file for timm:NAME / torchvision:NAME (nothing is downloaded)")
    p.add_argument("--random-weights", action="store_true",
                   help="run timm:NAME / torchvision:NAME with random weights (tests, benchmarks); without it --weights is needed")
    p.add_argument("--infos_path", default=None, help="AoANet infos.pkl (a pickle: only give files you trust)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA if usable, else CPU; cuda: fail if not usable")
    p.add_argument("--backend", default="ort", choices=BACKENDS, help="ONNX Runtime (default) or eager PyTorch")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")


def add_render_args(p: argparse.ArgumentParser) -> None:
    """``--layer --head --no-avg-heads --save-raw --colormap --alpha --format``."""
    from attnvis.render import COLORMAPS, FORMATS

    p.add_argument("--layer", type=int, default=_VIS.layer, help="only this layer (default: all)")
    p.add_argument("--head", type=int, default=_VIS.head, help="only this head (default: mean over heads)")
    p.add_argument("--no-avg-heads", dest="avg_heads", action="store_false", help="one map per head instead of their mean")
    p.add_argument("--save-raw", action="store_true", help="also write attn_raw_layer_{i}.npy, (1, heads, Q, K)")
    p.add_argument("--colormap", default=_VIS.colormap, choices=COLORMAPS, help="colormap of the heatmaps")
    p.add_argument("--alpha", type=float, default=_VIS.alpha, help="heatmap weight in the overlay, in [0, 1]")
    p.add_argument("--format", default=_VIS.format, choices=FORMATS, help="image format (png is lossless)")


def add_figure_args(p: argparse.ArgumentParser) -> None:
    """``visualize``'s figures beside the per-layer files (:class:`attnvis.visualize.FigureOptions`)."""
    from attnvis.visualize import HEAD_FUSIONS, FigureOptions

    d = FigureOptions()
    p.add_argument("--rollout", action="store_true", help="also write attention_rollout.png (attention rollout over all layers)")
    p.add_argument("--discard-ratio", type=float, default=d.discard_ratio,
                   help="rollout: share of each row's weakest weights dropped, in [0, 1)")
    p.add_argument("--head-fusion", default=d.head_fusion, choices=HEAD_FUSIONS, help="rollout: how heads are fused")
    p.add_argument("--contact-sheet", action="store_true", help="also write contact_sheet.png (layers x heads)")
    p.add_argument("--gif", action="store_true", help="also write layers.gif (one frame per layer)")


def add_explain_args(p: argparse.ArgumentParser, *, target: bool = True) -> None:
    """``--method M[,M2]`` and ``--target T|top1``: class-specific relevance (:mod:`attnvis.relevance`)."""
    p.add_argument("--method", default=None, metavar="M[,M2]",
                   help="explain a class with these methods of attnvis.explain.METHODS, e.g. gae,grad-rollout (an "
                        "unknown name lists them): relevance_{method}.png; attention files only where --layer etc. "
                        "ask for them" if target else "only these of the stored explanation methods (default: all)")
    if target:
        p.add_argument("--target", default=None, metavar="T|top1",
                       help="the class --method explains: top1 (default: the predicted class), an index or a label name")


def add_max_pixels(p: argparse.ArgumentParser) -> None:
    """``--max-pixels``, one default for ``visualize`` and ``batch``."""
    from attnvis.runtime.images import DEFAULT_MAX_PIXELS

    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images, checked on the header before decoding (default {DEFAULT_MAX_PIXELS:,})")


def add_caption_args(p: argparse.ArgumentParser) -> None:
    """AoANet's feature files and the beam size."""
    p.add_argument("--att-feats", default=None, help="AoANet region features (.npz with 'feat', N x 2048)")
    p.add_argument("--boxes", default=None, help="AoANet region boxes (.npy, N x 4, xyxy pixels)")
    p.add_argument("--backbone-weights", default=None, help="local torchvision resnet101 weights for grid features")
    p.add_argument("--beam-size", type=int, default=1, help="1: greedy search")
    add_prompt_arg(p)


def add_prompt_arg(p: argparse.ArgumentParser) -> None:
    """``--prompt``: a vision-language model's question or instruction."""
    p.add_argument("--prompt", default=None,
                   help="vision-language models (LLaVA, Qwen2-VL, SmolVLM, PaliGemma): the question or instruction, "
                        "formatted by the model's own chat template (default: 'Describe the image.')")


def vlm_backend(model: str | None, backend: str) -> str:
    """``--backend``, except ``ort`` for a VLM family without an onnx backend: ``torch``, said on stderr."""
    import sys

    from attnvis.captioning.kinds import ONNX_VLM_TYPES, is_vlm_dir, read_config

    if backend not in ("ort", "onnx") or not (model and is_vlm_dir(model)):
        return backend
    kind = read_config(model).get("model_type")
    if kind in ONNX_VLM_TYPES:
        return backend
    print(f"note: {kind} has no onnx backend (it covers {', '.join(sorted(ONNX_VLM_TYPES))}); running --backend torch",
          file=sys.stderr)
    return "torch"


def check_prompt(args: argparse.Namespace) -> None:
    """``--prompt`` only with a vision-language model directory: one line otherwise."""
    from attnvis.captioning.kinds import is_vlm_dir, read_config

    if args.prompt is None or (args.model and is_vlm_dir(args.model)):
        return
    kind = read_config(args.model).get("model_type") if args.model else None
    what = f"{args.model} (model_type {kind!r})" if kind else repr(args.model)
    raise InputError(f"--prompt applies to vision-language models (LLaVA, Qwen2-VL, Qwen2.5-VL, Idefics3, SmolVLM, "
                     f"PaliGemma); {what} is not one")


def render_options(args: argparse.Namespace) -> VisualizeOptions:
    """The :class:`VisualizeOptions` that the render flags describe."""
    return VisualizeOptions(layer=args.layer, head=args.head, avg_heads=args.avg_heads, save_raw=args.save_raw,
                            colormap=args.colormap, alpha=args.alpha, format=args.format)


def pair(text: str, flag: str) -> tuple[int, int]:
    """``"224x320"`` → ``(224, 320)``; an error naming ``flag`` otherwise."""
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise InputError(f"{flag} {text!r} is not HxW, e.g. 224x320") from None
    if h < 1 or w < 1:
        raise InputError(f"{flag} {text}: both sides must be positive integers, e.g. 224x320")
    return h, w


def triple(text: str | None, flag: str) -> tuple[float, float, float] | None:
    """``"0.5,0.5,0.5"`` → ``(0.5, 0.5, 0.5)``; an error naming ``flag`` otherwise."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise InputError(f"{flag} {text!r} is not three comma-separated numbers R,G,B, e.g. 0.485,0.456,0.406")
    return values


def int_list(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` → ``(1, 8, 32)`` (an argparse ``type``)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 1,8,32") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be positive integers")
    return values


def caption_backend(name: str) -> str:
    """The CLI's backend names (``ort``/``torch``) → the captioner's (``onnx``/``torch``)."""
    return "onnx" if name in ("ort", "onnx") else name
