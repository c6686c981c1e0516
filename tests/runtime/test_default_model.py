"""The embedded default model, end to end through ONNX Runtime: it looks at the object."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from attnvis.models.tiny import HELD_OUT_SEED, make_scene
from attnvis.render import attention_grid
from attnvis.runtime import open_model


@pytest.fixture(scope="module")
def session():
    return open_model("default", device="cpu")


def test_last_layer_cls_map_peaks_inside_the_object(session):
    seeds = range(HELD_OUT_SEED + 50_000, HELD_OUT_SEED + 50_100)  # never used in training
    scenes = [make_scene(s) for s in seeds]
    maps = session.run_images([img for img, _ in scenes])
    last = maps[len(maps) - 1]  # (B, heads, Q, K)
    hits = 0
    for b, (image, (x0, y0, x1, y1)) in enumerate(scenes):
        grid = attention_grid(last[b], maps.metadata.tokens)  # head mean, CLS row
        full = cv2.resize(grid, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        y, x = np.unravel_index(np.argmax(full), full.shape)
        hits += x0 <= x < x1 and y0 <= y < y1
    assert hits >= 90, f"peak inside the object's box in {hits}/100 held-out scenes"


def test_ort_and_torch_backends_agree(session):
    torch_session = open_model("default", backend="torch", device="cpu")
    images = [make_scene(HELD_OUT_SEED + 7)[0], make_scene(HELD_OUT_SEED + 8)[0]]
    a, b = session.run_images(images), torch_session.run_images(images)
    assert len(a) == len(b) == len(session.metadata.layers)
    for x, y in zip(a.maps, b.maps):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
    assert session.provider == session.session.get_providers()[0]


def test_a_cached_model_opens_without_importing_torch(session):
    # `session` made the export; a new process must find it and run on ONNX Runtime alone
    code = ("import sys; from attnvis.runtime import open_model; m = open_model('default', device='cpu'); "
            "print(m.provider, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ.copy())
    assert out.stdout.split() == ["CPUExecutionProvider", "False"], out.stdout + out.stderr
