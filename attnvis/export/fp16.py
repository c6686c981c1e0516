"""fp16 exports: the graph's weights and arithmetic in half precision, float32 at the boundary.

The inputs and every output (the model's own and the ``attn_*`` maps) stay
float32, with casts at the edges, so that callers, the metadata contract and
the renderer see the same file either way; on a GPU the fp16 graph halves the
weights' bytes and runs on the tensor cores. The conversion is ONNX Runtime's
own (``onnxruntime.transformers.float16``).

An fp16 file is validated against the fp32 export it was made from, on the
same inputs, with these tolerances:

- attention maps (softmax weights in [0, 1], or their head mean / CLS row):
  max abs difference ≤ :data:`FP16_MAP_TOLERANCE` = 2e-3, about four fp16
  units in the last place at 1.0 (fp16 has an 11-bit significand: one unit
  is 4.9e-4 at 1.0);
- the model's own outputs (logits, features): max abs difference ≤
  :data:`FP16_OUTPUT_TOLERANCE` × max(1, max |fp32 output|), i.e. 1% of the
  output's scale.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx

FP16_MAP_TOLERANCE = 2e-3
FP16_OUTPUT_TOLERANCE = 1e-2
PRECISION_KEY = "precision"  # in the metadata's ``extra``: "fp16" for a converted file


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """An fp16 copy of ``proto`` whose inputs and outputs stay float32; metadata props are kept.

    Raises:
        ModelError: the converter fails (the message names its first line).
    """
    from attnvis._optional import require
    from attnvis.errors import ModelError

    float16 = require("onnxruntime.transformers.float16", "the fp16 export")
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns about every constant clipped to the fp16 range
            half = float16.convert_float_to_float16(proto, keep_io_types=True)
    except Exception as err:  # the converter raises bare exceptions on graphs it cannot handle
        raise ModelError(f"the fp16 conversion failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    del half.metadata_props[:]
    onnx.helper.set_model_props(half, props)
    return half


def tolerance(name: str, reference: np.ndarray) -> float:
    """The fp16-vs-fp32 tolerance of output ``name`` (see the module's docstring)."""
    if name.startswith("attn_"):
        return FP16_MAP_TOLERANCE
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return FP16_OUTPUT_TOLERANCE * max(1.0, scale)


def compare_fp16(fp32_path: Path, fp16_path: Path, feeds: dict[str, np.ndarray]) -> list[tuple[str, float, float]]:
    """Max |fp16 − fp32| per output on ``feeds`` (both run by ORT on the CPU), with its tolerance."""
    import onnxruntime as ort

    runs = []
    for path in (fp32_path, fp16_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        runs.append(session.run(None, feeds))
    return [(f"{name} (fp16)", float(np.max(np.abs(h - f))) if f.size else 0.0, tolerance(name, f))
            for name, f, h in zip(names, *runs)]
