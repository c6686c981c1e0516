"""The benchmarked ways of getting a batch's attention maps onto the host.

Each variant takes the same float32 host batch (B, C, H, W), runs the model
and returns how many bytes of attention maps it left in host memory; the
model's own outputs are fetched too except where the variant says otherwise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnvis.bench.config import VARIANTS
from attnvis.runtime.device import ort_providers, torch_device
from attnvis.errors import InputError

TORCH_VARIANTS = ("torch-eager", "torchscript")


def default_variants(device: str) -> list[str]:
    """Every variant that applies to ``device`` (``cpu`` or ``cuda``)."""
    return [name for name, (_, _, devices) in VARIANTS.items() if device in devices]


def check_variants(names: list[str], device: str) -> None:
    """Reject unknown names, and ORT-on-CUDA variants when ORT has no usable CUDA provider.

    Raises:
        InputError: an unknown variant name.
        DeviceError: CUDA asked for but not usable by the runtime a variant needs.
    """
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise InputError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if device != "cuda":
        return
    torch_device("cuda")  # DeviceError when PyTorch sees no GPU
    if any(n not in TORCH_VARIANTS for n in names):
        ort_providers("cuda")  # DeviceError when ORT's CUDA provider cannot load; sessions check get_providers()


def _map_bytes(arrays) -> int:
    return int(sum(a.nbytes for a in arrays))


class TorchEager:
    """:class:`~attnvis.runtime.TorchSession`: hooks attached per call, every output copied to the host."""

    def __init__(self, source, device: str, threads: int):
        from attnvis.runtime import TorchSession

        self.session = TorchSession(source, device=device, reduce="none", threads=threads)
        self.provider = self.session.provider

    def run(self, x: np.ndarray) -> int:
        return _map_bytes(self.session.run(x).maps)


class TorchScript:
    """The traced wrapper (no hooks left: the maps are graph outputs); every output copied to the host."""

    def __init__(self, path: Path, device: str, n_model_outputs: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            self.module = torch.jit.load(str(path), map_location=device).eval()
        self.device, self.n = torch.device(device), n_model_outputs
        self.provider = f"torchscript-{device}"

    @torch.no_grad()
    def run(self, x: np.ndarray) -> int:
        outputs = [t.cpu().numpy() for t in self.module(torch.from_numpy(x).to(self.device))]
        return _map_bytes(outputs[self.n:])


class OrtPlain:
    """:class:`~attnvis.runtime.OrtSession`'s own ``run``: every output fetched as NumPy."""

    def __init__(self, path: Path, device: str, threads: int):
        from attnvis.runtime import OrtSession

        self.session = OrtSession(path, device=device, threads=threads)
        self.provider = self.session.provider

    def run(self, x: np.ndarray) -> int:
        return _map_bytes(self.session.run(x).maps)


class OrtBound(OrtPlain):
    """IO binding: input copied in, outputs left where ORT made them, only the ``attn_*`` maps copied out."""

    def __init__(self, path: Path, device: str, threads: int):
        super().__init__(path, device, threads)
        raw = self.session.session
        self.binding = raw.io_binding()
        self.out_device = "cuda" if self.session.device == "cuda" else "cpu"
        names = [o.name for o in raw.get_outputs()]
        self.maps_at = [i for i, n in enumerate(names) if n.startswith("attn_")]
        for name in names:
            self.binding.bind_output(name, self.out_device)
        self.input_name = self.session.input_names[0]

    def run(self, x: np.ndarray) -> int:
        self.binding.bind_cpu_input(self.input_name, x)
        self.session.session.run_with_iobinding(self.binding)
        outputs = self.binding.get_outputs()  # OrtValues, still on the device
        return _map_bytes(outputs[i].numpy() for i in self.maps_at)


@dataclass
class Built:
    """A ready variant and what building it cost."""

    name: str
    runner: object
    setup_s: float
    host_setup_mb: float | None = None
    device_mb: float | None = None


def build(name: str, files: dict[str, Path], source, device: str, threads: int, n_model_outputs: int):
    """Construct variant ``name`` over its file (already exported)."""
    if name == "torch-eager":
        return TorchEager(source, device, threads)
    if name == "torchscript":
        return TorchScript(files["torchscript"], device, n_model_outputs)
    kind = VARIANTS[name][1]
    if name in ("ort-iobind-cls", "ort-fp16-cls"):
        return OrtBound(files[kind], device, threads)
    return OrtPlain(files[kind], device, threads)
