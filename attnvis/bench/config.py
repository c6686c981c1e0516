"""What a benchmark runs: the model presets, the variants and :class:`BenchConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from attnvis.errors import InputError
from attnvis.runtime.device import check_device


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
    "torch-eager": ("PyTorch eager with capture hooks, all maps, each copied to the host", None, ("cpu", "cuda")),
    "torch-pinned": ("PyTorch eager with hooks, all maps copied once per batch into pinned memory (non_blocking)",
                     None, ("cuda",)),
    "torch-pinned-cls": ("PyTorch eager with hooks, cls maps reduced on the device, pinned copies", None, ("cuda",)),
    "torch-compile": ("torch.compile of the hooked wrapper, all maps, pinned copies", None, ("cuda",)),
    "torch-compile-cls": ("torch.compile of the hooked wrapper, cls maps, pinned copies", None, ("cuda",)),
    "torchscript": ("TorchScript trace of the same wrapper, all maps", "torchscript", ("cpu", "cuda")),
    "ort-all": ("ONNX Runtime, all maps as outputs (IO binding on CUDA)", "all", ("cpu", "cuda")),
    "ort-cls": ("ONNX Runtime, in-graph cls reduction (IO binding on CUDA)", "cls", ("cpu", "cuda")),
    "ort-plain": ("ONNX Runtime, plain model without maps", "plain", ("cpu", "cuda")),
    "ort-iobind-cls": ("ORT IO binding: outputs stay on the device, only cls maps copied", "cls", ("cuda",)),
    "ort-fp16-all": ("fp16 export, all maps (float32 at the boundary), IO binding", "fp16-all", ("cuda",)),
    "ort-fp16-cls": ("fp16 export, cls maps, IO binding", "fp16-cls", ("cuda",)),
    "ort-fp16-plain": ("fp16 export, no maps", "fp16-plain", ("cuda",)),
    "ort-graph-fp16-cls": ("fp16 export, cls maps, CUDA graphs (one per batch size)", "fp16-cls", ("cuda",)),
}

_FILE_ORDER = ("all", "cls", "plain", "fp16-all", "fp16-cls", "fp16-plain", "torchscript")  # TorchScript last: it may move the model to CUDA


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
        check_device(self.device)
