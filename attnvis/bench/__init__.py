"""Benchmark PyTorch against ONNX Runtime on one model: latency, images/s, map bytes, memory.

Variants (see :data:`VARIANTS`) run the same input
batch in one interleaved loop (A B C A B C …) after untimed warm-ups; each
(variant, batch size) gets the median latency and its quartiles, images/s,
the bytes of attention maps copied to the host per image and the memory one
call needs. numba's first-call compile time of the renderer is reported
apart. The result is a dict (written as JSON), a markdown table and a plot.

Usage::

    attnvis bench --preset vit-s --batch-sizes 1,8,32 --json bench/vit-s.json
    attnvis bench --model timm:vit_small_patch16_224 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from attnvis.errors import InputError

@dataclass(frozen=True)
class Preset:
    """A ViT shape: image side, patch side, width, depth, heads."""

    image: int
    patch: int
    dim: int
    depth: int
    heads: int
    note: str


#: Random-weight timm ViTs for benchmarks and CI; ``vit-s`` / ``vit-b`` have ViT-S/16's and ViT-B/16's shape and cost.
PRESETS: dict[str, Preset] = {
    "vit-micro": Preset(32, 8, 32, 2, 4, "2 layers, 16 patches: for tests"),
    "vit-s": Preset(224, 16, 384, 12, 6, "ViT-S/16 shape, 22M parameters"),
    "vit-b": Preset(224, 16, 768, 12, 12, "ViT-B/16 shape, 86M parameters"),
}

#: name → (what it measures, file kind it runs, devices it runs on by default)
VARIANTS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "torch-eager": ("PyTorch eager with capture hooks, all maps", None, ("cpu", "cuda")),
    "torchscript": ("TorchScript trace of the same wrapper, all maps", "torchscript", ("cpu", "cuda")),
    "ort-all": ("ONNX Runtime, all maps as outputs", "all", ("cpu", "cuda")),
    "ort-cls": ("ONNX Runtime, in-graph cls reduction", "cls", ("cpu", "cuda")),
    "ort-plain": ("ONNX Runtime, plain model without maps", "plain", ("cpu", "cuda")),
    "ort-iobind-cls": ("ORT IO binding: outputs stay on the device, only cls maps copied", "cls", ("cuda",)),
    "ort-fp16-cls": ("fp16 export, cls maps, IO binding", "fp16", ("cuda",)),
}

_FILE_ORDER = ("all", "cls", "plain", "fp16", "torchscript")  # TorchScript last: it may move the model to CUDA


@dataclass
class BenchConfig:
    """What to benchmark and how; each field is the CLI flag of the same name.

    Attributes:
        model: a ``--model`` spec (HF directory, ``timm:NAME``, ``package.module:factory``, ``default``).
        preset: a random-weight ViT from :data:`PRESETS` instead of ``model``.
        batch_sizes: batch sizes to time.
        device: ``auto`` (CUDA if PyTorch sees a GPU), ``cpu`` or ``cuda``.
        threads: intra-op threads for PyTorch and ORT alike; ``None``: the physical cores.
        repeats: timed calls per variant and batch size.
        warmup: untimed calls per variant and batch size before the timed ones.
        variants: names from :data:`VARIANTS`; ``None``: all that apply to the device.
        weights: local weights for ``timm:NAME`` / ``torchvision:NAME``.
        input_shape: ``B,C,H,W`` for ``package.module:factory`` models.
        render: also time numba's first and later ``render_map`` calls.
        cache: keep exports under the attnvis cache (``$ATTNVIS_CACHE``) between runs.
    """

    model: str | None = None
    preset: str | None = None
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    device: str = "auto"
    threads: int | None = None
    repeats: int = 10
    warmup: int = 2
    variants: tuple[str, ...] | None = None
    weights: str | None = None
    input_shape: str | None = None
    render: bool = True
    cache: bool = True

    def check(self) -> None:
        """Raise :class:`InputError` naming the first bad value."""
        if self.model and self.preset:
            raise InputError(f"give --model {self.model} or --preset {self.preset}, not both")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InputError(f"--batch-sizes must be positive integers, got {self.batch_sizes}")
        if self.repeats < 1 or self.warmup < 0:
            raise InputError(f"--repeats must be ≥ 1 and --warmup ≥ 0, got {self.repeats} and {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be ≥ 1, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"--device {self.device!r} is not one of auto, cpu, cuda")


# ---------------------------------------------------------------- setup
def _resolve_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _default_threads() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def _load(config: BenchConfig):
    from attnvis.bench._models import preset_source
    from attnvis.export.sources import load_source

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

    from attnvis.bench._report import goal_checks
    from attnvis.bench._variants import check_variants, default_variants
    from attnvis.export.onnx import build_metadata

    config.check()
    device = _resolve_device(config.device)
    variants = list(config.variants or default_variants(device))
    check_variants(variants, device)
    threads = config.threads or _default_threads()
    torch.set_num_threads(threads)
    source = _load(config)
    meta = build_metadata(source, "none")
    shape = tuple(source.example_inputs[0].shape[1:])
    with tempfile.TemporaryDirectory(prefix="attnvis-bench-") as tmp:
        folder = _cache_folder(config) if config.cache else Path(tmp)
        files = _files(config, source, variants, device, folder)
        built = _build_all(variants, files, source, device, threads, len(meta.model_outputs),
                           max(config.batch_sizes), shape)
        rows = []
        for batch in config.batch_sizes:
            _say(f"batch {batch}: {len(variants)} variants × {config.repeats} interleaved runs")
            rows += _measure_batch(built, batch, shape, config, device)
    numba = _numba(meta, source) if config.render else {}
    return {
        "config": {**dataclasses.asdict(config), "device": device, "threads": threads, "variants": variants},
        "machine": _machine(device, threads), "model": _model_info(source, meta, shape),
        "variants": {n: {"description": VARIANTS[n][0], "provider": b.runner.provider, "setup_s": b.setup_s}
                     for n, b in built.items()},
        "rows": rows, "checks": goal_checks(rows, device), "numba": numba,
    }


def _model_info(source, meta, shape) -> dict:
    return {"name": source.name, "layers": len(meta.layers), "heads": meta.layers[0].heads,
            "tokens": meta.layers[0].k_len, "input_shape": list(shape),
            "parameters": sum(p.numel() for p in source.model.parameters())}


def _numba(meta, source) -> dict:
    from attnvis.bench._measure import numba_timing

    grid = meta.tokens.grid or (14, 14)
    size = source.preprocess.size if source.preprocess else (224, 224)
    return numba_timing(tuple(grid), tuple(size))


# ---------------------------------------------------------------- outputs and CLI
def write_outputs(result: dict, json_path: str | Path | None, plot_path: str | Path | None = None) -> list[Path]:
    """Write the JSON, the markdown table beside it (``.md``) and the plot (``--plot``, else ``.png`` beside it)."""
    from attnvis.bench._report import write_json, write_markdown, write_plot

    written = []
    if json_path:
        json_path = Path(json_path)
        written += [write_json(result, json_path), write_markdown(result, json_path.with_suffix(".md"))]
        plot_path = plot_path or json_path.with_suffix(".png")
    if plot_path:
        written.append(write_plot(result, Path(plot_path)))
    return written


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 1,8,32") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be positive integers")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``bench`` flags; defaults come from :class:`BenchConfig`."""
    d = BenchConfig()
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model", default=d.model, help="'default', a Hugging Face model directory, timm:NAME, "
                       "torchvision:NAME or package.module:factory (with --input-shape)")
    model.add_argument("--preset", default=d.preset, choices=tuple(PRESETS),
                       help="a random-weight timm ViT, no file needed: " + "; ".join(f"{k}: {v.note}" for k, v in PRESETS.items()))
    p.add_argument("--batch-sizes", type=_int_list, default=d.batch_sizes, help="comma-separated (default 1,8,32)")
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=d.threads, help="intra-op threads for both runtimes (default: physical cores)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed calls per variant and batch size")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed calls per variant and batch size first")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of: {', '.join(VARIANTS)} "
                   "(default: all that apply to the device)")
    p.add_argument("--weights", default=d.weights, help="local weights for timm:NAME / torchvision:NAME")
    p.add_argument("--input-shape", default=d.input_shape, help="B,C,H,W for package.module:factory models")
    p.add_argument("--json", default=None, help="write the result here, the markdown table beside it (.md)")
    p.add_argument("--plot", default=None, help="PNG of images/s by batch size (default: beside --json)")
    p.add_argument("--no-render", dest="render", action="store_false", help="skip the numba render_map timing")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="export into a temporary folder")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` that the parsed flags describe."""
    names = {f.name for f in dataclasses.fields(BenchConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if values.get("variants"):
        values["variants"] = tuple(v.strip() for v in values["variants"].split(",") if v.strip())
    return BenchConfig(**values)


def run_bench_cli(args: argparse.Namespace) -> int:
    """``attnvis bench``: run, print the table, write the files."""
    result = run_benchmark(config_from_args(args))
    print(_summary(result))
    for path in write_outputs(result, args.json, args.plot):
        print(f"wrote {path}")
    return 0


def _summary(result: dict) -> str:
    from attnvis.bench._report import summary_text

    return summary_text(result)
