"""Encode and write images: RGB in, correct colours on disk, never a half-written file.

PNG (the lossless default) goes through attnvis's own small writer: the
"Sub" row filter (each byte minus the same channel of the pixel to its left)
in NumPy, then one deflate stream from ISA-L (``isal``) at level 1. On a
640×480 overlay that is ~4× less CPU than OpenCV's default PNG settings at
about the same size (heatmaps ~9× less and smaller), and it releases the GIL,
so threads encode in parallel. Where ``isal`` is not
installed the stdlib ``zlib`` (level 1) is used: same pixels, slower.
The measurements are in the README. JPEG and WebP go through OpenCV.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import uuid
import zlib
from pathlib import Path

import numpy as np

FORMATS: tuple[str, ...] = ("png", "jpg", "webp")
_ALIASES = {"jpeg": "jpg"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_QUALITY = {"jpg": 95, "webp": 90}  # lossy formats are for users who want small files

try:  # ISA-L deflate: fast, GIL released (see module docstring)
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - exercised only where isal has no wheel
    _deflate = zlib


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}"
        raise ValueError(f"image to encode must be uint8 [H, W, 3] RGB, got {got}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"image to encode is empty: shape {rgb.shape}")
    return rgb


def _format_name(fmt: str) -> str:
    fmt = _ALIASES.get(fmt.lower().lstrip("."), fmt.lower().lstrip("."))
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


_SCRATCH = threading.local()


def _scratch(height: int, width: int) -> np.ndarray:
    """A per-thread reusable uint8 [height, width] buffer: a fresh 1 MB array per image
    costs more in page faults than the filter itself."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < height * width:
        buf = _SCRATCH.buf = np.empty(height * width, np.uint8)
    return buf[: height * width].reshape(height, width)


def _chunk(kind: bytes, data: bytes) -> list[bytes]:
    """A PNG chunk as parts, joined once by the caller (each copy of a large IDAT costs page faults)."""
    crc = _deflate.crc32(data, _deflate.crc32(kind)) & 0xFFFFFFFF
    return [struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)]


def encode_png(rgb: np.ndarray, level: int = 1) -> bytes:
    """Lossless 8-bit RGB PNG: "Sub" filter on every row, one IDAT chunk.

    Args:
        rgb: uint8 [H, W, 3] RGB.
        level: deflate level (1 fastest; 0 stores; up to 9).

    Returns:
        The PNG file's bytes.
    """
    rgb = _check_rgb(rgb)
    height, width = rgb.shape[:2]
    rows = rgb.reshape(height, width * 3)  # (H, 3W)
    filtered = _scratch(height, width * 3 + 1)  # (H, 1 + 3W): filter byte + row
    filtered[:, 0] = 1  # "Sub": each byte minus the byte 3 to the left (same channel), modulo 256
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])  # uint8 arithmetic wraps, as PNG wants
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    idat = _deflate.compress(filtered, level)
    return b"".join([_PNG_SIGNATURE, *_chunk(b"IHDR", header), *_chunk(b"IDAT", idat), *_chunk(b"IEND", b"")])


def encode_image(rgb: np.ndarray, format: str = "png", quality: int | None = None) -> bytes:  # noqa: A002
    """Encode an RGB image.

    Args:
        rgb: uint8 [H, W, 3] RGB.
        format: one of :data:`FORMATS` (``"jpeg"`` is accepted for ``"jpg"``).
        quality: JPEG/WebP quality 1..100; ``None`` uses :data:`DEFAULT_QUALITY`.
            Ignored for PNG, which is always lossless.

    Returns:
        The encoded file's bytes.

    Raises:
        ValueError: bad image, unknown format or quality out of range.
    """
    fmt = _format_name(format)
    rgb = _check_rgb(rgb)
    if fmt == "png":
        return encode_png(rgb)
    import cv2

    quality = DEFAULT_QUALITY[fmt] if quality is None else int(quality)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    params = [cv2.IMWRITE_JPEG_QUALITY if fmt == "jpg" else cv2.IMWRITE_WEBP_QUALITY, quality]
    ok, buf = cv2.imencode("." + fmt, np.ascontiguousarray(rgb[:, :, ::-1]), params)  # OpenCV wants BGR
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()


def encode_npy(array: np.ndarray) -> bytes:
    """The bytes of ``np.save(array)``, for :func:`write_bytes_atomic`."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Readers never see a half-written file: either the old file or the new one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # O_EXCL: never clobber; 0o666 & umask: the same permissions as a plain open() (mkstemp gives 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_image(
    path: str | os.PathLike, rgb: np.ndarray, format: str | None = None, quality: int | None = None  # noqa: A002
) -> Path:
    """Encode an RGB image and write it atomically.

    Args:
        path: destination file; its folder must exist.
        rgb: uint8 [H, W, 3] RGB.
        format: one of :data:`FORMATS`; ``None`` takes it from the file suffix.
        quality: JPEG/WebP quality (see :func:`encode_image`).

    Returns:
        The path written.

    Raises:
        ValueError: bad image or format (also: no usable suffix and no ``format``).
        FileNotFoundError: the destination folder does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist; create it first")
    fmt = format if format is not None else path.suffix
    if not fmt:
        raise ValueError(f"cannot tell the image format of {str(path)!r}: give a suffix or format=")
    return write_bytes_atomic(path, encode_image(rgb, fmt, quality))
