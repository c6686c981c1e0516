"""ONNX export of a model with its attention maps as extra outputs, self-validated.

Uses the ``torch.export``-based exporter (``dynamo=True``): batch is a dynamic
axis named ``batch``; outputs are the model's own followed by ``attn_0 …
attn_{L-1}`` in call order; the weights are embedded in one file; the
metadata travels in ``metadata_props``.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from attnvis.errors import ModelError
from attnvis.metadata import ModelMetadata
from attnvis.sources import ModelSource
from attnvis.export.wrapper import AttentionOutputs, capture_for, probe
from attnvis.render.writers import write_bytes_atomic
from attnvis.export.report import MAP_TOLERANCE, OUTPUT_TOLERANCE, ExportReport, save_model  # noqa: F401 - re-exported

OPSET = 20
# CLS rows (``--reduce cls``) leave the model's own attention as ``F.scaled_dot_product_attention``,
# which opset 23 exports as ONNX's fused ``Attention`` op instead of MatMul-Softmax-MatMul: ONNX
# Runtime (1.23 on) then holds no batch-wide (heads, N, N) probabilities (peak RSS 2.2 instead of
# 3.6 GB for a DINOv2-S/14 at 518 px, batch 8; benchmarks/RESULTS.md). The other exports compute
# every map explicitly anyway and stay at OPSET.
CLS_ROW_OPSET = 23


def opset_for(meta: ModelMetadata) -> int:
    """The opset an export with ``meta``'s reduction and tokens is written in."""
    return CLS_ROW_OPSET if meta.reduction == "cls" and meta.tokens.cls_index is not None else OPSET


def build_metadata(source: ModelSource, reduction: str) -> ModelMetadata:
    """Probe the model once to name its outputs and layers."""
    output_names, layers = probe(source.model, source.example_inputs, reduction, source.tokens)
    return ModelMetadata(layers=layers, tokens=source.tokens, preprocess=source.preprocess, reduction=reduction,
                         input_name=source.input_name, model_outputs=output_names, source=source.name,
                         extra=dict(source.extra))


@contextlib.contextmanager
def quiet_export():
    """The exporter prints progress and warns about internals users cannot act on."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _trace(source: ModelSource, meta: ModelMetadata) -> onnx.ModelProto:
    names = source.input_names()
    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} for _ in names)
    with capture_for(source.model, meta.reduction, meta.tokens) as recorder, quiet_export():
        wrapper = AttentionOutputs(source.model, recorder, meta.tokens, meta.reduction).eval()
        program = torch.onnx.export(wrapper, source.example_inputs, dynamo=True, opset_version=opset_for(meta),
                                    input_names=names, output_names=meta.model_outputs + meta.attn_outputs,
                                    dynamic_shapes=(dynamic,), external_data=False, verbose=False)
    return program.model_proto


def _check_outputs(proto: onnx.ModelProto, meta: ModelMetadata) -> None:
    present = {o.name for o in proto.graph.output}
    missing = [n for n in meta.model_outputs + meta.attn_outputs if n not in present]
    if missing:
        raise ModelError(f"the exported graph lacks outputs {', '.join(missing)}; the exporter dropped them "
                         "(an attention module whose weights do not reach the output?)")


def export_onnx(source: ModelSource, output: str | Path, reduce: str = "none", validate: bool = True,
                fp16: bool = False) -> ExportReport:
    """Export ``source`` to ``output`` with every attention layer as an output.

    Args:
        source: the model and its layout (see :func:`attnvis.sources.load_source`).
        output: the ``.onnx`` path to write.
        reduce: in-graph reduction, ``none`` | ``mean-heads`` | ``cls``.
        validate: compare ONNX Runtime against eager PyTorch on the example batch
            (and, with ``fp16``, the fp16 file against the fp32 one: :mod:`attnvis.export.fp16`).
        fp16: write the graph in half precision, inputs and outputs kept float32.

    Raises:
        ModelError: no attention captured, outputs dropped, or validation past tolerance.
    """
    start = time.perf_counter()
    output = Path(output)
    meta = build_metadata(source, reduce)
    proto = _trace(source, meta)
    _check_outputs(proto, meta)
    fp32 = output.with_name(f".{output.name}.fp32.onnx") if fp16 else output
    save_model(proto, fp32, meta.to_props())
    report = ExportReport(output, meta, time.perf_counter() - start)
    try:
        if validate:
            report.diffs = compare_with_torch(fp32, source, meta)
            if not report.ok:
                raise ModelError(f"{output}: ONNX Runtime disagrees with PyTorch past tolerance\n{report.table()}")
        if fp16:
            report.diffs += _save_fp16(proto, fp32, output, source, meta, validate)
    finally:
        if fp16:
            fp32.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - start
    return report


def _save_fp16(proto: onnx.ModelProto, fp32: Path, output: Path, source: ModelSource, meta: ModelMetadata,
               validate: bool) -> list[tuple[str, float, float]]:
    """Convert to fp16, write ``output`` (and nothing on failure), check it against the fp32 file."""
    from attnvis.export.fp16 import PRECISION_KEY, compare_fp16, to_fp16

    meta.extra[PRECISION_KEY] = "fp16"
    save_model(to_fp16(proto), output, meta.to_props())
    if not validate:
        return []
    feeds = {name: t.numpy() for name, t in zip(source.input_names(), source.example_inputs)}
    diffs = compare_fp16(fp32, output, feeds)
    failed = [d for d in diffs if d[1] > d[2]]
    if failed:
        output.unlink(missing_ok=True)
        table = ExportReport(output, meta, 0.0, diffs).table()
        raise ModelError(f"{output}: the fp16 graph disagrees with the fp32 one past tolerance; export without --fp16"
                         f"\n{table}")
    return diffs


def torch_outputs(source: ModelSource, meta: ModelMetadata, inputs: tuple) -> list[np.ndarray]:
    """Eager PyTorch outputs of the exported wrapper (the reference)."""
    with capture_for(source.model, meta.reduction, meta.tokens) as recorder, torch.no_grad():
        wrapper = AttentionOutputs(source.model, recorder, meta.tokens, meta.reduction)
        return [t.detach().cpu().numpy() for t in wrapper(*inputs)]


def compare_with_torch(path: Path, source: ModelSource, meta: ModelMetadata) -> list[tuple[str, float, float]]:
    """Max |ORT − PyTorch| per output, with the tolerance it must meet."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(source.input_names(), source.example_inputs)}
    got = session.run(None, feeds)
    want = torch_outputs(source, meta, source.example_inputs)
    names = [o.name for o in session.get_outputs()]
    return [(name, float(np.max(np.abs(g - w))) if g.size else 0.0,
             MAP_TOLERANCE if name.startswith("attn_") else OUTPUT_TOLERANCE)
            for name, g, w in zip(names, got, want)]


def export_torchscript(source: ModelSource, output: str | Path, reduce: str = "none") -> Path:
    """The same wrapper traced with ``torch.jit.trace`` (the PyTorch-side benchmark uses it)."""
    output = Path(output)
    meta = build_metadata(source, reduce)
    with capture_for(source.model, meta.reduction, meta.tokens) as recorder, warnings.catch_warnings():
        # TorchScript is deprecated upstream; it stays the fairest "compiled PyTorch" baseline here.
        warnings.simplefilter("ignore")
        wrapper = AttentionOutputs(source.model, recorder, meta.tokens, meta.reduction).eval()
        traced = torch.jit.trace(wrapper, source.example_inputs, check_trace=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return write_bytes_atomic(output, buf.getvalue())
