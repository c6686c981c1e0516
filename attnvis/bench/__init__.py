"""Benchmark PyTorch against ONNX Runtime on one model: latency, images/s, map bytes, memory.

:func:`run_benchmark` runs a :class:`BenchConfig`; :func:`write_outputs` writes
its JSON, markdown table and plot. See :mod:`attnvis.bench.run`.
"""

from attnvis._lazy import lazy_attributes

_LAZY = {
    "PRESETS": "attnvis.bench.config",
    "VARIANTS": "attnvis.bench.config",
    "BenchConfig": "attnvis.bench.config",
    "Preset": "attnvis.bench.config",
    "run_benchmark": "attnvis.bench.run",
    "write_outputs": "attnvis.bench.run",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
