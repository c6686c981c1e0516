"""The image header check: a plain JPEG's size read from its segments equals PIL's; anything unusual is PIL's to judge."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from attnvis.errors import InputError
from attnvis.metadata import Preprocess
from attnvis.runtime import images
from attnvis.runtime.images import _jpeg_size, preprocess, probe

IMAGE = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)


def opencv_jpeg(image: np.ndarray = IMAGE, *params: int) -> bytes:
    return cv2.imencode(".jpg", image, list(params))[1].tobytes()


def pil_jpeg(mode: str = "RGB", **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(IMAGE).convert(mode).save(out, "JPEG", **save)
    return out.getvalue()


def exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


PLAIN = {
    "baseline": lambda: opencv_jpeg(),
    "quality 30": lambda: opencv_jpeg(IMAGE, cv2.IMWRITE_JPEG_QUALITY, 30),
    "progressive": lambda: opencv_jpeg(IMAGE, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "optimized": lambda: opencv_jpeg(IMAGE, cv2.IMWRITE_JPEG_OPTIMIZE, 1),
    "restart markers": lambda: opencv_jpeg(IMAGE, cv2.IMWRITE_JPEG_RST_INTERVAL, 1),
    "grey": lambda: opencv_jpeg(IMAGE[..., 0]),
    "CMYK": lambda: pil_jpeg("CMYK"),
    "EXIF, ICC, comment, dpi": lambda: pil_jpeg(exif=exif_orientation(6), icc_profile=b"\0" * 300, comment=b"hi",
                                               dpi=(300, 300)),
    "4:4:4": lambda: pil_jpeg(subsampling=0),
}


@pytest.mark.parametrize("kind", list(PLAIN))
def test_a_plain_jpegs_size_is_pils(kind):
    data = PLAIN[kind]()
    with Image.open(io.BytesIO(data)) as im:
        assert _jpeg_size(data) == im.size == (53, 37)
        assert im.format == "JPEG" and im.mode in images.SUPPORTED_MODES
    assert probe(data, "x.jpg", 10_000) == "JPEG"


def test_the_pixel_limit_is_checked_on_the_jpeg_path():
    data = opencv_jpeg()
    assert probe(data, "x.jpg", 53 * 37) == "JPEG"
    with pytest.raises(InputError, match=r"x\.jpg: 53x37 = 1,961 pixels is over --max-pixels 1,960"):
        probe(data, "x.jpg", 53 * 37 - 1)


def sof_offset(data: bytes) -> int:
    """Where the frame header's marker (FF C0 or FF C2) starts."""
    return min(i for i in (data.find(b"\xff\xc0"), data.find(b"\xff\xc2")) if i > 0)


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def unusual() -> dict[str, bytes]:
    data = opencv_jpeg()
    sof = sof_offset(data)
    return {
        "12-bit samples": patched(data, sof + 4, b"\x0c"),
        "2 components": patched(data, sof + 9, b"\x02"),
        "zero width": patched(data, sof + 7, b"\0\0"),
        "fill bytes before a marker": data[:2] + b"\xff\xff" + data[2:],
        "header cut short": data[:sof + 6],
        "no frame header": data[:sof] + data[sof + 2 + int.from_bytes(data[sof + 2:sof + 4], "big"):],
        "not a JPEG": b"\x89PNG\r\n\x1a\n" + data[8:],
    }


@pytest.mark.parametrize("kind", list(unusual()))
def test_anything_unusual_is_left_to_pil(kind, monkeypatch):
    data = unusual()[kind]
    assert _jpeg_size(data) is None

    def verdict() -> str:
        try:
            return probe(data, "x.jpg", 10_000)
        except InputError as err:
            return f"error: {err}"

    ours = verdict()
    monkeypatch.setattr(images, "_jpeg_size", lambda data: None)  # PIL alone, as before the JPEG path existed
    assert ours == verdict()
    if kind in ("12-bit samples", "2 components", "zero width", "header cut short", "no frame header"):
        assert ours.startswith("error: x.jpg: ")  # refused by PIL's header check, as before


def test_normalization_is_the_channel_last_arithmetic_exactly():
    image = np.random.default_rng(4).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    pre = Preprocess(size=(8, 12), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    mean, std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
    want = (image.astype(np.float32) * np.float32(pre.scale) - mean) / std  # (H, W, C), the same float32 operations
    out = preprocess([image], pre)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out[0], want.transpose(2, 0, 1))
