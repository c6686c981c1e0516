"""Benchmarking an ONNX file alone: one made elsewhere and instrumented by ``attnvis export --model foreign.onnx``.

Without a PyTorch source there is nothing to export or run eagerly: the file
serves the ONNX Runtime variants whose file kind its in-graph reduction is
(``ort-all`` for ``none``, ``ort-cls`` and ``ort-iobind-cls`` for ``cls``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attnvis.bench.config import VARIANTS
from attnvis.errors import InputError
from attnvis.metadata import ModelMetadata

#: in-graph reduction of the file → the benchmark file kind it is
KIND_OF_REDUCTION = {"none": "all", "cls": "cls"}


def is_onnx_file(spec: str | None) -> bool:
    """A ``--model`` spec naming an ``.onnx`` file."""
    return bool(spec) and str(spec).lower().endswith(".onnx")


@dataclass(frozen=True)
class OnnxModel:
    """An attnvis-instrumented ONNX file: its metadata, input shape ``(C, H, W)`` and bench file kind."""

    path: Path
    metadata: ModelMetadata
    shape: tuple[int, ...]
    kind: str
    parameters: int

    def info(self) -> dict:
        """The ``model`` entry of the benchmark result."""
        first = self.metadata.layers[0]
        return {"name": str(self.path), "layers": len(self.metadata.layers), "heads": first.heads,
                "tokens": first.k_len, "input_shape": list(self.shape), "parameters": self.parameters}


def load_onnx_model(spec: str) -> OnnxModel:
    """Read ``spec``'s metadata (weights not loaded); one clear error for a file the benchmark cannot run.

    Raises:
        InputError: no such file, not an ONNX file, no attnvis metadata, or a
            reduction no benchmark variant runs (``mean-heads``).
    """
    import onnx

    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--model {spec}: file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError, OSError, ...
        raise InputError(f"--model {spec}: cannot read it as an ONNX model ({type(err).__name__})") from None
    try:
        meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    except ValueError:
        raise InputError(f"--model {spec} has no attnvis metadata: instrument it first with "
                         f"`attnvis export --model {spec} --output instrumented.onnx`") from None
    kind = KIND_OF_REDUCTION.get(meta.reduction)
    if kind is None:
        raise InputError(f"--model {spec} was exported with --reduce {meta.reduction}; the benchmark runs files "
                         "exported with --reduce none (ort-all) or --reduce cls (ort-cls)")
    return OnnxModel(path, meta, _input_shape(proto, meta, spec), kind,
                     sum(_numel(t.dims) for t in proto.graph.initializer))


def _numel(dims) -> int:
    count = 1
    for d in dims:
        count *= int(d)
    return count


def _input_shape(proto, meta: ModelMetadata, spec: str) -> tuple[int, ...]:
    """``(C, H, W)``: the preprocessing's size, else the input's fixed dims."""
    weights = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise InputError(f"--model {spec}: the benchmark feeds one input tensor; this model takes {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if meta.preprocess is not None and len(dims) == 4:
        return (dims[1] or 3, *meta.preprocess.size)
    if len(dims) < 2 or not all(dims[1:]):
        raise InputError(f"--model {spec}: input {inputs[0].name!r} has no fixed shape and no preprocessing size")
    return tuple(int(d) for d in dims[1:])


def onnx_variants(model: OnnxModel, requested: tuple[str, ...] | None, device: str) -> list[str]:
    """The variants ``model``'s file serves: the ones asked for (each checked), else all that apply to ``device``."""
    served = [name for name, (_, kind, _) in VARIANTS.items() if kind == model.kind]
    if requested:
        unknown = [n for n in requested if n in VARIANTS and n not in served]
        if unknown:
            raise InputError(f"--variants {', '.join(unknown)}: --model {model.path} (reduction "
                             f"{model.metadata.reduction}) has no PyTorch source to export from; it serves only "
                             f"{', '.join(served)}")
        return list(requested)
    return [name for name in served if device in VARIANTS[name][2]]
