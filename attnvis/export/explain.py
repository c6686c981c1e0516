"""``attnvis export --explain METHODS``: forward and the backward the methods need, in one ONNX graph.

``torch.onnx.export`` cannot export a module that calls ``torch.autograd.grad``.
``make_fx(tracing_mode="symbolic")`` can trace one, backward included, into a
plain FX graph of ATen ops (the parameters become constants), and that graph
exports with the ``torch.export``-based exporter, batch still dynamic. The
graph's inputs: the model's image input (its usual name) and ``target``
(int64 ``[B]``, negative = top-1); outputs: the model's own, then
``relevance_{method}`` ``[B, patches]`` per method (:mod:`attnvis.explain`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from attnvis.errors import InputError, ModelError
from attnvis.explain.methods import METHODS, check_methods, relevance_output
from attnvis.explain.trace import Options, explain_pass
from attnvis.metadata import ModelMetadata
from attnvis.sources import ModelSource
from attnvis.sources.labels import labels_of
from attnvis.export.onnx import OPSET, build_metadata, quiet_export
from attnvis.export.report import OUTPUT_TOLERANCE, ExportReport, save_model

TARGET = "target"
#: A relevance row must equal eager PyTorch within this share of its largest magnitude.
RELEVANCE_TOLERANCE = 1e-4
#: LRP (transformer-attribution) divides by pre-activations near zero (``safe_divide`` only keeps them off
#: zero), which amplifies float32 rounding: ORT and PyTorch order their sums differently, ~1e-4 of the map apart.
LRP_TOLERANCE = 1e-3


def check_explainable(source: ModelSource, meta: ModelMetadata) -> None:
    """Refuse, in one line, models whose relevance rows would mean nothing.

    Raises:
        ModelError: windowed attention (no CLS row), no CLS token, keys that are not prefix + patches.
    """
    tokens = meta.tokens
    if any(layer.window is not None for layer in meta.layers):
        raise ModelError(f"{source.name}: windowed attention (Swin) has no CLS row over the image; explanations "
                         "need a global-attention ViT classifier with a CLS token")
    if tokens.cls_index is None or tokens.grid is None:
        raise ModelError(f"{source.name}: the model has no CLS token over a patch grid; explanations follow the "
                         "CLS row of a ViT classifier")
    expected = tokens.prefix_tokens + tokens.num_patches
    wrong = [layer for layer in meta.layers if layer.kind != "self" or layer.k_len != expected]
    if wrong:
        raise ModelError(f"{source.name}: layer {wrong[0].name} is no self-attention over the {expected} tokens; "
                         "explanations chain self-attention layers only")


def explain_metadata(source: ModelSource, methods: list[str], options: Options) -> ModelMetadata:
    """The plain export's metadata plus ``explain`` and ``labels``; refuses what cannot be explained."""
    meta = build_metadata(source, "none")
    check_explainable(source, meta)
    check_options(options, len(meta.layers))
    with torch.no_grad():
        outputs, _ = explain_pass(source.model, source.example_inputs, _top1(source), ["attention"], meta.tokens)
    meta.explain = options.as_dict(methods)
    classes = int(outputs[0][1].shape[1])
    meta.labels = labels_of(source, classes)
    meta.extra["num_classes"] = classes
    return meta


def check_options(options: Options, layers: int) -> None:
    """``start_layer`` within the layers, ``discard_ratio`` in [0, 1)."""
    if not 0 <= options.start_layer < layers:
        raise InputError(f"start_layer {options.start_layer} is out of range: the model has {layers} attention "
                         f"layers (0..{layers - 1})")
    if not 0.0 <= options.discard_ratio < 1.0:
        raise InputError(f"discard_ratio {options.discard_ratio} must be in [0, 1)")


def _top1(source: ModelSource) -> torch.Tensor:
    return torch.full((source.example_inputs[0].shape[0],), -1, dtype=torch.int64)


def _example_target(source: ModelSource) -> torch.Tensor:
    """Top-1 for the first image, class 0 for the others: both branches of the target are validated."""
    target = torch.zeros(source.example_inputs[0].shape[0], dtype=torch.int64)
    target[0] = -1
    return target


class _Traced(nn.Module):
    """The FX graph of one explanation pass as a module the exporter takes."""

    def __init__(self, traced: nn.Module):
        super().__init__()
        self.traced = traced

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.traced(images, target))


def trace_explain(source: ModelSource, meta: ModelMetadata, methods: list[str], options: Options) -> onnx.ModelProto:
    """``make_fx`` over :func:`explain_pass`, then ``torch.onnx.export(dynamo=True)`` with a dynamic batch."""
    from torch.fx.experimental.proxy_tensor import make_fx

    if len(source.example_inputs) != 1:
        raise ModelError(f"{source.name} takes {len(source.example_inputs)} inputs; explanations take one image batch")

    def run(images: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        outputs, relevance = explain_pass(source.model, (images,), target, methods, meta.tokens, options)
        return [t for _, t in outputs] + [relevance[m] for m in methods]

    example = (*source.example_inputs, _example_target(source))
    names = source.input_names() + [TARGET]
    batch = torch.export.Dim("batch")
    with quiet_export():
        traced = make_fx(run, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
        program = torch.onnx.export(_Traced(traced).eval(), example, dynamo=True, opset_version=OPSET,
                                    input_names=names, output_names=explain_outputs(meta),
                                    dynamic_shapes=tuple({0: batch} for _ in names), external_data=False,
                                    verbose=False)
    return program.model_proto


def explain_outputs(meta: ModelMetadata) -> list[str]:
    """The graph's outputs: the model's own, then one relevance row per method."""
    return meta.model_outputs + [relevance_output(m) for m in meta.explain["methods"]]


def export_explain(source: ModelSource, output: str | Path, methods: list[str] | str, options: Options = Options(),
                   validate: bool = True) -> ExportReport:
    """Export ``source`` with ``methods``' relevance rows as outputs (see the module docstring).

    Raises:
        InputError: unknown method, options out of range.
        ModelError: no class output, windowed or CLS-less model, validation past tolerance.
    """
    start = time.perf_counter()
    try:
        methods = check_methods(methods)
    except ValueError as err:
        raise InputError(f"--explain: {err}") from None
    output = Path(output)
    meta = explain_metadata(source, methods, options)
    proto = trace_explain(source, meta, methods, options)
    missing = sorted(set(explain_outputs(meta)) - {o.name for o in proto.graph.output})
    if missing:
        raise ModelError(f"the exported explanation graph lacks outputs {', '.join(missing)}")
    save_model(proto, output, meta.to_props())
    report = ExportReport(output, meta, 0.0)
    if validate:
        report.diffs = compare_explain(output, source, meta)
        if not report.ok:
            output.unlink(missing_ok=True)
            raise ModelError(f"{output}: ONNX Runtime disagrees with PyTorch past tolerance\n{report.table()}")
    report.seconds = time.perf_counter() - start
    return report


def compare_explain(path: Path, source: ModelSource, meta: ModelMetadata) -> list[tuple[str, float, float]]:
    """Max |ORT − eager PyTorch| per output; a relevance row's tolerance scales with its largest value."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    target = _example_target(source)
    feeds = {name: t.numpy() for name, t in zip(source.input_names(), source.example_inputs)}
    feeds[TARGET] = target.numpy()
    got = session.run(None, feeds)
    options = Options(meta.explain["start_layer"], meta.explain["discard_ratio"])
    outputs, relevance = explain_pass(source.model, source.example_inputs, target, meta.explain["methods"],
                                      meta.tokens, options)
    want = [t.numpy() for _, t in outputs] + [relevance[m].numpy() for m in meta.explain["methods"]]
    rows = []
    for name, g, w in zip(explain_outputs(meta), got, want):
        scale = float(np.max(np.abs(w))) if w.size else 0.0
        share = LRP_TOLERANCE if name == relevance_output("transformer-attribution") else RELEVANCE_TOLERANCE
        tol = share * max(scale, 1e-6) if name.startswith("relevance_") else OUTPUT_TOLERANCE
        rows.append((name, float(np.max(np.abs(g - w))) if g.size else 0.0, tol))
    return rows


__all__ = ["METHODS", "TARGET", "check_explainable", "explain_outputs", "export_explain", "trace_explain"]
