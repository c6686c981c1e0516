"""Timing and memory measurement for :mod:`attnvis.bench`.

Timed calls are interleaved across variants (A B C A B C …) so that machine
drift (clock boost, a neighbour's load) hits every variant alike; warm-up
calls run before and are not timed. Memory is measured in a separate pass,
so that no sampling perturbs the timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and extremes of per-call latencies, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    q1, median, q3 = np.percentile(ms, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "min": float(ms.min()),
            "max": float(ms.max()), "n": int(ms.size)}


#: Untimed pause before each timed call: the previous runtime's idle worker threads stop spinning
#: (ORT's pool and OpenMP both spin a while after their work) before the next runtime needs the cores.
SETTLE_S = 0.01


def interleaved(runs: dict[str, Callable[[], int]], warmup: int, repeats: int, settle_s: float = SETTLE_S,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, round-robin, after ``warmup`` untimed calls each.

    Args:
        cpu: if given, filled per name with the process CPU seconds (all threads) of each timed
            call: on a machine shared with other jobs it varies less than wall time.

    Returns:
        Per name, the wall-clock seconds of each timed call.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            time.sleep(settle_s)
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - start)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - start_cpu)
    return times


# ---------------------------------------------------------------- host memory
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; Linux only."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def host_peak_mb(run: Callable[[], int]) -> float | None:
    """Peak resident memory one call adds over what was resident before it, in MiB (None off Linux)."""
    if not _reset_peak_rss():
        return None
    before = _status_kb("VmRSS")
    run()
    peak = _status_kb("VmHWM")
    return None if before is None or peak is None else max(peak - before, 0) / 1024


# ---------------------------------------------------------------- device memory
def device_used_mb() -> float:
    """Memory in use on the current CUDA device by everyone (ORT's arena included), in MiB."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def torch_peak_mb(run: Callable[[], int]) -> float:
    """PyTorch's peak allocated CUDA memory during one call (weights included), in MiB."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


# ---------------------------------------------------------------- numba
def numba_timing(grid_hw: tuple[int, int], image_hw: tuple[int, int], repeats: int = 20) -> dict[str, float]:
    """First ``render_map`` call (numba compile, or its on-disk cache load) against later calls.

    Returns:
        ``first_call_s``, ``steady_call_ms`` (median) and their difference, ``compile_s``.
    """
    from attnvis.render import render_map

    rng = np.random.default_rng(0)
    grid = rng.random(grid_hw, dtype=np.float32)
    image = rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    start = time.perf_counter()
    render_map(grid, image)
    first = time.perf_counter() - start
    later = []
    for _ in range(repeats):
        start = time.perf_counter()
        render_map(grid, image)
        later.append(time.perf_counter() - start)
    steady = float(np.median(later))
    return {"first_call_s": first, "steady_call_ms": steady * 1e3, "compile_s": max(first - steady, 0.0)}
