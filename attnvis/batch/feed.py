"""Feeding the model a batch: JPEG decode on the GPU where it can run, else a CPU thread pool.

:func:`choose_decoder` picks the decoder once per run:

- :class:`GpuDecoder` when PyTorch sees a CUDA device and torchvision has
  ``decode_jpeg`` (nvJPEG, batched): JPEG bytes go to the GPU, are decoded,
  resized and normalized there, and the batch stays there as a CUDA tensor
  (``OrtSession.run`` binds it in place). Other formats are decoded on the
  CPU and uploaded. The resize is ``torch.nn.functional.interpolate`` with
  antialiasing: close to PIL's filter, not equal to it (the GPU test allows a
  mean difference of 1 level of 255 and at most 8, decoders included).
- :class:`CpuDecoder` otherwise: :func:`attnvis.batch.decode.decode` per file
  on a thread pool (OpenCV and PIL release the GIL); the reference path.

A bad image never stops a batch: each decoder returns it in ``errors``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from attnvis.batch.decode import DEFAULT_MAX_PIXELS, decode, probe
from attnvis.errors import InputError
from attnvis.metadata import Preprocess

_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class Batch:
    """A decoded batch.

    Attributes:
        names: the images decoded, in order.
        images: RGB uint8 (H, W, 3) each (host arrays; CUDA tensors from :class:`GpuDecoder`).
        tensor: float32 (B, C, h, w): NumPy, or a CUDA tensor from :class:`GpuDecoder`.
        errors: name → one-line reason, for the images that failed.
    """

    names: list[str]
    images: list
    tensor: object
    errors: dict[str, str] = field(default_factory=dict)


def gpu_decode_usable() -> tuple[bool, str]:
    """(usable, why not): PyTorch with a CUDA device and torchvision's ``decode_jpeg``."""
    try:
        import torch
        import torchvision.io
    except ImportError:
        return False, "PyTorch and torchvision are not installed"
    if not torch.cuda.is_available():
        return False, "PyTorch sees no CUDA device"
    if not hasattr(torchvision.io, "decode_jpeg"):
        return False, "this torchvision has no decode_jpeg"
    return True, ""


def choose_decoder(device: str, pre: Preprocess, threads: int = 4, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The decoder for a run on ``device`` (``cuda`` | ``cpu``, already resolved): the GPU's only when usable.

    The choice and its reason are in the decoder's ``kind`` and ``reason``.
    """
    usable, why = gpu_decode_usable() if device == "cuda" else (False, f"the model runs on {device}")
    if usable:
        return GpuDecoder(pre, threads, max_pixels)
    return CpuDecoder(pre, threads, max_pixels, reason=why)


class CpuDecoder:
    """Decode and preprocess on a CPU thread pool (:func:`attnvis.batch.decode.decode` per file)."""

    kind = "cpu"

    def __init__(self, pre: Preprocess, threads: int = 4, max_pixels: int = DEFAULT_MAX_PIXELS, reason: str = ""):
        self.pre, self.max_pixels, self.reason = pre, max_pixels, reason
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="attnvis-decode")

    def _one(self, path: str):
        try:
            return decode(path, path, self.pre, self.max_pixels)
        except InputError as err:
            return str(err)

    def __call__(self, paths: list[str]) -> Batch:
        results = list(self.pool.map(self._one, paths))
        ok = [(p, r) for p, r in zip(paths, results) if not isinstance(r, str)]
        errors = {p: r for p, r in zip(paths, results) if isinstance(r, str)}
        tensor = np.stack([r.tensor for _, r in ok]) if ok else np.empty((0, 3, *self.pre.size), np.float32)
        return Batch([p for p, _ in ok], [r.image for _, r in ok], tensor, errors)


def resize_plan(height: int, width: int, pre: Preprocess) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resize h, w), (crop top, left)) as :func:`attnvis.runtime.images.preprocess` sizes an image."""
    out_h, out_w = pre.size
    if not pre.resize_short:
        return (out_h, out_w), (0, 0)
    scale_h, scale_w = (math.floor(s / pre.crop_pct + 1e-6) for s in (out_h, out_w))
    if scale_h == scale_w:  # torchvision's Resize(int) arithmetic
        size = (int(scale_w * height / width), scale_w) if width <= height else (scale_h, int(scale_h * width / height))
    else:
        size = (scale_h, scale_w)
    return size, (int(round((size[0] - out_h) / 2.0)), int(round((size[1] - out_w) / 2.0)))


class GpuDecoder(CpuDecoder):  # pragma: no cover - needs a GPU; gpu_check.sh runs it
    """nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``, batched; resize and normalize on the GPU."""

    kind = "cuda"

    def __init__(self, pre: Preprocess, threads: int = 4, max_pixels: int = DEFAULT_MAX_PIXELS):
        import torch

        super().__init__(pre, threads, max_pixels)
        self.torch, self.device = torch, torch.device("cuda")
        self.mean = torch.tensor(pre.mean, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(pre.std, device=self.device).view(3, 1, 1)

    def _read(self, path: str):
        try:
            with open(path, "rb") as f:
                data = f.read()
            probe(data, path, self.max_pixels)
            return data
        except OSError as err:
            return f"{path}: cannot read the file ({err.strerror or err})"
        except InputError as err:
            return str(err)

    def __call__(self, paths: list[str]) -> Batch:
        import torchvision.io

        torch = self.torch
        read = list(self.pool.map(self._read, paths))
        errors = {p: r for p, r in zip(paths, read) if isinstance(r, str)}
        good = [(p, r) for p, r in zip(paths, read) if not isinstance(r, str)]
        jpegs = [i for i, (_, data) in enumerate(good) if data[:3] == _JPEG_MAGIC]
        images: list = [None] * len(good)
        if jpegs:
            encoded = [torch.frombuffer(bytearray(good[i][1]), dtype=torch.uint8) for i in jpegs]
            try:
                decoded = torchvision.io.decode_jpeg(encoded, mode=torchvision.io.ImageReadMode.RGB, device="cuda")
            except RuntimeError:  # one corrupt JPEG fails the batched call: decode those one by one on the CPU
                decoded = [None] * len(jpegs)
            for i, chw in zip(jpegs, decoded):
                images[i] = chw
        for i, image in enumerate(images):
            if image is None:
                result = self._one(good[i][0])
                if isinstance(result, str):
                    errors[good[i][0]] = result
                else:
                    images[i] = torch.from_numpy(result.image).to(self.device).permute(2, 0, 1)
        kept = [(p, im) for (p, _), im in zip(good, images) if p not in errors]
        tensor = torch.stack([self._prepare(im) for _, im in kept]) if kept else None
        return Batch([p for p, _ in kept], [im.permute(1, 2, 0) for _, im in kept], tensor, errors)

    def _prepare(self, chw):
        """uint8 (3, H, W) on the GPU → float32 (3, h, w) resized, cropped and normalized."""
        torch = self.torch
        (h, w), (top, left) = resize_plan(chw.shape[1], chw.shape[2], self.pre)
        mode = self.pre.interpolation if self.pre.interpolation in ("bilinear", "bicubic") else "bilinear"
        x = torch.nn.functional.interpolate(chw[None].float(), size=(h, w), mode=mode, antialias=True,
                                            align_corners=False)[0].clamp_(0, 255).round_()
        x = x[:, top:top + self.pre.size[0], left:left + self.pre.size[1]]
        if self.pre.channel_order.upper() == "BGR":
            x = x.flip(0)
        return ((x * float(self.pre.scale) - self.mean) / self.std).contiguous()  # as preprocess()
