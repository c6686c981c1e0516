"""The model a metric perturbs: any spec attnvis opens, run in batches for its class scores."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from attnvis.errors import InputError, ModelError

BATCH_SIZES = {"cpu": 32, "cuda": 128}  # masked copies per inference call


class Classifier:
    """Class scores of model inputs through one attnvis session (ORT by default, or the PyTorch backend).

    Args:
        model: a spec :func:`attnvis.runtime.open_model` takes (``default``, ``.onnx``, ``timm:NAME`` ...),
            or a session it returned (``OrtSession`` / ``TorchSession``).
        batch_size: copies per inference call (default: :data:`BATCH_SIZES` by device).
        device: where a spec is opened (``auto``, ``cpu``, ``cuda``).
    """

    def __init__(self, model, batch_size: int | None = None, device: str = "auto"):
        if isinstance(model, Classifier):
            model = model.session
        if hasattr(model, "run") and hasattr(model, "metadata"):
            self.session = model
        else:
            from attnvis.runtime import open_model

            self.session = open_model(model, device=device)
        meta = self.session.metadata
        if not meta.model_outputs:
            raise ModelError("the model has no class output (its export records no model outputs); "
                             "faithfulness metrics need a classifier")
        self.output = meta.model_outputs[0]
        self.batch_size = batch_size or BATCH_SIZES.get(getattr(self.session, "device", "cpu"), 32)
        if self.batch_size < 1:
            raise InputError(f"batch size must be a positive integer, got {self.batch_size}")

    @property
    def metadata(self):
        return self.session.metadata

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Logits of one inference call, float32 [n, classes]."""
        inner = getattr(self.session, "session", None)
        if getattr(self.session, "backend", "") == "ort" and getattr(self.session, "binder", None) is None:
            name = self.session.input_names[0]
            out = inner.run([self.output], {name: np.ascontiguousarray(x, np.float32)})[0]  # only the class output
        else:
            out = self.session.run(np.ascontiguousarray(x, np.float32)).outputs[self.output]
        out = np.asarray(out, np.float32)
        if out.ndim != 2:
            raise ModelError(f"the model's output {self.output!r} has shape {out.shape}; "
                             "faithfulness metrics need class scores [batch, classes]")
        return out

    def logits(self, x: np.ndarray) -> np.ndarray:
        """float32 [N, classes] for model inputs [N, C, H, W], ``batch_size`` at a time."""
        return np.concatenate([self._forward(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]) \
            if len(x) else np.zeros((0, 0), np.float32)

    def copies(self, count: int, per_image: int, build: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
        """Logits of ``per_image`` masked copies of each of ``count`` images, float32 [count, per_image, classes].

        ``build(b, ks)`` returns image ``b``'s copies number ``ks`` as [len(ks), C, H, W]; copies of
        several images share an inference call, ``batch_size`` at a time, and only one batch of
        copies is in memory at once.
        """
        out: np.ndarray | None = None
        for start, chunk in _chunks(count * per_image, self.batch_size, per_image, build):
            logits = self._forward(chunk)
            if out is None:
                out = np.empty((count * per_image, logits.shape[1]), np.float32)
            out[start:start + len(logits)] = logits
        return out.reshape(count, per_image, -1)


def _chunks(total: int, size: int, per_image: int, build) -> Iterator[tuple[int, np.ndarray]]:
    """(first flat index, batch) over flat copy indices ``b * per_image + k``, ``size`` at a time."""
    for start in range(0, total, size):
        stop = min(start + size, total)
        parts = []
        for b in range(start // per_image, (stop - 1) // per_image + 1):
            lo, hi = max(start, b * per_image) - b * per_image, min(stop, (b + 1) * per_image) - b * per_image
            parts.append(build(b, np.arange(lo, hi)))
        yield start, parts[0] if len(parts) == 1 else np.concatenate(parts)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32 (as ``torch.softmax`` of float32 logits)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def check_inputs(x: np.ndarray, maps: np.ndarray, target=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``x`` float32 [B, C, H, W]; ``maps`` [B, H, W] (a [B, h, w] patch grid upsampled bilinearly); ``target`` int [B]."""
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise InputError(f"x must be a model input [B, C, H, W], got shape {x.shape}")
    maps = input_maps(maps, x.shape[2:], len(x))
    if target is not None:
        target = np.asarray(target)
        target = np.full(len(x), int(target)) if target.ndim == 0 else target
        if target.shape != (len(x),) or not np.issubdtype(target.dtype, np.integer):
            raise InputError(f"target must be one class index per image (int [{len(x)}]), got {target.dtype} {target.shape}")
    return x, maps, target


def input_maps(maps: np.ndarray, size: tuple[int, int], batch: int) -> np.ndarray:
    """Maps at ``size`` (H, W): a smaller [B, h, w] grid is resized bilinearly (OpenCV ``INTER_LINEAR``, as the renderer)."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3 or len(maps) != batch:
        raise InputError(f"maps must be [B, H, W] with B = {batch} images, got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise InputError("maps hold NaN or infinite values")
    height, width = size
    if maps.shape[1:] == (height, width):
        return maps
    if maps.shape[1] > height or maps.shape[2] > width:
        raise InputError(f"maps of shape {maps.shape[1:]} do not match the images' {height}x{width} "
                         "(give them at the input's resolution, or as a smaller patch grid)")
    import cv2

    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])
