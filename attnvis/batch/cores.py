"""How a CPU batch shares the machine: ONNX Runtime's threads against the workers, and a batch that fits in memory.

**Threads by measured cost.** A render-bound model (the embedded tiny ViT:
milliseconds of inference, tens of milliseconds of PNG work per image) wants
one ORT thread and every core rendering; an inference-bound one (a ViT-S at
518 px: seconds of inference per image) wants every core in ORT. Which one a
model is shows on its first images, so :class:`CoreSplit` measures instead of
guessing: the run starts with one ORT thread, where ORT computes on the
calling thread and ``time.thread_time()`` around a batch is its whole CPU
cost, and the workers' decode and render CPU is timed the same way. After
one batch of each, ORT gets the cores in proportion to inference's share of
the CPU work::

    threads = clamp(round(cores * infer / (infer + render)), 1, cores)

so that both stages run at about the same rate, ``cores / (infer + render)``
images per second, which is all the cores can give. The session is
re-opened with that many threads before the second batch (a fraction of one
inference-bound batch's time), in place, so that the first one's memory is
freed first. The workers stay at one per core: a worker without an image to
decode or render sleeps, so they take only render's share, and one per core
keeps a render-bound model's cores busy while ORT waits for them.
``--threads`` and ``--workers`` still set either by hand; the run's summary
says what was measured and chosen.

**Memory for full maps.** With ``--reduce none`` every image carries
heads × Q × K floats per layer (544 MB for a DINOv2-S/14 at 518 px). At the
peak a run holds the batch being inferred and part of the one before, still
rendering (the render window): 1.3 times a batch's maps were measured beyond
a fixed 1.2 GB at 518 px (batch 3 and 8, benchmarks/RESULTS.md), and the
budget counts :data:`MAP_COPIES`. :func:`fit_batch` picks the largest batch
up to the asked one whose maps fit it (``--max-memory``, default
:data:`MEMORY_SHARE` of the memory available at the start).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from attnvis.metadata import ModelMetadata

MEMORY_SHARE = 0.6  # of the memory available at the start, for the maps in flight
MAP_COPIES = 2  # a batch's maps in flight at the peak: 1.3 measured (the batch, part of the one before), with room


def split_cores(cores: int, infer_s: float, render_s: float) -> int:
    """ORT's intra-op threads for per-image CPU costs ``infer_s`` and ``render_s`` on ``cores`` cores."""
    total = infer_s + render_s
    share = infer_s / total if total > 0 else 0.0
    return max(1, min(cores, round(cores * share)))


class CoreSplit:
    """Times the first batch's inference and the first decodes and renders, then settles ORT's threads.

    Args:
        cores: the cores the run may use.
        set_threads: re-opens the run's model session with a number of intra-op threads.
        images: images of inference to time before settling (the first batch).
    """

    RENDERS = 2  # renders timed before settling: the first of the first batch, done while the driver waits
    WAIT_S = 60.0  # at most, for those renders

    def __init__(self, cores: int, set_threads: Callable[[int], None], images: int):
        self.cores, self.set_threads, self.images = cores, set_threads, images
        self.threads = 1
        self._cpu = {"infer": [0.0, 0], "decode": [0.0, 0], "render": [0.0, 0]}  # CPU seconds, images
        self._lock = threading.Lock()
        self._rendered = threading.Event()
        self.note = ""

    @property
    def measuring(self) -> bool:
        return not self.note

    def timed(self, stage: str, fn: Callable, *args):
        """``fn(*args)`` for one image on a worker (``stage``: decode or render), its CPU time counted while measuring."""
        if not self.measuring:
            return fn(*args)
        start = time.thread_time()
        try:
            return fn(*args)
        finally:
            self._add(stage, time.thread_time() - start, 1)

    def infer(self, fn: Callable, tensors: list, *args):
        """``fn(tensors, *args)``: one batch on the driver, timed while measuring.

        Before it, once the first batch is timed, the split is settled: the
        driver waits for the first renders, then re-opens the session with the
        settled threads when they are more than one (a fraction of one
        inference-bound batch's time).
        """
        if not self.measuring:
            return fn(tensors, *args)
        if self._cpu["infer"][1] >= self.images:
            self._settle()
            return fn(tensors, *args)
        start = time.thread_time()  # one ORT thread computes on the calling thread: this is all its CPU
        result = fn(tensors, *args)
        self._add("infer", time.thread_time() - start, len(tensors))
        return result

    def _settle(self) -> None:
        self._rendered.wait(self.WAIT_S)
        with self._lock:
            per_image = {stage: cpu / n if n else 0.0 for stage, (cpu, n) in self._cpu.items()}
        work = per_image["decode"] + per_image["render"]
        self.threads = split_cores(self.cores, per_image["infer"], work)
        self.note = (f"threads: {self.threads} for ONNX Runtime of {self.cores} cores, from the CPU time per image "
                     f"of the first batch: inference {1000 * per_image['infer']:.0f} ms, decode + render "
                     f"{1000 * work:.0f} ms (--threads to set)")
        if self.threads > 1:
            self.set_threads(self.threads)

    def _add(self, stage: str, seconds: float, images: int) -> None:
        with self._lock:
            total = self._cpu[stage]
            total[0] += seconds
            total[1] += images
            if stage == "render" and total[1] >= min(self.RENDERS, self.images):  # a first batch of 1 has 1 render
                self._rendered.set()


@dataclass(frozen=True)
class BatchFit:
    """The inference batch chosen for a memory budget, and why."""

    batch_size: int
    map_bytes: int  # one image's maps, every layer
    budget: int
    note: str = ""


def map_bytes(meta: ModelMetadata) -> int:
    """Bytes of one image's maps as the model outputs them (float32)."""
    windows = [1 if layer.window is None else layer.window.num_windows for layer in meta.layers]  # Swin: per window
    if meta.reduction == "cls":  # a windowed block's is its stitched map, h·w of its stage
        per_layer = [layer.k_len - meta.tokens.prefix_tokens if layer.window is None
                     else layer.window.grid[0] * layer.window.grid[1] for layer in meta.layers]
    elif meta.reduction == "mean-heads":
        per_layer = [n * layer.q_len * layer.k_len for n, layer in zip(windows, meta.layers)]
    else:
        per_layer = [n * layer.heads * layer.q_len * layer.k_len for n, layer in zip(windows, meta.layers)]
    return 4 * sum(per_layer)


def available_memory() -> int:
    """Memory available to new allocations now (``MemAvailable``; psutil's where /proc is not there)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


#: ``--batch-size``'s default by the device running the model. On the CPU a batch gains nothing per
#: image and its maps outgrow the cache: ONNX Runtime on one thread took 1.26/1.29/1.45 ms an image at
#: batch 1/8/16 for the embedded ViT, and 130/142/159 ms for a DINOv2-S/14 at 224 px. A GPU wants larger.
BATCH_SIZES = {"cpu": 8, "cuda": 16}


def batch_size_for(batch_size: int | None, device: str) -> int:
    """``--batch-size``, or when not given its default for ``device`` (``cpu`` or ``cuda``)."""
    return batch_size or BATCH_SIZES.get(device, BATCH_SIZES["cpu"])


def fit_batch(meta: ModelMetadata, batch_size: int, max_memory: int | None) -> BatchFit:
    """The largest batch up to ``batch_size`` whose maps in flight fit ``max_memory`` bytes.

    ``None`` budgets :data:`MEMORY_SHARE` of the memory available now. A batch
    of one is used even when one image's maps do not fit; the note says so.
    """
    budget = max_memory if max_memory is not None else int(MEMORY_SHARE * available_memory())
    per_image = map_bytes(meta)
    fits = budget // max(1, MAP_COPIES * per_image)
    chosen = max(1, min(batch_size, fits))
    note = ""
    if chosen < batch_size:
        why = "not even one fits" if fits < 1 else f"{fits} fit"
        note = (f"batch: {chosen} per inference instead of {batch_size}: each image's maps are "
                f"{_size(per_image)}, about {MAP_COPIES}x that per image is in flight, and the budget is "
                f"{_size(budget)} ({why}; --max-memory to change it)")
    return BatchFit(chosen, per_image, budget, note)


def parse_size(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GB"``, ``"1000000"`` → bytes."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(value[-1:], 1)  # binary units
    number = value[:-1] if value[-1:] and value[-1] in "KMGT" else value
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise ValueError(f"{text!r} is not a size such as 8G, 512M or 1000000") from None
    if size <= 0:
        raise ValueError(f"{text!r}: the size must be positive")
    return size


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if unit == "GiB" else f"{n / scale:.0f} {unit}"
    return f"{n} B"
