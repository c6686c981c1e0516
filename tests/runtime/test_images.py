"""Plain JPEGs the short way (attnvis.runtime._jpeg): the size equals PIL's, the pixels OpenCV's; anything unusual goes the general way."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from attnvis.errors import InputError
from attnvis.metadata import Preprocess
from attnvis.runtime import images
from attnvis.runtime import _jpeg
from attnvis.runtime.images import decode_image, preprocess, probe

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
        assert _jpeg.size(data) == im.size == (53, 37)
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
    assert _jpeg.size(data) is None

    def verdict() -> str:
        try:
            return probe(data, "x.jpg", 10_000)
        except InputError as err:
            return f"error: {err}"

    ours = verdict()
    monkeypatch.setattr(_jpeg, "size", lambda data: None)  # PIL alone, as before the JPEG path existed
    assert ours == verdict()
    if kind in ("12-bit samples", "2 components", "zero width", "header cut short", "no frame header"):
        assert ours.startswith("error: x.jpg: ")  # refused by PIL's header check, as before


def opencv(data: bytes) -> np.ndarray | None:
    """What the general path decodes: OpenCV, RGB."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def photo_jpeg(*params: int, size=(240, 320)) -> bytes:
    """A smooth picture with edges (the tiny model's scenes), as JPEG."""
    from attnvis.models.tiny import make_scene

    scene = cv2.resize(make_scene(3)[0], size[::-1], interpolation=cv2.INTER_LINEAR)
    return opencv_jpeg(scene, *params)


DIRECT = {  # libjpeg-turbo straight to RGB
    "baseline 4:2:0": lambda: photo_jpeg(),
    "odd size": lambda: photo_jpeg(size=(37, 53)),
    "quality 30": lambda: photo_jpeg(cv2.IMWRITE_JPEG_QUALITY, 30),
    "progressive": lambda: photo_jpeg(cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "optimized": lambda: photo_jpeg(cv2.IMWRITE_JPEG_OPTIMIZE, 1),
    "restart markers": lambda: photo_jpeg(cv2.IMWRITE_JPEG_RST_INTERVAL, 2),
    "4:4:4": lambda: photo_jpeg(cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
    "4:2:2": lambda: photo_jpeg(cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422),
    "grey": lambda: opencv_jpeg(IMAGE[..., 0]),
    "noise": lambda: opencv_jpeg(),
    "EXIF orientation 1": lambda: pil_jpeg(exif=exif_orientation(1)),
    "EXIF without orientation": lambda: pil_jpeg(exif=Image.Exif()),
}


@pytest.mark.parametrize("kind", list(DIRECT))
def test_a_plain_jpeg_is_decoded_directly_to_opencvs_pixels(kind):
    data = DIRECT[kind]()
    rgb = _jpeg.decode(data)
    assert rgb is not None, "took the general path"
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, opencv(data))


def opencv_decides() -> dict[str, bytes]:
    data = photo_jpeg()
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 40] = b"\xff\xd9" * 20  # an end-of-image marker mid-scan
    return {
        "EXIF orientation 6 (OpenCV rotates)": pil_jpeg(exif=exif_orientation(6)),
        "EXIF orientation 3": pil_jpeg(exif=exif_orientation(3)),
        "CMYK (OpenCV converts)": pil_jpeg("CMYK"),
        "truncated": data[: len(data) // 2],
        "corrupt scan data": bytes(corrupt),
        "PNG": cv2.imencode(".png", IMAGE)[1].tobytes(),
    }


@pytest.mark.parametrize("kind", list(opencv_decides()))
def test_what_opencv_must_decode_goes_to_opencv(kind):
    data = opencv_decides()[kind]
    assert _jpeg.decode(data) is None
    want = opencv(data)
    if want is None:  # truncated: the one-line refusal, as before
        with pytest.raises(InputError, match="cannot decode the image"):
            decode_image(data, "x.jpg")
    else:
        np.testing.assert_array_equal(decode_image(data, "x.jpg"), want)
    if kind.startswith("EXIF orientation 6"):
        assert decode_image(data).shape == (53, 37, 3)  # rotated a quarter turn


def test_without_simplejpeg_every_jpeg_goes_to_opencv(monkeypatch):
    data = photo_jpeg()
    direct = _jpeg.decode(data)
    monkeypatch.setattr(_jpeg, "simplejpeg", None)
    assert _jpeg.decode(data) is None
    np.testing.assert_array_equal(decode_image(data), direct)


def test_the_exif_orientation_is_read_in_either_byte_order():
    written = pil_jpeg(exif=exif_orientation(6))
    found = _jpeg.segments(written)
    assert _jpeg.orientation(written, found) == 6
    start = next(s for m, s, _ in found if m == 0xE1) + 6  # the TIFF header
    mine = {b"II": "little", b"MM": "big"}[written[start:start + 2]]
    other = "big" if mine == "little" else "little"
    swapped = bytearray(written)  # the same EXIF in the other byte order: header, IFD0's count, its entries
    ifd = int.from_bytes(written[start + 4:start + 8], mine)
    count = int.from_bytes(written[start + ifd:start + ifd + 2], mine)
    swapped[start:start + 8] = (b"II" if other == "little" else b"MM") + (42).to_bytes(2, other) + ifd.to_bytes(4, other)
    swapped[start + ifd:start + ifd + 2] = count.to_bytes(2, other)
    for entry in range(start + ifd + 2, start + ifd + 2 + 12 * count, 12):
        tag, kind, n = (int.from_bytes(written[entry + a:entry + b], mine) for a, b in ((0, 2), (2, 4), (4, 8)))
        value = written[entry + 8:entry + 12]
        value = value[:2][::-1] + value[2:] if kind == 3 and n == 1 else value[::-1]  # a SHORT sits in the first two bytes
        swapped[entry:entry + 12] = tag.to_bytes(2, other) + kind.to_bytes(2, other) + n.to_bytes(4, other) + value
    assert _jpeg.orientation(bytes(swapped), _jpeg.segments(bytes(swapped))) == 6
    broken = written[:start] + b"XX" + written[start + 2:]
    assert _jpeg.orientation(broken, _jpeg.segments(broken)) == 0  # unreadable: OpenCV decides


def test_normalization_is_the_channel_last_arithmetic_exactly():
    image = np.random.default_rng(4).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    pre = Preprocess(size=(8, 12), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    mean, std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
    want = (image.astype(np.float32) * np.float32(pre.scale) - mean) / std  # (H, W, C), the same float32 operations
    out = preprocess([image], pre)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out[0], want.transpose(2, 0, 1))
