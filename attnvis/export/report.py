"""What every export writes and reports, without PyTorch: the validation table and the atomic save.

Shared by the PyTorch export (:mod:`attnvis.export.onnx`) and the
instrumentation of ONNX files made elsewhere (:mod:`attnvis.export.foreign`),
which runs on the light install.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from attnvis.errors import ModelError
from attnvis.metadata import ModelMetadata
from attnvis.render.writers import write_bytes_atomic

MAP_TOLERANCE = 1e-5
OUTPUT_TOLERANCE = 1e-4
_PROTOBUF_LIMIT = 2**31


@dataclass
class ExportReport:
    """What an export did: the file, its metadata, the check it passed."""

    path: Path
    metadata: ModelMetadata
    seconds: float
    diffs: list[tuple[str, float, float]] = field(default_factory=list)  # (output, max |ORT - reference|, tolerance)

    def table(self) -> str:
        rows = [f"{'output':<24} {'max abs diff':>13} {'tolerance':>10}  ok"]
        for name, diff, tol in self.diffs:
            rows.append(f"{name:<24} {diff:>13.3e} {tol:>10.0e}  {'yes' if diff <= tol else 'NO'}")
        return "\n".join(rows)

    @property
    def ok(self) -> bool:
        return all(diff <= tol for _, diff, tol in self.diffs)


def save_model(proto: onnx.ModelProto, output: Path, props: dict[str, str]) -> None:
    """Write ``proto`` with ``props`` as metadata: temporary name, then rename."""
    onnx.helper.set_model_props(proto, props)
    if proto.ByteSize() >= _PROTOBUF_LIMIT:
        raise ModelError(f"{output}: the model is over 2 GB and cannot be stored in one ONNX file")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output, proto.SerializeToString())
