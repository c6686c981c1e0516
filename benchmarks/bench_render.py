"""Rendering benchmark: the naive OpenCV/NumPy loop against attnvis.render.

Workload (defaults): one 640x480 image, 12 layers of [6 heads, 197, 197]
attention (CLS + 14x14 grid); per layer a heatmap PNG and an overlay PNG.

- naive: per layer, NumPy head mean of the full map, CLS row, reshape,
  cv2.resize INTER_LINEAR, min-max normalize, applyColorMap, addWeighted,
  two cv2.imwrite PNGs; one image after another.
- attnvis: per layer, attention_grid (CLS row first, then head mean), the
  fused kernel, attnvis's PNG writer, atomic writes; (image, layer) tasks
  spread over a thread pool with one worker per core (kernels and encoder
  release the GIL).

Warm-up runs are apart from timed runs; numba's compile time (cold cache, in
a subprocess) and first-call time (warm cache) are reported apart. Results go
to JSON (--json) and a markdown table (--md); --encoders adds a PNG encoder
comparison (optional packages are used when importable).

    python benchmarks/bench_render.py --json bench_render.json --md bench_render.md
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from attnvis.metadata import TokenLayout
from attnvis.render import attention_grid, render_map
from attnvis.render import writers

STAGES_NAIVE = ("head mean + CLS row", "resize", "normalize", "colormap", "blend", "2x imwrite PNG")


def load_image(height: int, width: int) -> np.ndarray:
    """A real photo when matplotlib's sample data is there (PNG sizes depend on content), else a synthetic one."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        bgr = cv2.imread(str(path))
        if bgr is not None:
            return np.ascontiguousarray(cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)[:, :, ::-1])
    except ImportError:
        pass
    yy, xx = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(0).normal(0, 12, (height, width, 3))
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) % 97 * 2.5], axis=-1)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_maps(layers: int, heads: int, grid: int, seed: int = 0) -> np.ndarray:
    """Softmax maps [layers, heads, T, T] with a spatial bump per layer, like a trained ViT's."""
    rng = np.random.default_rng(seed)
    tokens = 1 + grid * grid
    yy, xx = np.mgrid[0:grid, 0:grid]
    logits = rng.normal(0, 1, (layers, heads, tokens, tokens))
    for layer in range(layers):
        cy, cx = rng.uniform(2, grid - 2, 2)
        bump = 4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 + layer)).ravel()
        logits[layer, :, :, 1:] += bump
    maps = np.exp(logits - logits.max(-1, keepdims=True))
    return (maps / maps.sum(-1, keepdims=True)).astype(np.float32)


def naive_layer(layer_map, image_bgr, grid, alpha, out_dir, name, timer=None):
    """The straightforward per-layer loop; `timer` collects per-stage process CPU seconds (with cv2's threads)."""
    t = [time.process_time()]
    mark = (lambda: t.append(time.process_time())) if timer is not None else (lambda: None)
    cls_row = layer_map.mean(axis=0)[0, 1:].reshape(grid, grid)  # (heads, Q, K) -> (h, w)
    mark()
    up = cv2.resize(cls_row, (image_bgr.shape[1], image_bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    mark()
    lo, hi = up.min(), up.max()
    u8 = np.uint8(255 * ((up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)))
    mark()
    heat = cv2.applyColorMap(u8, cv2.COLORMAP_JET)
    mark()
    over = cv2.addWeighted(image_bgr, 1 - alpha, heat, alpha, 0)
    mark()
    if out_dir is not None:
        cv2.imwrite(str(out_dir / f"attn_map_{name}.png"), over)
        cv2.imwrite(str(out_dir / f"heatmap_{name}.png"), heat)
    mark()
    if timer is not None:
        for stage, (a, b) in zip(STAGES_NAIVE, zip(t, t[1:])):
            timer.setdefault(stage, []).append(b - a)
    return heat, over


def opencv_chain(grid_map, image_bgr, alpha):
    """Render stages only (what the fused kernel replaces): resize .. blend."""
    up = cv2.resize(grid_map, (image_bgr.shape[1], image_bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    lo, hi = up.min(), up.max()
    u8 = np.uint8(255 * ((up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)))
    heat = cv2.applyColorMap(u8, cv2.COLORMAP_JET)
    return heat, cv2.addWeighted(image_bgr, 1 - alpha, heat, alpha, 0)


def attnvis_layer(layer_map, image, tokens, alpha, out_dir, name, timer=None):
    """One layer the attnvis way (1 thread); `timer` collects per-stage CPU seconds of this thread
    (all of attnvis's work here: the process clock would also count OpenCV's pool threads left
    spinning by the naive layer measured just before)."""
    t0 = time.thread_time()
    grid = attention_grid(layer_map, tokens)
    t1 = time.thread_time()
    heat, over = render_map(grid, image, "jet", alpha, parallel=False)
    t2 = time.thread_time()
    over_png, heat_png = writers.encode_png(over), writers.encode_png(heat)
    t3 = time.thread_time()
    if out_dir is not None:
        writers.write_bytes_atomic(out_dir / f"attn_map_{name}.png", over_png)
        writers.write_bytes_atomic(out_dir / f"heatmap_{name}.png", heat_png)
    t4 = time.thread_time()
    if timer is not None:
        for stage, dt in zip(("attention_grid", "fused kernel (1 thread)", "2x encode PNG", "2x atomic write"),
                             (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            timer.setdefault(stage, []).append(dt)
    return heat, over


def best(fn, repeat: int, number: int = 1, clock=time.perf_counter) -> float:
    """Minimum over `repeat` runs of the mean time of `number` calls (seconds; `clock` picks wall or CPU)."""
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = clock()
        for _ in range(number):
            fn()
        times.append((clock() - start) / number)
    return min(times)


def compile_times() -> dict:
    """Cold compile (empty numba cache, fresh process) and warm first call (this process's cache)."""
    code = (
        "import time, numpy as np; t=time.perf_counter();"
        "from attnvis.render import render_map;"
        "g=np.ones((2,2),np.float32); im=np.zeros((4,4,3),np.uint8);"
        "render_map(g,im,parallel=False); t1=time.perf_counter(); render_map(g,im,parallel=True);"
        "print(t1-t, time.perf_counter()-t1)"
    )
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for label, env in (("cold cache", {"NUMBA_CACHE_DIR": cache}), ("warm cache", {"NUMBA_CACHE_DIR": cache})):
            res = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)
            serial, parallel = map(float, res.stdout.split())
            out[label] = {"serial_first_call_s": serial, "parallel_first_call_s": parallel}
    return out


def interleaved_best(fns: dict, repeat: int, number: int = 20) -> dict:
    """Best mean wall seconds per call of each function, measured in rounds A B C A B C ... (a shared
    machine's slow spells then fall on every variant alike), after one warm-up call each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - start) / number)
    return {name: min(t) for name, t in times.items()}


def per_layer_kernel(maps, image, tokens, alpha, repeat) -> dict:
    grid = attention_grid(maps[0], tokens)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    t = interleaved_best({
        "chain": lambda: opencv_chain(grid, bgr, alpha),
        "parallel": lambda: render_map(grid, image, "jet", alpha, parallel=True),
        "serial": lambda: render_map(grid, image, "jet", alpha, parallel=False),
    }, 3 * repeat)
    chain, fused_par, fused_ser = t["chain"], t["parallel"], t["serial"]
    return {
        "opencv_chain_ms": chain * 1e3,
        "fused_parallel_ms": fused_par * 1e3,
        "fused_serial_ms": fused_ser * 1e3,
        "speedup_parallel": chain / fused_par,
        "speedup_serial": chain / fused_ser,
        "opencv_threads": cv2.getNumThreads(),
    }


def stage_table(maps, image, tokens, alpha, repeat, out_dir) -> dict:
    """Per-stage medians (CPU ms per layer: robust on a shared machine) of both pipelines."""
    naive_t, ours_t = {}, {}
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    grid = tokens.grid[0]
    for r in range(repeat):
        for i, layer in enumerate(maps):
            naive_layer(layer, bgr, grid, alpha, out_dir, f"n{r}_{i}", naive_t)
            attnvis_layer(layer, image, tokens, alpha, out_dir, f"a{r}_{i}", ours_t)
    med = lambda d: {k: statistics.median(v) * 1e3 for k, v in d.items()}  # noqa: E731
    return {"naive_ms_per_layer": med(naive_t), "attnvis_ms_per_layer": med(ours_t)}


_RUNS = itertools.count()


def _fresh_dir(root: Path) -> Path:
    """A new folder per run: overwriting files costs an extra flush on ext4 (auto_da_alloc)."""
    path = root / f"run{next(_RUNS)}"
    path.mkdir()
    return path


def timed_rounds(fns: dict, repeat: int) -> dict:
    """Per function: (best wall seconds, CPU seconds of this process in that run), measured in
    interleaved rounds A B C A B C ... after one warm-up each (slow spells fall on all alike)."""
    for fn in fns.values():
        fn()
    runs = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: min(r) for name, r in runs.items()}


def end_to_end(maps, image, tokens, alpha, images, workers, repeat, out_root) -> dict:
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    grid = tokens.grid[0]

    def naive():
        out = _fresh_dir(out_root)
        for n in range(images):
            for i, layer in enumerate(maps):
                naive_layer(layer, bgr, grid, alpha, out, f"{n}_{i}")

    def ours(pool):
        out = _fresh_dir(out_root)
        tasks = [(n, i) for n in range(images) for i in range(len(maps))]
        list(pool.map(lambda t: attnvis_layer(maps[t[1]], image, tokens, alpha, out, f"{t[0]}_{t[1]}"), tasks))

    with cf.ThreadPoolExecutor(workers) as pool, cf.ThreadPoolExecutor(1) as single:
        t = timed_rounds({"naive": naive, "ours": lambda: ours(pool), "ours_1": lambda: ours(single)}, repeat)
    (naive_s, naive_cpu), (ours_s, ours_cpu), (ours_1, _) = t["naive"], t["ours"], t["ours_1"]
    return {
        "images": images,
        "layers": len(maps),
        "workers": workers,
        "naive_images_per_s": images / naive_s,
        "attnvis_images_per_s": images / ours_s,
        "attnvis_1_worker_images_per_s": images / ours_1,
        "speedup": naive_s / ours_s,
        "speedup_1_worker": naive_s / ours_1,
        "naive_cpu_ms_per_image": naive_cpu / images * 1e3,
        "attnvis_cpu_ms_per_image": ours_cpu / images * 1e3,
        "cpu_ratio": naive_cpu / ours_cpu,
    }


def check_lossless(maps, image, tokens, alpha, out_dir) -> bool:
    """Files written by the attnvis path decode to exactly the rendered arrays."""
    heat, over = attnvis_layer(maps[0], image, tokens, alpha, out_dir, "check")
    back_over = cv2.imread(str(out_dir / "attn_map_check.png"))[:, :, ::-1]
    back_heat = cv2.imread(str(out_dir / "heatmap_check.png"))[:, :, ::-1]
    return bool(np.array_equal(back_over, over) and np.array_equal(back_heat, heat))


# ---------------------------------------------------------------- PNG encoders


def _with(**settings):
    """An encoder: writers.encode_png with module settings swapped for the call."""

    def encode(rgb):
        saved = {name: getattr(writers, name) for name in settings}
        for name, value in settings.items():
            setattr(writers, name, value)
        try:
            return writers.encode_png(rgb)
        finally:
            for name, value in saved.items():
                setattr(writers, name, value)

    return encode


def _encoders() -> dict:
    """Encoders to compare: name -> fn(rgb) -> bytes. Optional packages only when importable."""
    found = {
        "cv2.imencode default": lambda a: cv2.imencode(".png", a[:, :, ::-1])[1].tobytes(),
        "cv2.imencode level 3": lambda a: cv2.imencode(".png", a[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 3])[1].tobytes(),
        "attnvis (chosen: Sub + ISA-L 1 if repeats, else Huffman only)": writers.encode_png,
        f"attnvis Sub + {writers._deflate.__name__} level 1 always": _with(LZ77_REPEATS=0.0),
        "attnvis Sub + Huffman only always": _with(LZ77_REPEATS=2.0),
        "attnvis chosen, stdlib zlib for LZ77 (no isal)": _with(_deflate=zlib),
    }
    try:
        import fpng

        found["fpng (py-fpng-nb)"] = lambda a: bytes(fpng.from_ndarray(a))
    except ImportError:
        pass
    try:
        import imagecodecs

        found["imagecodecs png (level 1, RLE, Sub)"] = lambda a: bytes(imagecodecs.png_encode(a, level=1, strategy=3, filter=16))
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        found["attnvis Sub + zlib-ng level 1 always"] = _with(LZ77_REPEATS=0.0, _deflate=zlib_ng)
    except ImportError:
        pass
    return found


def gil_delay_ms(fn) -> float:
    """Median extra wake-up delay of a sleeping thread while `fn` runs in a loop (large: GIL held)."""
    stop = threading.Event()
    worker = threading.Thread(target=lambda: [fn() for _ in iter(stop.is_set, True)])
    worker.start()
    time.sleep(0.05)
    delays = []
    for _ in range(100):
        start = time.perf_counter()
        time.sleep(0.0002)
        delays.append(time.perf_counter() - start - 0.0002)
    stop.set()
    worker.join()
    return statistics.median(delays) * 1e3


def encoder_table(heat: np.ndarray, over: np.ndarray, repeat: int) -> list[dict]:
    rows = []
    for name, fn in _encoders().items():
        lossless = all(
            np.array_equal(cv2.imdecode(np.frombuffer(fn(a), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1], a) for a in (heat, over)
        )
        rows.append({
            "encoder": name,
            "heatmap_ms": best(lambda: fn(heat), repeat, 10, time.thread_time) * 1e3,
            "heatmap_kib": len(fn(heat)) / 1024,
            "overlay_ms": best(lambda: fn(over), repeat, 10, time.thread_time) * 1e3,
            "overlay_kib": len(fn(over)) / 1024,
            "gil_wakeup_delay_ms": gil_delay_ms(lambda: fn(over)),
            "lossless": lossless,
        })
    return rows


# ---------------------------------------------------------------- report


def markdown(result: dict) -> str:
    k, e = result["kernel_per_layer"], result["end_to_end"]
    lines = [
        f"# bench_render ({result['machine']})", "",
        f"Workload: {result['config']['width']}x{result['config']['height']} image, {e['layers']} layers, "
        f"{result['config']['heads']} heads, {result['config']['tokens']} tokens; two PNGs per layer.", "",
        "| per layer, render only | ms |", "| --- | ---: |",
        f"| OpenCV chain (resize..addWeighted, {k['opencv_threads']} cv2 threads) | {k['opencv_chain_ms']:.3f} |",
        f"| fused kernel, parallel rows | {k['fused_parallel_ms']:.3f} ({k['speedup_parallel']:.1f}x) |",
        f"| fused kernel, 1 thread | {k['fused_serial_ms']:.3f} ({k['speedup_serial']:.1f}x) |", "",
        "| stage (median CPU ms per layer) | naive | | attnvis |", "| --- | ---: | --- | ---: |",
    ]
    naive, ours = list(result["stages"]["naive_ms_per_layer"].items()), list(result["stages"]["attnvis_ms_per_layer"].items())
    for i in range(max(len(naive), len(ours))):
        a = naive[i] if i < len(naive) else ("", None)
        b = ours[i] if i < len(ours) else ("", None)
        lines.append(f"| {a[0]} | {'' if a[1] is None else f'{a[1]:.3f}'} | {b[0]} | {'' if b[1] is None else f'{b[1]:.3f}'} |")
    lines += [
        f"| total | {sum(v for _, v in naive):.3f} | | {sum(v for _, v in ours):.3f} |", "",
        "| end to end (render + encode + write) | images/s | speedup |", "| --- | ---: | ---: |",
        f"| naive loop | {e['naive_images_per_s']:.2f} | 1.0x |",
        f"| attnvis, 1 worker | {e['attnvis_1_worker_images_per_s']:.2f} | {e['speedup_1_worker']:.1f}x |",
        f"| attnvis, {e['workers']} workers | {e['attnvis_images_per_s']:.2f} | {e['speedup']:.1f}x |", "",
        f"CPU per image: naive {e['naive_cpu_ms_per_image']:.0f} ms, attnvis {e['attnvis_cpu_ms_per_image']:.0f} ms "
        f"({e['cpu_ratio']:.1f}x less); load average at start {result['load_average_at_start'][0]:.1f}.", "",
        f"Lossless files: {result['lossless']}. numba first call: " + ", ".join(
            f"{label} {v['serial_first_call_s']:.2f} s serial + {v['parallel_first_call_s']:.2f} s parallel"
            for label, v in result["compile"].items()),
    ]
    if result.get("encoders"):
        lines += ["", "| PNG encoder | heatmap CPU ms | KiB | overlay CPU ms | KiB | GIL wake-up delay ms | lossless |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in result["encoders"]:
            lines.append(f"| {r['encoder']} | {r['heatmap_ms']:.2f} | {r['heatmap_kib']:.0f} | {r['overlay_ms']:.2f} | "
                         f"{r['overlay_kib']:.0f} | {r['gil_wakeup_delay_ms']:.2f} | {r['lossless']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write results as JSON here")
    parser.add_argument("--md", type=Path, help="write a markdown table here")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--grid", type=int, default=14, help="patch grid side (tokens = 1 + grid^2)")
    parser.add_argument("--size", default="640x480", help="image WIDTHxHEIGHT")
    parser.add_argument("--images", type=int, default=4, help="images per end-to-end run")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="attnvis threads (default: all cores)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--encoders", action="store_true", help="also compare PNG encoders")
    args = parser.parse_args(argv)
    width, height = map(int, args.size.lower().split("x"))
    image, maps = load_image(height, width), make_maps(args.layers, args.heads, args.grid)
    tokens = TokenLayout(prefix_tokens=1, grid=(args.grid, args.grid), cls_index=0, prefix_names=("cls",))
    alpha = 0.5
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_at_start": os.getloadavg(),
        "config": {"width": width, "height": height, "heads": args.heads, "tokens": 1 + args.grid**2},
        "compile": compile_times(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        result["lossless"] = check_lossless(maps, image, tokens, alpha, out)
        result["kernel_per_layer"] = per_layer_kernel(maps, image, tokens, alpha, args.repeat)
        result["stages"] = stage_table(maps, image, tokens, alpha, args.repeat, _fresh_dir(out))
        result["end_to_end"] = end_to_end(maps, image, tokens, alpha, args.images, args.workers, args.repeat, out)
    if args.encoders:
        heat, over = render_map(attention_grid(maps[-1], tokens), image)
        result["encoders"] = encoder_table(heat, over, args.repeat)
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.md:
        args.md.write_text(text)
    return result


if __name__ == "__main__":
    main()
