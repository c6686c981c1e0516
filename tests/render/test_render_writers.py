"""encode_image / write_image: lossless PNG, right colours on disk, atomic writes."""

from __future__ import annotations

import io
import os
import stat

import cv2
import numpy as np
import pytest
from PIL import Image

from attnvis.render import FORMATS, encode_image, write_image
from attnvis.render import writers


@pytest.fixture
def rgb():
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)  # pure red in RGB: must read back red
    return image


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (9, 1, 3), (37, 53, 3), (480, 640, 3)])
def test_png_is_lossless_for_opencv_and_pillow(shape):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    data = encode_image(image)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(bgr[:, :, ::-1], image)
    Image.open(io.BytesIO(data)).verify()  # checks every chunk's CRC
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_png_compresses_smooth_images():
    ramp = np.repeat(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 200, 0), 3, 2)
    assert len(encode_image(np.ascontiguousarray(ramp))) < ramp.nbytes / 20


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_on_disk_have_rgb_colours(tmp_path, rgb, fmt):
    path = write_image(tmp_path / f"out.{fmt}", rgb)
    back = np.asarray(Image.open(path).convert("RGB"))
    assert back.shape == rgb.shape
    if fmt == "png":
        np.testing.assert_array_equal(back, rgb)
    else:
        flat = np.full((16, 16, 3), (255, 0, 0), np.uint8)
        red = np.asarray(Image.open(write_image(tmp_path / f"red.{fmt}", flat)).convert("RGB")).astype(int)
        assert np.abs(red - flat).max() < 8  # red stays red (a BGR mix-up would give blue)


def test_format_argument_overrides_suffix_and_aliases(tmp_path, rgb):
    path = write_image(tmp_path / "picture.bin", rgb, format="jpeg")
    assert path.read_bytes()[:3] == b"\xff\xd8\xff"
    assert encode_image(rgb, "PNG")[:8] == b"\x89PNG\r\n\x1a\n"
    assert encode_image(rgb, "webp")[8:12] == b"WEBP"


def test_atomic_write_leaves_no_temporary_and_keeps_old_file_on_failure(tmp_path, rgb, monkeypatch):
    path = write_image(tmp_path / "a.png", rgb)
    before = path.read_bytes()
    assert os.listdir(tmp_path) == ["a.png"]
    mode = stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(writers.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_image(path, rgb[::-1].copy())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.png"]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda p: write_image(p / "x.gif", np.zeros((2, 2, 3), np.uint8)), ValueError, "gif"),
        (lambda p: write_image(p / "noext", np.zeros((2, 2, 3), np.uint8)), ValueError, "suffix"),
        (lambda p: write_image(p / "missing" / "x.png", np.zeros((2, 2, 3), np.uint8)), FileNotFoundError, "missing"),
        (lambda p: encode_image(np.zeros((2, 2), np.uint8)), ValueError, r"\[H, W, 3\]"),
        (lambda p: encode_image(np.zeros((2, 2, 3), np.float32)), ValueError, "uint8"),
        (lambda p: encode_image(np.zeros((2, 2, 3), np.uint8), "jpg", quality=0), ValueError, "quality"),
    ],
)
def test_bad_arguments(tmp_path, call, error, match):
    with pytest.raises(error, match=match):
        call(tmp_path)
