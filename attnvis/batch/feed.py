"""Feeding the model a batch: JPEG decode on the GPU where it can run, else a CPU thread pool.

``attnvis batch --device cuda`` feeds the model through :class:`DeviceFeed`
when :func:`device_feed` finds it usable (PyTorch with a CUDA device,
torchvision's ``decode_jpeg``, a resize filter reproduced on the device):

- on the CPU threads (:meth:`DeviceFeed.read`), each file is read and its
  header checked as the CPU path checks it (:func:`attnvis.batch.decode.probe`:
  ``--max-pixels``, formats, pixel modes). A plain JPEG (a regular header,
  1 or 3 components, no EXIF rotation: :func:`attnvis.runtime._jpeg.is_plain`)
  is kept as bytes for the GPU; every other file (PNG, WebP, CMYK or
  EXIF-rotated JPEGs...) is decoded and preprocessed there by today's CPU
  path (:func:`attnvis.batch.stages.decode_item`), so what is accepted,
  refused or rotated is unchanged;
- on the driver, once per batch (:meth:`DeviceFeed.prepare`), the JPEGs are
  decoded together by nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``),
  resized, cropped and normalized on the device with Pillow's arithmetic
  (:mod:`attnvis.runtime._resample_torch`: the CPU path's values for the same
  pixels), and the batch stays there as a CUDA tensor that ONNX Runtime reads
  in place through IO binding (:mod:`attnvis.runtime._iobind`). A JPEG nvJPEG
  refuses goes to the CPU path, whose verdict stands.

nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's, so the pixels
of a JPEG can differ by a level or two from the CPU decode; everything after
the decode equals the CPU path's values.

:class:`CpuDecoder` and :class:`GpuDecoder` decode a list of files at once
(the same two paths, for callers outside a batch run).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from attnvis.batch.decode import DEFAULT_MAX_PIXELS, Decoded, decode, probe, read, read_checked
from attnvis.errors import InputError
from attnvis.metadata import Preprocess

_EOI = b"\xff\xd9"


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


@dataclass
class Encoded:
    """A plain JPEG, read and checked on a CPU thread, waiting for the device's decoder.

    Attributes:
        data: the file's bytes.
        size: (height, width) from its header.
        check: the file's :func:`~attnvis.batch.decode.source_check`, for the manifest.
    """

    data: bytes
    size: tuple[int, int]
    check: list[int] | None = None


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
    from attnvis.runtime._resample_torch import plan

    return plan(height, width, pre)


def nvjpeg(datas: list[bytes], device) -> list:
    """RGB uint8 (3, H, W) tensors on ``device`` by ``torchvision.io.decode_jpeg`` (nvJPEG, batched); ``None`` where refused."""
    import torch
    import torchvision.io as tio

    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    try:
        return list(tio.decode_jpeg(encoded, mode=tio.ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad JPEG fails the batched call: again one by one
        out = []
        for one in encoded:
            try:
                out.append(tio.decode_jpeg(one, mode=tio.ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def device_feed(pre: Preprocess | None, device: str = "cuda") -> tuple[bool, str]:
    """(usable, why not) for a batch fed on ``device``: a GPU for torchvision and a resize reproduced there."""
    from attnvis.runtime._resample_torch import supported

    if pre is None:
        return False, "the model takes tensors, not images"
    usable, why = gpu_decode_usable() if device == "cuda" else (True, "")
    return (usable, why) if not usable else supported(pre)


TORCH_DEVICE = "cuda"  # where DeviceFeed decodes (the tests' stand-in sets "cpu")


def for_run(session, plan, backend: str = "ort"):
    """A run's GPU side: (the feed or ``None``, the plan with its renderer, the summary's notes on both).

    Only a session that runs on CUDA gets either; a CPU run is left as it is.
    """
    from dataclasses import replace

    if session.device != "cuda":
        return None, plan, []
    from attnvis.batch._device_maps import reducible

    usable, why = device_feed(plan.metadata.preprocess) if backend == "ort" else (False, "the torch backend reads host arrays")
    render, render_why = _cuda_render(plan)
    plan = replace(plan, renderer="cuda") if render else plan
    feed = DeviceFeed(plan, TORCH_DEVICE, nvjpeg, image_on_device=render) if usable else None
    providers = getattr(session, "providers", None)  # what ORT actually runs, not what was asked for
    notes = [f"model: ONNX Runtime, providers used: {', '.join(providers)}" if providers else f"model: {backend} on cuda"]
    if not usable:
        notes.append(f"decode: on the CPU threads, not nvJPEG: {why}")
    reduce, reduce_why = reducible(plan)
    if feed is not None and reduce:
        feed.reduce_maps = True
        notes.append("maps: full maps reduced on the GPU to each head's query row"
                     + (" and the rollout row" if plan.store_layout is not None and plan.store_layout.rollout else "")
                     + ", copied to page-locked memory once per batch")
    elif plan.metadata.reduction == "none":
        notes.append(f"maps: full maps copied to the host ({reduce_why if not reduce else why})")
    else:
        notes.append(f"maps: reduced in-graph ({plan.metadata.reduction}), written by the GPU into one "
                     "page-locked buffer per batch")
    notes.append("render: on the GPU (numba-cuda), 8-bit images copied back, PNG encoding on the CPU threads" if render
                 else f"render: on the CPU threads ({render_why})")
    return feed, plan, notes


def _cuda_render(plan) -> tuple[bool, str]:
    """(render on the GPU, why not): ``--save images|both`` and numba-cuda usable; its kernels compiled here, once."""
    if plan.save == "maps":
        return False, "--save maps draws only the gallery's thumbnails"
    from attnvis.render.gpu import cuda_render_usable

    if not cuda_render_usable():
        return False, "numba-cuda is not installed or sees no GPU: pip install 'attnvis[gpu]'"
    try:
        warm_up_cuda(plan.options)  # compiled before the workers share it (a no-op after run_batch's warm-up)
    except Exception as err:  # noqa: BLE001 - a broken numba-cuda install: the CPU renders, and the note says why
        return False, f"numba-cuda cannot compile the render kernel here ({type(err).__name__}: {err})"
    return True, ""


def warm_up_cuda(options) -> None:
    """Compile (or load from numba's cache) the GPU render kernel: one tiny render.

    :func:`attnvis.batch.run.run_batch` calls it for ``--device cuda`` while the
    model opens, so that the seconds of a cold compile are not counted in the run.
    """
    from attnvis.render.gpu import cuda_render_usable, render_maps_cuda, sim_threads

    if cuda_render_usable():
        render_maps_cuda(np.ones((1, 2, 2), np.float32), np.zeros((4, 4, 3), np.uint8), options.colormap, options.alpha,
                         threads=sim_threads())


class DeviceFeed:
    """A batch run's decode and preprocessing on the GPU (see the module's docstring).

    Args:
        plan: the run's :class:`attnvis.batch.stages.RenderPlan`.
        device: the torch device (``cuda``; the tests' stand-in runs ``cpu``).
        decode_jpeg: ``f(list of bytes, device) -> list of (3, H, W) uint8 tensors or None``
            (default :func:`nvjpeg`; the tests pass a CPU stand-in).
        image_on_device: keep each decoded image on the device for the GPU renderer
            (``--save images|both``); else it is copied to the host.
    """

    kind = "cuda"

    def __init__(self, plan, device: str = "cuda", decode_jpeg=None, image_on_device: bool = False):
        import torch

        self.plan, self.torch = plan, torch
        self.device = torch.device(device)
        self.decode_jpeg = decode_jpeg or nvjpeg
        self.image_on_device = image_on_device and plan.save != "maps"
        self.counts = {"device": 0, "cpu": 0, "refused": 0}  # images by where they were decoded
        self.reduce_maps = False  # full maps reduced on the device (set by for_run)

    def read(self, item, plan, max_pixels: int):
        """On a CPU thread: :class:`Encoded` for a plain JPEG, else the CPU path's ``Decoded`` or failed record."""
        from attnvis.batch import stages
        from attnvis.runtime import _jpeg

        try:
            data, check = read_checked(item.path, item.key)
            probe(data, item.key, max_pixels)
        except InputError as err:
            return stages.failed_record(item.path, item.key, str(err), plan)
        size = _jpeg.size(data)
        if size is None or not data.endswith(_EOI) or not _jpeg.is_plain(data):  # a truncated file: the CPU's verdict
            return stages.decode_item(item, plan, max_pixels)
        return Encoded(data, (size[1], size[0]), check)

    def prepare(self, batch: list, batch_size: int):
        """On the driver: decode the batch's JPEGs on the device and make its input there.

        Args:
            batch: (item, :class:`Encoded` or ``Decoded``) pairs from :meth:`read`.
            batch_size: the input's batch (zero-padded past ``len(batch)``, as :func:`attnvis.batch.stages.infer`).

        Returns:
            (float32 (batch_size, 3, h, w) tensor on the device, the kept (item, ``Decoded``) pairs,
            failed records of JPEGs neither nvJPEG nor the CPU path could decode).
        """
        from attnvis.batch import stages

        jpegs = [i for i, (_, got) in enumerate(batch) if isinstance(got, Encoded)]
        decoded = dict(zip(jpegs, self.decode_jpeg([batch[i][1].data for i in jpegs], self.device))) if jpegs else {}
        on_device, kept, failed = {}, [], []
        for i, (item, got) in enumerate(batch):
            if isinstance(got, Encoded) and decoded.get(i) is not None:
                on_device[len(kept)] = decoded[i].permute(1, 2, 0)  # (H, W, 3)
                kept.append((item, got.check))  # a Decoded made by _finish, with this source check
                continue
            if isinstance(got, Encoded):  # nvJPEG refused it: the CPU path decides
                self.counts["refused"] += 1
                got = stages.decode_item(item, self.plan, 1 << 62)  # its header was checked by read()
                if isinstance(got, dict):
                    failed.append(got)
                    continue
            self.counts["cpu"] += 1
            kept.append((item, got))
        self.counts["device"] += len(on_device)
        return self._input(kept, on_device, batch_size), self._finish(kept, on_device), failed

    def _input(self, kept: list, on_device: dict, batch_size: int):
        from attnvis.runtime._resample_torch import preprocess_tensors

        torch, pre = self.torch, self.plan.metadata.preprocess
        x = torch.zeros((max(batch_size, len(kept)), 3, *pre.size), dtype=torch.float32, device=self.device)
        if on_device:
            x[list(on_device)] = preprocess_tensors(list(on_device.values()), pre)
        for i, (_, got) in enumerate(kept):
            if i not in on_device:
                x[i] = torch.from_numpy(got.tensor).to(self.device)
        if x.is_cuda:  # ORT reads the input on its own stream, which does not wait for torch's
            torch.cuda.current_stream(x.device).synchronize()
        return x

    def _finish(self, kept: list, on_device: dict) -> list:
        """The kept pairs with a ``Decoded`` each: the image where the render stage wants it."""
        out = []
        for i, (item, got) in enumerate(kept):
            if i in on_device:  # got: the source check
                image = on_device[i]
                size = tuple(int(s) for s in image.shape[:2])
                if self.plan.save == "maps" and not self.plan.thumbs:
                    image = np.empty((0, 0, 3), np.uint8)
                elif self.image_on_device and image.is_cuda:
                    image = image.contiguous()  # read in place by the render kernel
                else:
                    image = image.contiguous().cpu().numpy()  # --save maps: shrunk to the thumbnail by the render stage
                got = Decoded(image, np.empty((0,), np.float32), size, got)
            out.append((item, got))
        return out

    def infer(self, session, x, n: int):
        """The batch's maps (per image, per layer, host arrays), predictions and rollout rows (or ``None`` s).

        Full maps stay on the device and are reduced there when :attr:`reduce_maps`
        (:mod:`attnvis.batch._device_maps`); reduced maps come back as the session binds them.
        """
        from attnvis.batch import stages
        from attnvis.batch._device_maps import reduce_batch

        if not self.reduce_maps:
            maps, predictions, _ = stages.infer_batch(session, x, n)
            return maps, predictions, [None] * n
        out = session.run(x, host_maps=False)
        rows, rollouts = reduce_batch(out, n, self.plan, self.device)
        return rows, stages.predictions(out, n), rollouts

    def note(self) -> str:
        """The summary's line: which decoder ran, for how many images, and why the others did not."""
        c = self.counts
        where = "nvJPEG on the GPU (torchvision decode_jpeg)" if self.device.type == "cuda" else f"a stand-in on {self.device}"
        line = f"decode: {c['device']} plain JPEGs by {where}, resized and normalized there"
        others = c["cpu"]
        if others:
            line += (f"; {others} on the CPU threads (other formats, EXIF-rotated or CMYK JPEGs"
                     + (f", {c['refused']} JPEG(s) nvJPEG refused" if c["refused"] else "") + ")")
        return line


class GpuDecoder(CpuDecoder):  # pragma: no cover - needs a GPU; gpu_check.sh runs it
    """nvJPEG through ``torchvision.io.decode_jpeg(device="cuda")``, batched; resize and normalize on the GPU.

    Other formats and the JPEGs nvJPEG refuses are decoded on the CPU threads and uploaded.
    """

    kind = "cuda"

    def __init__(self, pre: Preprocess, threads: int = 4, max_pixels: int = DEFAULT_MAX_PIXELS):
        import torch

        super().__init__(pre, threads, max_pixels)
        self.torch, self.device = torch, torch.device("cuda")

    def _read(self, path: str):
        try:
            data = read(path, path)
            probe(data, path, self.max_pixels)
            return data
        except InputError as err:
            return str(err)

    def __call__(self, paths: list[str]) -> Batch:
        from attnvis.runtime import _jpeg
        from attnvis.runtime._resample_torch import preprocess_tensors

        torch = self.torch
        read_ = list(self.pool.map(self._read, paths))
        errors = {p: r for p, r in zip(paths, read_) if isinstance(r, str)}
        good = [(p, r) for p, r in zip(paths, read_) if not isinstance(r, str)]
        jpegs = [i for i, (_, data) in enumerate(good) if _jpeg.is_plain(data) and data.endswith(_EOI)]
        images: list = [None] * len(good)
        for i, chw in zip(jpegs, nvjpeg([good[i][1] for i in jpegs], self.device) if jpegs else []):
            images[i] = None if chw is None else chw.permute(1, 2, 0)
        for i, image in enumerate(images):
            if image is None:
                result = self._one(good[i][0])
                if isinstance(result, str):
                    errors[good[i][0]] = result
                else:
                    images[i] = torch.from_numpy(result.image).to(self.device)
        kept = [(p, im) for (p, _), im in zip(good, images) if p not in errors]
        tensor = preprocess_tensors([im for _, im in kept], self.pre) if kept else None
        return Batch([p for p, _ in kept], [im for _, im in kept], tensor, errors)
