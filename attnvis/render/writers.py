"""Encode and write images: RGB in, correct colours on disk, never a half-written file.

PNG (the lossless default) goes through attnvis's own small writer: the
"Sub" row filter (each byte minus the same channel of the pixel to its left,
in numba), then one zlib stream: ISA-L's (``isal``) deflate level 1 for smooth
images (heatmaps), a Huffman-only numba coder for photographic ones
(overlays). On 640×480 images that is ~8× (heatmap) and ~13× (overlay) less
CPU than OpenCV's default PNG settings, files of about the same size, and
the GIL is released throughout, so threads encode in parallel. Where
``isal`` is not installed the stdlib ``zlib`` (level 1) is used: same
pixels, slower. The measurements are in the README. JPEG and WebP go
through OpenCV.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from attnvis.render.heatmap import check_rgb

FORMATS: tuple[str, ...] = ("png", "jpg", "webp")
_ALIASES = {"jpeg": "jpg"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_QUALITY = {"jpg": 95, "webp": 90}  # lossy formats are for users who want small files

try:  # ISA-L deflate: fast, GIL released (see module docstring)
    from isal import isal_zlib as _deflate
except ImportError:  # pragma: no cover - exercised only where isal has no wheel
    _deflate = zlib


def _format_name(fmt: str) -> str:
    fmt = _ALIASES.get(fmt.lower().lstrip("."), fmt.lower().lstrip("."))
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


_SCRATCH = threading.local()
LZ77_REPEATS = 0.5  # share of residuals repeating the previous pixel's from which LZ77 pays (see encode_png)


def _scratch(name: str, size: int, dtype) -> np.ndarray:
    """A per-thread reusable 1-D buffer: a fresh megabyte per image costs more in page faults than the work."""
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype)
        setattr(_SCRATCH, name, buf)
    return buf[:size]


def _chunk(kind: bytes, parts: list) -> list:
    """A PNG chunk around data given as parts (joined once by the caller: each copy of a large IDAT costs page faults)."""
    crc = _deflate.crc32(kind)
    for part in parts:
        crc = _deflate.crc32(part, crc)
    length = sum(memoryview(part).nbytes for part in parts)
    return [struct.pack(">I", length), kind, *parts, struct.pack(">I", crc & 0xFFFFFFFF)]


def _zlib_parts(data: np.ndarray) -> list:
    """A zlib stream of data [n] uint8, as parts: Huffman alone for photographic residuals, else LZ77 deflate."""
    from attnvis.render import _png  # numba: loaded on first use

    if _png.repeat_share(data, 3) >= LZ77_REPEATS:
        return [_deflate.compress(data, 1)]
    words = _scratch("words", _png.words_needed(data.size), np.uint32)
    size = _png.deflate_huffman(data, words)
    adler = _deflate.adler32(data) & 0xFFFFFFFF
    return [b"\x78\x01", words.view(np.uint8)[:size], struct.pack(">I", adler)]  # header: deflate, 32K window


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless 8-bit RGB PNG: "Sub" filter on every row, one IDAT chunk.

    The filtered rows are deflated in one of two ways, chosen by how often a
    residual repeats the previous pixel's: smooth images (heatmaps, mostly
    repeats) with ISA-L's deflate level 1, whose LZ77 matches pay off there;
    photographic ones (overlays), where matches are rare, with a Huffman
    code alone (:mod:`attnvis.render._png`): as small, 4-5x faster. Both are
    standard zlib streams.

    Args:
        rgb: uint8 [H, W, 3] RGB.

    Returns:
        The PNG file's bytes.
    """
    return _png_file(check_rgb(rgb, "image to encode"))


def _png_file(rgb: np.ndarray) -> bytes:
    """:func:`encode_png` of a checked, C-contiguous RGB image."""
    from attnvis.render import _png  # numba: loaded on first use

    height, width = rgb.shape[:2]
    filtered = _scratch("filtered", height * (width * 3 + 1), np.uint8).reshape(height, width * 3 + 1)
    _png.sub_filter(rgb.reshape(height, width * 3), filtered)  # (H, 1 + 3W)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    idat = _zlib_parts(filtered.reshape(-1))
    return b"".join([_PNG_SIGNATURE, *_chunk(b"IHDR", [header]), *_chunk(b"IDAT", idat), *_chunk(b"IEND", [])])


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
    rgb = check_rgb(rgb, "image to encode")
    if fmt == "png":
        return _png_file(rgb)
    import cv2

    quality = DEFAULT_QUALITY[fmt] if quality is None else int(quality)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    params = [cv2.IMWRITE_JPEG_QUALITY if fmt == "jpg" else cv2.IMWRITE_WEBP_QUALITY, quality]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # OpenCV wants BGR; ~50x faster than NumPy's reversed-stride copy
    ok, buf = cv2.imencode("." + fmt, bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()


def encode_npy(array: np.ndarray) -> bytes:
    """The bytes of ``np.save(array)``, for :func:`write_bytes_atomic`."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def write_bytes_atomic(path: str | os.PathLike, data) -> Path:
    """Write ``data`` (bytes or any contiguous buffer) to ``path`` through a temporary file in the same folder and ``os.replace``.

    Readers never see a half-written file: either the old file or the new one.
    """
    write_atomic(os.fspath(path), data)
    return Path(path)


def write_atomic(path: str, data) -> None:
    """:func:`write_bytes_atomic` on a ``str`` path, returning nothing (the batch's per-file path)."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.urandom(6).hex()}.tmp")
    # O_EXCL: never clobber; 0o666 & umask: the same permissions as a plain open() (mkstemp gives 0600)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise _naming(err, path) from None
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # os.write names no file: say which one it was
            raise _naming(err, path) from None
        raise


def _naming(err: OSError, path: str) -> OSError:
    """The same error (same subclass, errno and message) naming ``path``."""
    return type(err)(err.errno, err.strerror, err.filename or path) if err.errno else err


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
