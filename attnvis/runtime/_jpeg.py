"""Plain JPEGs the short way: the header read from its segments, the pixels decoded straight into an array.

Each function answers only where the answer is certain and returns ``None``
otherwise; the general path (PIL's header parser, OpenCV's decoder) then
decides as it always did, so both paths agree on every file.

- :func:`size`: PIL's header parser is Python that also reads EXIF and MPF
  tags (~60 µs a photo, under the GIL); walking the segment lengths takes ~4.
- :func:`decode`: simplejpeg (libjpeg-turbo's TurboJPEG API) decodes into an
  RGB array in 17.0 ms a 6 MP photo ``cv2.imdecode`` takes 23.5 ms for, and
  a 640×480 JPEG in 1.22 against 1.31 ms amid a batch's other work, with the
  same library and settings (accurate DCT, smooth upsampling), so the pixels
  are equal (the tests compare them with OpenCV's). OpenCV applies the EXIF
  orientation and converts CMYK with its own formula: those files, and any
  file libjpeg warns about (truncated, corrupt: ``strict`` decoding raises),
  go to OpenCV.
"""

from __future__ import annotations

import struct

import numpy as np

try:  # a dependency; without it (a platform without its wheel) every JPEG goes to OpenCV
    import simplejpeg
except ImportError:  # pragma: no cover - installed with attnvis
    simplejpeg = None

_SOI = b"\xff\xd8\xff"
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (C4: Huffman tables, C8: reserved, CC: arithmetic)
_SOS = 0xDA
_APP1 = 0xE1
_ORIENTATION = 0x0112


def segments(data: bytes) -> list[tuple[int, int, int]] | None:
    """(marker, payload start, payload end) of every segment before the first scan, or ``None``.

    ``None``: not a JPEG, or anything irregular: fill bytes, a marker without
    a length, a length past the end, no scan.
    """
    if not data.startswith(_SOI):
        return None
    pos, end, found = 2, len(data), []
    while pos + 4 <= end and data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == _SOS:
            return found
        if length < 2 or pos + 2 + length > end or not 0xC0 <= marker <= 0xFE or 0xD0 <= marker <= 0xD9:
            return None
        found.append((marker, pos + 4, pos + 2 + length))
        pos += 2 + length
    return None


def _frame(data: bytes, found: list[tuple[int, int, int]]) -> tuple[int, int, int] | None:
    """(width, height, components) of the one frame header: 8-bit samples, 1, 3 or 4 components, a size."""
    frames = [(start, stop) for marker, start, stop in found if marker in _SOF]
    if len(frames) != 1 or frames[0][1] - frames[0][0] < 6:
        return None
    start = frames[0][0]
    bits, height, width, components = data[start], *struct.unpack_from(">HH", data, start + 1), data[start + 5]
    if bits != 8 or components not in (1, 3, 4) or not width or not height:
        return None
    return width, height, components


def size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a plain JPEG (L, RGB/YCbCr or CMYK, 8-bit: all decodable), or ``None`` to let PIL look."""
    found = segments(data)
    frame = None if found is None else _frame(data, found)
    return None if frame is None else frame[:2]


def orientation(data: bytes, found: list[tuple[int, int, int]]) -> int | None:
    """The EXIF orientation (1–8 when valid), ``None`` without one, ``0`` for EXIF this does not read."""
    exif = [(start, stop) for marker, start, stop in found if marker == _APP1 and data[start:start + 6] == b"Exif\0\0"]
    if not exif:
        return None
    if len(exif) > 1:
        return 0
    tiff = data[exif[0][0] + 6 : exif[0][1]]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    try:
        magic, ifd = struct.unpack_from(f"{order}HI", tiff, 2) if order else (0, 0)
        if magic != 42:
            return 0
        for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack_from(f"{order}H", tiff, ifd)[0], 12):
            tag, kind, count = struct.unpack_from(f"{order}HHI", tiff, entry)
            if tag == _ORIENTATION:
                return struct.unpack_from(f"{order}H", tiff, entry + 8)[0] if kind == 3 and count == 1 else 0
    except struct.error:  # an offset past the segment
        return 0
    return None


def is_plain(data: bytes) -> bool:
    """A regular header, 1 or 3 components, no EXIF orientation but 1: a JPEG whose RGB needs no correction.

    What :func:`decode` and the GPU's decoder (:mod:`attnvis.batch.feed`) take;
    CMYK and rotated files go to OpenCV, which converts and turns them.
    """
    found = segments(data)
    frame = None if found is None else _frame(data, found)
    return frame is not None and frame[2] != 4 and orientation(data, found) in (None, 1)


def decode(data: bytes) -> np.ndarray | None:
    """RGB uint8 (H, W, 3) of a plain JPEG as OpenCV would decode it, or ``None`` where OpenCV should.

    Plain: a regular header, 1 or 3 components, no EXIF orientation but 1,
    and nothing libjpeg warns about while decoding.
    """
    if simplejpeg is None or not is_plain(data):
        return None
    try:
        return simplejpeg.decode_jpeg(data, "RGB", strict=True)  # releases the GIL
    except ValueError:  # a libjpeg error or warning (truncated, corrupt data): OpenCV's verdict
        return None
