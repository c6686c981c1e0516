"""Benchmark PyTorch against ONNX Runtime on one model: latency, images/s, map bytes, memory.

Variants (see :data:`VARIANTS`) run the same input
batch in one interleaved loop (A B C A B C …) after untimed warm-ups; each
(variant, batch size) gets the median latency and its quartiles, images/s,
the bytes of attention maps copied to the host per image and the memory one
call needs. numba's first-call compile time of the renderer is reported
apart. The result is a dict (written as JSON), a markdown table and a plot.

From the command line (``attnvis bench``)::

    attnvis bench --preset vit-s --batch-sizes 1,8,32 --json bench/vit-s.json
    attnvis bench --model timm:vit_small_patch16_224 --device cuda --json out.json
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from attnvis.bench.config import _FILE_ORDER, VARIANTS, BenchConfig
from attnvis.errors import InputError
from attnvis.runtime.device import torch_device


# ---------------------------------------------------------------- setup
def _resolve_device(device: str) -> str:
    """``cuda`` or ``cpu`` (``auto``: CUDA if PyTorch can use it); an error for ``cuda`` without a GPU."""
    return torch_device(device).type


def _default_threads() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def _load(config: BenchConfig):
    from attnvis.bench._models import preset_source
    from attnvis.sources import load_source

    source = preset_source(config.preset) if config.preset else load_source(
        config.model, weights=config.weights, input_shape=config.input_shape)
    if len(source.example_inputs) != 1:
        raise InputError(f"--model {source.name}: the benchmark feeds one input tensor; this model takes "
                         f"{len(source.example_inputs)}")
    return source


def _files(config: BenchConfig, source, variants: list[str], device: str, folder: Path) -> dict[str, Path]:
    from attnvis.bench._models import export_file

    needed = {VARIANTS[v][1] for v in variants} - {None}
    files = {}
    for kind in (k for k in _FILE_ORDER if k in needed):
        _say(f"export {kind} → {folder}")
        files[kind] = export_file(kind, source, folder, device)
    return files


def _cache_folder(config: BenchConfig) -> Path:
    from attnvis.bench._models import cache_key
    from attnvis.runtime.loader import cache_dir

    parts = {"model": config.model or "default", "preset": config.preset, "weights": config.weights,
             "input_shape": config.input_shape}
    return cache_dir() / "bench" / cache_key(parts if not config.preset else {"preset": config.preset})


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- measurement
def _build_all(variants, files, source, device, threads, n_outputs, batch_max, shape) -> dict:
    """Build every variant; on CUDA, the device memory each holds after a call at the largest batch."""
    from attnvis.bench import _measure as measure
    import numpy as np

    from attnvis.bench._variants import TORCH_VARIANTS, Built, build

    built = {}
    x = np.zeros((batch_max, *shape), np.float32)
    for name in variants:
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()
            used = measure.device_used_mb()
        made = {}

        def setup() -> None:
            start = time.perf_counter()
            made["runner"] = build(name, files, source, device, threads, n_outputs)
            made["seconds"] = time.perf_counter() - start
            made["runner"].run(x)  # ORT's arena grows to the largest batch and stays

        # host memory the variant keeps (its weights copy, ORT's arena) plus what its first call needs
        host = measure.host_peak_mb(setup)
        built[name] = Built(name, made["runner"], made["seconds"], host_setup_mb=host)
        if device == "cuda" and name not in TORCH_VARIANTS:
            built[name].device_mb = measure.device_used_mb() - used
    return built


def _measure_batch(built: dict, batch: int, shape, config: BenchConfig, device: str) -> list[dict]:
    import numpy as np

    from attnvis.bench import _measure as measure
    from attnvis.bench._variants import TORCH_VARIANTS

    x = np.random.default_rng(batch).standard_normal((batch, *shape), dtype=np.float32)
    runs = {name: (lambda b=b: b.runner.run(x)) for name, b in built.items()}
    cpu: dict[str, list[float]] = {}
    times = measure.interleaved(runs, config.warmup, config.repeats, cpu=cpu)
    rows = []
    for name, b in built.items():
        map_bytes = b.runner.run(x)  # untimed: the bytes one call leaves on the host
        host = measure.host_peak_mb(runs[name])
        dev = None
        if device == "cuda":
            dev = measure.torch_peak_mb(runs[name]) if name in TORCH_VARIANTS else b.device_mb
        stats = measure.latency_stats(times[name])
        rows.append({"variant": name, "batch": batch, "latency_ms": stats,
                     "images_per_s": batch * 1e3 / stats["median"], "map_bytes_per_image": map_bytes / batch,
                     "cpu_ms": measure.latency_stats(cpu[name]), "host_peak_mb": host,
                     "host_setup_mb": b.host_setup_mb, "device_mb": dev})
    return rows


def _machine(device: str, threads: int) -> dict:
    import onnxruntime as ort
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": threads, "device_name": gpu or cpu,
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
            "ort_providers": ort.get_available_providers(), "platform": platform.platform()}


def run_benchmark(config: BenchConfig) -> dict:
    """Export (cached), build every variant, time them interleaved, measure memory and numba.

    Returns:
        The result as plain data (``config``, ``machine``, ``model``, ``variants``,
        ``rows``, ``checks``, ``numba``), ready for :func:`write_outputs`.

    Raises:
        InputError: a bad setting or model spec.
        DeviceError: CUDA asked for but not usable by a chosen variant.
        ModelError: the model cannot be loaded or exported.
    """
    import torch

    from attnvis.bench._onnx import is_onnx_file, load_onnx_model, onnx_variants
    from attnvis.bench._report import goal_checks
    from attnvis.bench._variants import check_variants, default_variants
    from attnvis.export.onnx import build_metadata

    config.check()
    device = _resolve_device(config.device)
    onnx_model = load_onnx_model(config.model) if is_onnx_file(config.model) else None  # ORT variants only
    variants = (onnx_variants(onnx_model, config.variants, device) if onnx_model
                else list(config.variants or default_variants(device)))
    check_variants(variants, device)
    threads = config.threads or _default_threads()
    torch.set_num_threads(threads)
    source = None if onnx_model else _load(config)
    meta = onnx_model.metadata if onnx_model else build_metadata(source, "none")
    shape = onnx_model.shape if onnx_model else tuple(source.example_inputs[0].shape[1:])
    with tempfile.TemporaryDirectory(prefix="attnvis-bench-") as tmp:
        folder = _cache_folder(config) if config.cache else Path(tmp)
        files = {onnx_model.kind: onnx_model.path} if onnx_model else _files(config, source, variants, device, folder)
        built = _build_all(variants, files, source, device, threads, len(meta.model_outputs),
                           max(config.batch_sizes), shape)
        rows = []
        for batch in config.batch_sizes:
            _say(f"batch {batch}: {len(variants)} variants × {config.repeats} interleaved runs")
            rows += _measure_batch(built, batch, shape, config, device)
    numba = _numba(meta) if config.render else {}
    return {
        "config": {**dataclasses.asdict(config), "device": device, "threads": threads, "variants": variants},
        "machine": _machine(device, threads),
        "model": onnx_model.info() if onnx_model else _model_info(source, meta, shape),
        "variants": {n: {"description": VARIANTS[n][0], "provider": b.runner.provider, "setup_s": b.setup_s}
                     for n, b in built.items()},
        "rows": rows, "checks": goal_checks(rows, device), "numba": numba,
    }


def _model_info(source, meta, shape) -> dict:
    return {"name": source.name, "layers": len(meta.layers), "heads": meta.layers[0].heads,
            "tokens": meta.layers[0].k_len, "input_shape": list(shape),
            "parameters": sum(p.numel() for p in source.model.parameters())}


def _numba(meta) -> dict:
    from attnvis.bench._measure import numba_timing

    grid = meta.tokens.grid or (14, 14)
    size = meta.preprocess.size if meta.preprocess else (224, 224)
    return numba_timing(tuple(grid), tuple(size))


# ---------------------------------------------------------------- outputs
def write_outputs(result: dict, json_path: str | Path | None, plot_path: str | Path | None = None,
                  plot: bool = True) -> list[Path]:
    """Write the JSON, the markdown table beside it (``.md``) and, with ``plot``, the plot
    (``plot_path``, else ``.png`` beside the JSON)."""
    from attnvis.bench._report import write_json, write_markdown, write_plot

    written = []
    if json_path:
        json_path = Path(json_path)
        written += [write_json(result, json_path), write_markdown(result, json_path.with_suffix(".md"))]
        plot_path = plot_path or (json_path.with_suffix(".png") if plot else None)
    if plot_path:
        written.append(write_plot(result, Path(plot_path)))
    return written


def summary(result: dict) -> str:
    """The result as the table printed on the terminal."""
    from attnvis.bench._report import summary_text

    return summary_text(result)
