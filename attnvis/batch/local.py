"""The local engine: the stages on a thread pool in one process, with bounded windows.

Why threads and not processes: every heavy step releases the GIL: file reads,
``cv2.imdecode``, PIL's resize, ONNX Runtime, the numba render kernels
(``nogil``), NumPy's PNG row filter and ISA-L's deflate. What holds the GIL
is a few hundred microseconds of Python glue per image, so threads keep both
cores of a small machine busy without pickling megabyte images between
processes (``benchmarks/bench_batch.py`` measures CPU time per wall second).
The one model session is used by the driving thread only.

Flow (``W`` workers, ``B`` batch size)::

    items ──► decode (pool, ≤ B + 2W ahead) ──► infer (driver, B per call)
          ──► render + encode + write (pool, ≤ B + 2W in flight) ──► manifest (driver)

On CUDA (:func:`attnvis.batch.feed.for_run`) the decode lane only reads and
checks each file; the driver decodes a batch's JPEGs on the GPU with nvJPEG,
makes the model's input there, and hands the render lane each head's query
rows (full maps are reduced on the GPU) and, for ``--save images``, the image
still on the device for the GPU renderer.

The render window holds more than a batch, so the workers still have renders
queued while the driver runs the next inference. Memory is bounded by those
windows, whatever the number of images.

The driver is the critical path (every image waits for its inference), so the
workers run at a lower priority (:data:`WORKER_NICE`): where threads
outnumber cores, the scheduler then never preempts the model for a decode or a
render, and the workers take what the model leaves. With ``--save maps`` on 2
cores that is ~8% more images/s; with ``--save images`` the workers are the
bottleneck either way and nothing changes (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from attnvis.batch.cores import CoreSplit
from attnvis.batch.inputs import Item
from attnvis.batch.stages import RenderPlan, decode_item, infer, render_item, store_row

WORKER_NICE = 5  # niceness added to the worker threads: each then weighs ~1/3 of the driver with the scheduler


class LocalEngine:
    """Runs items through the stages on ``workers`` threads.

    Args:
        session: an open model session (used by the calling thread only).
        plan: the run's render plan.
        root: the output folder.
        batch_size: images per inference call.
        workers: decode/render threads (default: the cores available).
        max_pixels: decode limit (see :func:`attnvis.batch.decode.probe`).
        split: times the first batch and settles ORT's threads (:class:`attnvis.batch.cores.CoreSplit`).
        feed: the GPU's decoder (:class:`attnvis.batch.feed.DeviceFeed`): the workers read and check
            the files, the driver decodes each batch's JPEGs on the device; ``None``: the CPU decode.
        explainer: with ``--method``, the :class:`attnvis.relevance.Explainer` (``session`` is then
            ``None`` where no attention map is needed).
    """

    def __init__(self, session, plan: RenderPlan, root: Path, batch_size: int = 16, workers: int | None = None,
                 max_pixels: int = 40_000_000, split: CoreSplit | None = None, feed=None, explainer=None):
        self.session, self.plan, self.root = session, plan, Path(root)
        self.explain = None if explainer is None else (explainer, plan.target)  # --method: see stages.infer
        self.batch_size = batch_size
        self.workers = workers or available_cores()
        self.max_pixels = max_pixels
        self.split = split
        self.feed = feed
        self.notes: list[str] = []  # for the run's summary

    def run(self, items: Iterable[Item], sink: Callable[[dict], None]) -> None:
        """Process ``items``; call ``sink(record)`` on the calling thread once per item."""
        in_flight = self.batch_size + 2 * self.workers
        # --save maps keeps only thumbnail pixels per decoded image, and its inference is most of the
        # work left on the critical path: three batches of decodes ahead keep both cores busy meanwhile.
        ahead = (3 if self.plan.save == "maps" else 1) * self.batch_size + 2 * self.workers
        with ThreadPoolExecutor(self.workers, thread_name_prefix="attnvis-batch", initializer=lower_priority) as pool:
            decoding: deque[tuple[Item, Future]] = deque()
            rendering: deque[Future] = deque()
            source = iter(items)
            try:
                while True:
                    self._fill(pool, source, decoding, ahead)
                    batch = self._next_batch(decoding, rendering, sink, pool, source, ahead)
                    if not batch:
                        break
                    self._submit_renders(pool, batch, rendering, sink, in_flight)
                while rendering:
                    sink(rendering.popleft().result())
                if self.split is not None:
                    self.split.finish()
                    self.notes.append(self.split.note)
                if self.feed is not None:
                    self.notes.append(self.feed.note())
            except BaseException:
                for future in [f for _, f in decoding] + list(rendering):
                    future.cancel()
                raise

    def _fill(self, pool, source, decoding, ahead: int) -> None:
        while len(decoding) < ahead:
            item = next(source, None)
            if item is None:
                return
            read = decode_item if self.feed is None else self.feed.read
            decoding.append((item, self._submit(pool, "decode", read, item, self.plan, self.max_pixels)))

    def _next_batch(self, decoding, rendering, sink, pool, source, ahead) -> list:
        """Up to ``batch_size`` decoded images, in input order; bad files go to ``sink``."""
        batch = []
        while decoding and len(batch) < self.batch_size:
            item, future = decoding.popleft()
            self._fill(pool, source, decoding, ahead)
            result = future.result()
            if isinstance(result, dict):
                sink(result)
            else:
                batch.append((item, result))
            while rendering and rendering[0].done():
                sink(rendering.popleft().result())
        return batch

    def _submit_renders(self, pool, batch, rendering, sink, in_flight: int) -> None:
        rollouts = [None] * len(batch)
        if self.feed is not None:  # the GPU: decoded and preprocessed there, the input and full maps stay there
            tensor, batch, failed = self.feed.prepare(batch, self.batch_size)
            for record in failed:
                sink(record)
            if not batch:
                return
            maps, predictions, rollouts = self.feed.infer(self.session, tensor, len(batch))
            verdicts = [None] * len(batch)  # --method never decodes on the device (attnvis.batch.run._engine)
        else:
            tensors = [decoded.tensor for _, decoded in batch]
            maps, predictions, verdicts = infer(self.session, tensors, self.batch_size, self.explain) \
                if self.split is None else \
                self.split.infer(lambda *args: infer(self.session, *args, self.explain), tensors, self.batch_size)
        stored = [store_row(item, decoded, attn, self.plan, roll, verdict)  # on the driver: the shorter lane
                  for (item, decoded), attn, roll, verdict in zip(batch, maps, rollouts, verdicts)]
        for (item, decoded), attn, prediction, row, verdict in zip(batch, maps, predictions, stored, verdicts):
            while len(rendering) >= in_flight:
                sink(rendering.popleft().result())
            rendering.append(self._submit(pool, "render", render_item, item, decoded, attn, prediction, self.plan,
                                          self.root, row, verdict))

    def _submit(self, pool, stage: str, fn, *args) -> Future:
        """``fn(*args)`` on the pool; timed for the core split while it measures."""
        return pool.submit(fn, *args) if self.split is None else pool.submit(self.split.timed, stage, fn, *args)


def lower_priority() -> None:
    """Pool initializer: the calling thread ``WORKER_NICE`` nicer than it is (Linux, where niceness is per thread)."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICE))
    except OSError:  # a sandbox that forbids it: the run is correct, only less well scheduled
        pass


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
