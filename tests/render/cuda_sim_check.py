"""Run under NUMBA_ENABLE_CUDASIM=1 (a subprocess of test_render_cuda.py): GPU kernel vs render_map, bit for bit.

Prints one line per case and exits non-zero on the first mismatch.
"""

import os
import sys

import numpy as np

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run me with NUMBA_ENABLE_CUDASIM=1"

from attnvis.render import Scale, render_map  # noqa: E402
from attnvis.render.gpu import cuda_render_usable, render_maps_cuda  # noqa: E402

assert cuda_render_usable(), "the simulator should count as usable"
rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
grids = rng.random((2, 3, 4), dtype=np.float32)
grids[1] = grids[1] * np.float32(1e-3) + np.float32(0.37)  # a narrow range: rounding matters most
cases = {
    "jet alpha 0.5": dict(),
    "viridis alpha 0.3": dict(colormap="viridis", alpha=0.3),
    "alpha 1.0": dict(alpha=1.0),
    "fixed scale": dict(scale=Scale(0.2, 0.8)),
    "flat map": dict(grids=np.full((1, 3, 4), 0.25, np.float32)),
}
from attnvis.render import _kernels  # noqa: E402
from attnvis.render.gpu import upsample_cuda  # noqa: E402

values = upsample_cuda(grids, (12, 16), threads=32)  # the floats themselves, before they become levels
for i, grid in enumerate(grids):
    rows = _kernels.resize_rows(grid, 16)
    y0, y1, fy = _kernels.axis_coeffs(3, 12)
    want = np.empty((12, 16), np.float32)
    for y in range(12):
        _kernels._lerp_row(rows[y0[y]], rows[y1[y]], fy[y], want[y])
    if not np.array_equal(values[i].view(np.int32), want.view(np.int32)):
        print(f"MISMATCH upsampled values of map {i}: {int(np.sum(values[i] != want))} differ")
        sys.exit(1)
print("ok upsampled values: bit for bit")
for name, kw in cases.items():
    g = kw.pop("grids", grids)
    heat, over = render_maps_cuda(g, image, threads=32, **kw)
    assert heat.shape == over.shape == (len(g), 12, 16, 3) and heat.dtype == np.uint8
    for i in range(len(g)):
        want_heat, want_over = render_map(g[i], image, parallel=False, **kw)
        if not (np.array_equal(heat[i], want_heat) and np.array_equal(over[i], want_over)):
            bad = int(np.sum(heat[i] != want_heat) + np.sum(over[i] != want_over))
            print(f"MISMATCH {name} map {i}: {bad} bytes differ")
            sys.exit(1)
    print(f"ok {name}: {len(g)} maps, {len(np.unique(heat))} distinct heat bytes")
