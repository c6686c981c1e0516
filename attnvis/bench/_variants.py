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
from attnvis.errors import InputError, ModelError

TORCH_VARIANTS = tuple(n for n in VARIANTS if n.startswith("torch"))  # run by PyTorch, not ORT


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
    """IO binding forced on (it is :class:`OrtSession`'s CUDA default): full maps stay on the device, reduced ones copied."""

    def __init__(self, path: Path, device: str, threads: int, cuda_graph: bool = False):
        from attnvis.runtime import OrtSession

        self.session = OrtSession(path, device=device, threads=threads, io_binding=True, cuda_graph=cuda_graph)
        self.provider = self.session.provider + ("+graph" if cuda_graph else "")

    def run(self, x: np.ndarray) -> int:
        maps = self.session.run(x, host_maps=False).maps
        return _map_bytes(m for m in maps if isinstance(m, np.ndarray))


class TorchPinned:
    """PyTorch eager (or ``torch.compile``) with capture hooks, on its own copy of the model.

    The batch goes up once through a pinned staging buffer; every map of the
    batch is copied into pinned host tensors with ``non_blocking=True`` and one
    synchronization per batch, as a careful PyTorch pipeline would: the fair
    baseline for ORT's IO binding. ``reduce="cls"`` reduces on the device first.
    """

    def __init__(self, source, device: str, reduce: str, compile: bool = False):
        import contextlib
        import copy

        from attnvis.export.onnx import build_metadata
        from attnvis.export.wrapper import AttentionOutputs, capture_for

        self.device = torch_device(device)
        model = copy.deepcopy(source.model).to(self.device).eval()
        meta = build_metadata(source, reduce)
        self.n = len(meta.model_outputs)
        self._hooks = contextlib.ExitStack()  # the hooks stay on this copy for the variant's life
        recorder = self._hooks.enter_context(capture_for(model, reduce, meta.tokens))
        wrapper = AttentionOutputs(model, recorder, meta.tokens, reduce).eval()
        self.forward = torch.compile(wrapper) if compile else wrapper
        self.compiled = compile
        self.provider = f"torch-{'compile' if compile else 'eager'}-{self.device.type}"
        self.pin = self.device.type == "cuda"
        self._host: dict[tuple, list[torch.Tensor]] = {}

    def model_is_copy(self, model) -> bool:
        """Whether this variant runs its own copy of ``model`` (its hooks never touch the others')."""
        wrapped = getattr(self.forward, "_orig_mod", self.forward)
        return wrapped.model is not model

    def _forward(self, x: torch.Tensor):
        if not self.compiled:
            return self.forward(x)
        try:
            return self.forward(x)
        except Exception as err:  # dynamo/inductor raise many types; the bench names the variant and goes no further
            raise ModelError(f"torch.compile cannot compile the hooked model: {str(err).splitlines()[0][:200]}; "
                             "leave the torch-compile variants out") from None

    def _buffers(self, tensors) -> list[torch.Tensor]:
        key = tuple(tuple(t.shape) for t in tensors)
        if key not in self._host:
            self._host[key] = [torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pin) for t in tensors]
        return self._host[key]

    @torch.no_grad()
    def run(self, x: np.ndarray) -> int:
        (staged,) = self._buffers([torch.from_numpy(x)])
        staged.copy_(torch.from_numpy(x))
        outputs = self._forward(staged.to(self.device, non_blocking=True))
        host = self._buffers(outputs)
        for dst, src in zip(host, outputs):
            dst.copy_(src, non_blocking=True)
        if self.pin:
            torch.cuda.synchronize(self.device)
        return int(sum(t.numel() * t.element_size() for t in host[self.n:]))


@dataclass
class Built:
    """A ready variant and what building it cost."""

    name: str
    runner: object
    setup_s: float
    host_setup_mb: float | None = None
    device_mb: float | None = None


def build(name: str, files: dict[str, Path], source, device: str, threads: int, n_model_outputs: int):
    """Construct variant ``name`` over its file (already exported).

    Raises:
        ModelError: ``torch.compile`` cannot compile the hooked model (its first call is where it fails).
    """
    if name == "torch-eager":
        return TorchEager(source, device, threads)
    if name.startswith(("torch-pinned", "torch-compile")):
        return TorchPinned(source, device, "cls" if name.endswith("-cls") else "none",
                           compile=name.startswith("torch-compile"))
    if name == "torchscript":
        return TorchScript(files["torchscript"], device, n_model_outputs)
    kind = VARIANTS[name][1]
    if name == "ort-iobind-cls" or name.startswith("ort-graph-"):
        return OrtBound(files[kind], device, threads, cuda_graph=name.startswith("ort-graph-"))
    return OrtPlain(files[kind], device, threads)
