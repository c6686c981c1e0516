"""The GPU renderer (numba-cuda) equals render_map bit for bit: under numba's CUDA simulator in CI, on a GPU where there is one.

The simulator must be chosen before numba.cuda is first imported, so its
checks run in a subprocess (``cuda_sim_check.py``) with NUMBA_ENABLE_CUDASIM=1;
the image there is small (12×16 from a 3×4 grid): simulated kernels are slow.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba_cuda", reason="numba-cuda (the test extra) provides numba.cuda")
HERE = Path(__file__).parent


def test_cuda_kernels_equal_cpu_kernels_under_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    result = subprocess.run([sys.executable, str(HERE / "cuda_sim_check.py"), "3"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok upsampled values: bit for bit" in result.stdout
    assert result.stdout.count("ok ") == 6, result.stdout


def _gpu():
    from numba import cuda

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or not cuda.is_available():
        pytest.skip("no CUDA GPU here (numba.cuda.is_available() is false); the simulator test covers the kernels")


def test_gpu_render_equals_render_map_on_a_real_image_size():
    _gpu()
    from attnvis.render import render_map
    from attnvis.render.gpu import render_maps_cuda

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    grids = rng.random((12, 14, 14), dtype=np.float32)
    for alpha in (0.5, 0.35):
        heat, over = render_maps_cuda(grids, image, alpha=alpha)
        for i in range(len(grids)):
            want_heat, want_over = render_map(grids[i], image, alpha=alpha)
            np.testing.assert_array_equal(heat[i], want_heat)
            np.testing.assert_array_equal(over[i], want_over)


def test_bad_inputs_are_value_errors_before_any_launch():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    code = (
        "import numpy as np\n"
        "from attnvis.render.gpu import render_maps_cuda\n"
        "img = np.zeros((4, 4, 3), np.uint8)\n"
        "for bad in [dict(grids=np.zeros((2, 2), np.float32)), dict(grids=np.full((1, 2, 2), np.nan, np.float32)),\n"
        "            dict(alpha=2.0), dict(colormap='nope'), dict(threads=48)]:\n"
        "    kw = {'grids': np.zeros((1, 2, 2), np.float32), 'image': img, **bad}\n"
        "    try:\n"
        "        render_maps_cuda(**kw)\n"
        "    except ValueError as err:\n"
        "        print('refused:', str(err).splitlines()[0])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("refused:") == 5, result.stdout
