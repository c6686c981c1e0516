"""Benchmark models and the files each variant runs: presets, cached exports.

A preset is a randomly initialised timm ``VisionTransformer`` of a standard
size (seeded, so every run builds the same weights); it needs no file and no
download. Exports (ONNX with all maps, with in-graph ``cls`` reduction,
without maps, fp16; TorchScript) are cached per model spec and library
versions, because exporting a 12-layer ViT takes longer than timing it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from attnvis.bench.config import PRESETS
from attnvis.errors import InputError, ModelError
from attnvis.metadata import Preprocess, TokenLayout
from attnvis.sources import ModelSource


_IMAGENET = Preprocess(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                       interpolation="bicubic")


def preset_source(name: str) -> ModelSource:
    """Build preset ``name`` with seeded random weights (nothing is read or downloaded).

    Raises:
        InputError: unknown preset, or timm is not installed.
    """
    if name not in PRESETS:
        raise InputError(f"--preset {name!r} is not one of {', '.join(PRESETS)}")
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise InputError(f"--preset {name} builds a timm VisionTransformer: pip install timm") from None
    p = PRESETS[name]
    torch.manual_seed(0)
    model = VisionTransformer(img_size=p.image, patch_size=p.patch, embed_dim=p.dim, depth=p.depth,
                              num_heads=p.heads, num_classes=1000).eval()
    side = p.image // p.patch
    tokens = TokenLayout(prefix_tokens=1, grid=(side, side), cls_index=0, prefix_names=("cls",))
    pre = Preprocess(**{**_IMAGENET.__dict__, "size": (p.image, p.image)})
    example = (torch.randn(2, 3, p.image, p.image),)  # batch 2: batch 1 would fix the dynamic axis
    return ModelSource(model, example, tokens, pre, f"preset:{name}")


def cache_key(parts: dict) -> str:
    """A short hash of what decides the exported files (spec, files' stamps, versions)."""
    import onnx

    from attnvis import __version__

    parts = {**parts, "attnvis": __version__, "torch": torch.__version__, "onnx": onnx.__version__}
    for name in ("model", "weights"):
        path = Path(str(parts.get(name) or ""))
        if parts.get(name) and path.exists():
            stamps = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.rglob("*")) if f.is_file()]
            parts[f"{name}_files"] = stamps or [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _PlainOutputs(nn.Module):
    """The model with its own tensor outputs as a tuple (HF ``ModelOutput`` flattened), no maps."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from attnvis.export.wrapper import flatten_outputs

        return tuple(t for _, t in flatten_outputs(self.model(*inputs)))


def export_plain(source: ModelSource, output: Path) -> Path:
    """Export the model as users deploy it: no capture, its own attention kernels, no map outputs.

    The file carries attnvis metadata with the layers of the probe, so that
    :class:`~attnvis.runtime.OrtSession` opens it; it simply has no ``attn_*`` outputs.
    """
    from attnvis.export.onnx import OPSET, build_metadata, quiet_export, save_model

    meta = build_metadata(source, "none")
    names = source.input_names()
    dynamic = (tuple({0: torch.export.Dim("batch")} for _ in names),)
    with quiet_export():
        program = torch.onnx.export(_PlainOutputs(source.model).eval(), source.example_inputs, dynamo=True,
                                    opset_version=OPSET, input_names=names, output_names=meta.model_outputs,
                                    dynamic_shapes=dynamic, external_data=False, verbose=False)
    save_model(program.model_proto, output, meta.to_props())
    return output


def export_fp16(onnx_path: Path, output: Path) -> Path:
    """fp16 copy of an export, inputs and outputs kept float32 (:func:`attnvis.export.fp16.to_fp16`)."""
    import onnx

    from attnvis.export.fp16 import PRECISION_KEY, to_fp16
    from attnvis.export.onnx import save_model
    from attnvis.metadata import ModelMetadata

    half = to_fp16(onnx.load(str(onnx_path)))
    meta = ModelMetadata.from_props({p.key: p.value for p in half.metadata_props})
    meta.extra[PRECISION_KEY] = "fp16"
    save_model(half, output, meta.to_props())
    return output


def export_file(kind: str, source: ModelSource, folder: Path, device: str) -> Path:
    """The file of ``kind`` (``all``, ``cls``, ``plain``, ``fp16-all|cls|plain``, ``torchscript``), exported once.

    Raises:
        ModelError: the export fails (the message says which file).
    """
    from attnvis.export.onnx import export_onnx, export_torchscript

    suffix = f"-{device}.pt" if kind == "torchscript" else ".onnx"
    path = folder / f"{kind}{suffix}"
    if path.exists():
        return path
    try:
        if kind in ("all", "cls"):
            export_onnx(source, path, reduce="none" if kind == "all" else "cls", validate=False)
        elif kind == "plain":
            export_plain(source, path)
        elif kind.startswith("fp16-"):  # fp16-all, fp16-cls, fp16-plain: converted from the fp32 file
            export_fp16(export_file(kind.removeprefix("fp16-"), source, folder, device), path)
        else:
            export_torchscript(on_device(source, device), path, reduce="none")
    except ModelError:
        raise
    except Exception as err:  # the exporters raise many types; the user needs to know which file failed
        raise ModelError(f"exporting the {kind!r} benchmark file to {path} failed: {str(err).splitlines()[0]}") from err
    return path


def on_device(source: ModelSource, device: str) -> ModelSource:
    """``source`` with its model and example inputs on ``device`` (TorchScript traces device constants)."""
    model = source.model.to(device)
    example = tuple(t.to(device) for t in source.example_inputs)
    return ModelSource(model, example, source.tokens, source.preprocess, source.name, source.input_name, source.extra)
