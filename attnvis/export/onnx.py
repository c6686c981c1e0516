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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from attnvis.errors import ModelError
from attnvis.capture.context import capture_attention
from attnvis.metadata import ModelMetadata
from attnvis.sources import ModelSource
from attnvis.export.wrapper import AttentionOutputs, probe
from attnvis.render.writers import write_bytes_atomic

OPSET = 20
MAP_TOLERANCE = 1e-5
OUTPUT_TOLERANCE = 1e-4
_PROTOBUF_LIMIT = 2**31


@dataclass
class ExportReport:
    """What :func:`export_onnx` did: the file, its metadata, the check it passed."""

    path: Path
    metadata: ModelMetadata
    seconds: float
    diffs: list[tuple[str, float, float]] = field(default_factory=list)  # (output, max |ORT - torch|, tolerance)

    def table(self) -> str:
        rows = [f"{'output':<24} {'max abs diff':>13} {'tolerance':>10}  ok"]
        for name, diff, tol in self.diffs:
            rows.append(f"{name:<24} {diff:>13.3e} {tol:>10.0e}  {'yes' if diff <= tol else 'NO'}")
        return "\n".join(rows)

    @property
    def ok(self) -> bool:
        return all(diff <= tol for _, diff, tol in self.diffs)


def build_metadata(source: ModelSource, reduction: str) -> ModelMetadata:
    """Probe the model once to name its outputs and layers."""
    output_names, layers = probe(source.model, source.example_inputs)
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
    with capture_attention(source.model) as recorder, quiet_export():
        wrapper = AttentionOutputs(source.model, recorder, meta.tokens, meta.reduction).eval()
        program = torch.onnx.export(wrapper, source.example_inputs, dynamo=True, opset_version=OPSET,
                                    input_names=names, output_names=meta.model_outputs + meta.attn_outputs,
                                    dynamic_shapes=(dynamic,), external_data=False, verbose=False)
    return program.model_proto


def _check_outputs(proto: onnx.ModelProto, meta: ModelMetadata) -> None:
    present = {o.name for o in proto.graph.output}
    missing = [n for n in meta.model_outputs + meta.attn_outputs if n not in present]
    if missing:
        raise ModelError(f"the exported graph lacks outputs {', '.join(missing)}; the exporter dropped them "
                         "(an attention module whose weights do not reach the output?)")


def save_model(proto: onnx.ModelProto, output: Path, props: dict[str, str]) -> None:
    """Write ``proto`` with ``props`` as metadata: temporary name, then rename."""
    onnx.helper.set_model_props(proto, props)
    if proto.ByteSize() >= _PROTOBUF_LIMIT:
        raise ModelError(f"{output}: the model is over 2 GB and cannot be stored in one ONNX file")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output, proto.SerializeToString())


def export_onnx(source: ModelSource, output: str | Path, reduce: str = "none", validate: bool = True) -> ExportReport:
    """Export ``source`` to ``output`` with every attention layer as an output.

    Args:
        source: the model and its layout (see :func:`attnvis.sources.load_source`).
        output: the ``.onnx`` path to write.
        reduce: in-graph reduction, ``none`` | ``mean-heads`` | ``cls``.
        validate: compare ONNX Runtime against eager PyTorch on the example batch.

    Raises:
        ModelError: no attention captured, outputs dropped, or validation past tolerance.
    """
    start = time.perf_counter()
    output = Path(output)
    meta = build_metadata(source, reduce)
    proto = _trace(source, meta)
    _check_outputs(proto, meta)
    save_model(proto, output, meta.to_props())
    report = ExportReport(output, meta, time.perf_counter() - start)
    if validate:
        report.diffs = compare_with_torch(output, source, meta)
        if not report.ok:
            raise ModelError(f"{output}: ONNX Runtime disagrees with PyTorch past tolerance\n{report.table()}")
    return report


def torch_outputs(source: ModelSource, meta: ModelMetadata, inputs: tuple) -> list[np.ndarray]:
    """Eager PyTorch outputs of the exported wrapper (the reference)."""
    with capture_attention(source.model) as recorder, torch.no_grad():
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
    with capture_attention(source.model) as recorder, warnings.catch_warnings():
        # TorchScript is deprecated upstream; it stays the fairest "compiled PyTorch" baseline here.
        warnings.simplefilter("ignore")
        wrapper = AttentionOutputs(source.model, recorder, meta.tokens, meta.reduction).eval()
        traced = torch.jit.trace(wrapper, source.example_inputs, check_trace=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    return write_bytes_atomic(output, buf.getvalue())
