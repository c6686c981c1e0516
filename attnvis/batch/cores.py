"""How a CPU batch shares the machine: ONNX Runtime's threads against the workers, and a batch that fits in memory.

**Threads by measured cost.** A render-bound model (the embedded tiny ViT:
milliseconds of inference, tens of milliseconds of PNG work per image) wants
one ORT thread and every core rendering; an inference-bound one (a ViT-S at
518 px: seconds of inference per image) wants every core in ORT. The first
batch runs at a first guess (:func:`first_threads`: the model's FLOPs per
image, from its size and token counts, against a few milliseconds of decode
and render per map), so that a short run is not spent at the wrong count;
:class:`CoreSplit` then measures that batch instead of trusting the guess.
ORT's CPU time is the process's CPU time over the inference call less what
the workers' threads used meanwhile (each worker's own CPU clock); at one
thread ORT computes on the calling thread and ``time.thread_time()`` is
exact. The workers' decode and render CPU is timed per image. Once one
batch and the first renders are timed, ORT gets the cores in proportion to
inference's share of the CPU work::

    threads = clamp(round(cores * infer / (infer + render)), 1, cores)

so that both stages run at about the same rate, ``cores / (infer + render)``
images per second, which is all the cores can give. Where that differs from
the guess the session is re-opened with it, in place, before the next batch
(the old session's memory freed first); a run too short to time its first
renders keeps the guess. The workers stay at one per core: a worker without
an image to decode or render sleeps, so they take only render's share, and
one per core keeps a render-bound model's cores busy while ORT waits for
them. ``--threads`` and ``--workers`` still set either by hand; the run's
summary says what was measured and chosen.

**Memory for full maps.** With ``--reduce none`` every image carries
heads × Q × K floats per layer (544 MB for a DINOv2-S/14 at 518 px). At the
peak a run holds the batch being inferred and part of the one before, still
rendering (the render window): 1.3 times a batch's maps were measured beyond
a fixed 1.2 GB at 518 px (batch 3 and 8, benchmarks/RESULTS.md), and the
budget counts :data:`MAP_COPIES`, plus what ORT holds per image of a batch
whatever the export outputs (its input tensor, one layer's attention scores
and probabilities: :func:`work_bytes`, most of a ``--reduce cls`` image).
:func:`fit_batch` picks the largest batch up to the asked one that fits
(``--max-memory``, default :data:`MEMORY_SHARE` of the memory available at
the start); the engine never pads a batch past the run's images.
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


#: The first guess's costs. ONNX Runtime's float32 kernels ran a DINOv2-S/14 at 518 px (~93 GFLOP) at
#: ~85 GFLOP/s on one core here; a lower rate leans the guess towards ORT, whose share is measured next.
CORE_FLOPS = 50e9
DECODE_GUESS_S = 0.003  # a 640x480 JPEG decoded and resized, per image
MAP_GUESS_S = 0.003  # one rendered map (overlay and heatmap, encoded and written), per image
HEAD_DIM_GUESS = 64  # the width of one attention head, which the metadata does not give


def flops_per_image(meta: ModelMetadata, model_bytes: int) -> float:
    """About the FLOPs of one image: every float32 weight applied to every token, and each layer's QKᵀ and AV."""
    tokens = [layer.q_len * (1 if layer.window is None else layer.window.num_windows) for layer in meta.layers]
    if not tokens:
        return 0.0
    weights = 2 * (model_bytes / 4) * sum(tokens) / len(tokens)
    attention = sum(4 * HEAD_DIM_GUESS * layer.heads * layer.q_len * layer.k_len
                    * (1 if layer.window is None else layer.window.num_windows) for layer in meta.layers)
    return weights + attention


def first_threads(cores: int, meta: ModelMetadata, model_bytes: int, maps_rendered: int) -> int:
    """ORT's threads for the first batch, before anything is measured (see the module's docstring)."""
    infer_s = flops_per_image(meta, model_bytes) / CORE_FLOPS
    return split_cores(cores, infer_s, DECODE_GUESS_S + MAP_GUESS_S * max(1, maps_rendered))


class CoreSplit:
    """Times the first batch's inference and the first decodes and renders, then settles ORT's threads.

    Args:
        cores: the cores the run may use.
        set_threads: re-opens the run's model session with a number of intra-op threads.
        images: images of inference to time before settling (the first batch).
        threads: the threads the session has now (:func:`first_threads`).
    """

    RENDERS = 2  # renders timed before settling: the first of the first batch
    WAIT_S = 60.0  # at most, for those renders, where the session runs at one thread (below)

    def __init__(self, cores: int, set_threads: Callable[[int], None], images: int, threads: int = 1):
        self.cores, self.set_threads, self.images = cores, set_threads, images
        self.threads = threads
        self._cpu = {"infer": [0.0, 0], "decode": [0.0, 0], "render": [0.0, 0]}  # CPU seconds, images
        self._lock = threading.Lock()
        self._rendered = threading.Event()
        self._clocks: set[int] = set()  # the workers' CPU clocks
        self.note = ""

    @property
    def measuring(self) -> bool:
        return not self.note

    def timed(self, stage: str, fn: Callable, *args):
        """``fn(*args)`` for one image on a worker (``stage``: decode or render), its CPU time counted while measuring."""
        if not self.measuring:
            return fn(*args)
        self._register()
        start = time.thread_time()
        try:
            return fn(*args)
        finally:
            self._add(stage, time.thread_time() - start, 1)

    def infer(self, fn: Callable, tensors: list, *args):
        """``fn(tensors, *args)``: one batch on the driver, timed while measuring.

        Before it, once a batch and the first renders are timed, the split is
        settled, and the session re-opened where the threads change. At one
        thread the driver waits for those renders (its batches are the slow
        ones); at more it goes on measuring, so that a short run never waits.
        """
        if not self.measuring:
            return fn(tensors, *args)
        if self._cpu["infer"][1] >= self.images and (self.threads == 1 or self._rendered.is_set()):
            self._settle()
            return fn(tensors, *args)
        if self.threads == 1:  # ORT computes on the calling thread: this is all its CPU
            start = time.thread_time()
            result = fn(tensors, *args)
            self._add("infer", time.thread_time() - start, len(tensors))
            return result
        start, workers, wall = time.process_time(), self._workers_cpu(), time.perf_counter()
        result = fn(tensors, *args)
        others = self._workers_cpu() - workers  # decodes and renders meanwhile, by the workers' own clocks
        cpu = min(time.process_time() - start - others, self.threads * (time.perf_counter() - wall))
        self._add("infer", max(cpu, 0.0), len(tensors))
        return result

    def finish(self) -> None:
        """At the end of the run: the note, where the run ended before the split was settled."""
        if self.measuring:
            self.note = (f"threads: {self.threads} for ONNX Runtime of {self.cores} cores, guessed from the model's "
                         "size (the run ended before its costs were timed; --threads to set)")

    def _settle(self) -> None:
        self._rendered.wait(self.WAIT_S)
        with self._lock:
            per_image = {stage: cpu / n if n else 0.0 for stage, (cpu, n) in self._cpu.items()}
        work = per_image["decode"] + per_image["render"]
        threads = split_cores(self.cores, per_image["infer"], work)
        self.note = (f"threads: {threads} for ONNX Runtime of {self.cores} cores, from the CPU time per image "
                     f"of the first batch: inference {1000 * per_image['infer']:.0f} ms, decode + render "
                     f"{1000 * work:.0f} ms (--threads to set)")
        if threads != self.threads:
            self.threads = threads
            self.set_threads(threads)

    def _register(self) -> None:
        """Count the calling worker's CPU clock (once per thread)."""
        try:
            clock = time.pthread_getcpuclockid(threading.get_ident())
        except (AttributeError, OSError):  # no per-thread clocks: ORT's share then includes the workers'
            return
        if clock not in self._clocks:
            with self._lock:
                self._clocks.add(clock)

    def _workers_cpu(self) -> float:
        total = 0.0
        for clock in list(self._clocks):
            try:
                total += time.clock_gettime(clock)
            except OSError:  # a worker that has ended
                pass
        return total

    def _add(self, stage: str, seconds: float, images: int) -> None:
        with self._lock:
            total = self._cpu[stage]
            total[0] += seconds
            total[1] += images
            if stage == "render" and total[1] >= min(self.RENDERS, self.images):  # a first batch of 1 has 1 render
                self._rendered.set()


def per_thread_clocks() -> bool:
    """Whether this platform gives each thread's CPU clock (measuring at more than one ORT thread needs it)."""
    return hasattr(time, "pthread_getcpuclockid") and hasattr(time, "clock_gettime")


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


def work_bytes(meta: ModelMetadata) -> int:
    """Bytes ORT holds per image of a batch besides the maps it outputs: the input tensor, and one
    layer's attention scores and probabilities (float32), the largest, which every export computes."""
    pre = meta.preprocess
    pixels = 3 * pre.size[0] * pre.size[1] if pre is not None else 0
    scores = max((layer.heads * layer.q_len * layer.k_len * (1 if layer.window is None else layer.window.num_windows)
                  for layer in meta.layers), default=0)
    return 4 * (pixels + 2 * scores)


def fit_batch(meta: ModelMetadata, batch_size: int, max_memory: int | None) -> BatchFit:
    """The largest batch up to ``batch_size`` whose memory in flight fits ``max_memory`` bytes.

    Per image of the batch: :data:`MAP_COPIES` times its maps and :func:`work_bytes`.
    ``None`` budgets :data:`MEMORY_SHARE` of the memory available now. A batch
    of one is used even when one image does not fit; the note says so.
    """
    budget = max_memory if max_memory is not None else int(MEMORY_SHARE * available_memory())
    per_image, work = map_bytes(meta), work_bytes(meta)
    fits = budget // max(1, MAP_COPIES * per_image + work)
    chosen = max(1, min(batch_size, fits))
    note = ""
    if chosen < batch_size:
        why = "not even one fits" if fits < 1 else f"{fits} fit"
        flight = (f"about {MAP_COPIES}x that per image is in flight" if meta.reduction == "none" else  # maps rule
                  f"with its input and attention scores {_size(MAP_COPIES * per_image + work)} per image is in flight")
        note = (f"batch: {chosen} per inference instead of {batch_size}: each image's maps are "
                f"{_size(per_image)}, {flight}, and the budget is "
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
