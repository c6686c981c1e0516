"""Read, check and decode one input image, refusing bad files with a one-line reason.

The header is checked before any pixel is decoded
(:func:`attnvis.runtime.images.probe`, shared with ``visualize``), so an
enormous image or an unsupported pixel mode costs one small read, not a
gigabyte of RAM. The pixels are then decoded by OpenCV through
:func:`attnvis.runtime.images.decode_image`, as ``visualize`` does, so
both commands see the same RGB array (EXIF orientation applied).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import numpy as np

from attnvis.errors import InputError
from attnvis.metadata import Preprocess
from attnvis.runtime.images import DEFAULT_MAX_PIXELS, probe

@dataclass
class Decoded:
    """One decoded image and its model input.

    Attributes:
        image: RGB uint8 (H, W, 3) at the original size (``--save maps``: only
            the thumbnail's pixels, see :func:`attnvis.batch.stages.decode_item`).
        tensor: float32 (C, h, w) preprocessed as the model's metadata says.
        size: the original image's (H, W); ``image.shape[:2]`` when not given.
        check: the source file's fingerprint ``[bytes, mtime_ns, crc32]`` (:func:`source_check`),
            recorded in the manifest so that ``attnvis render`` notices a source replaced since.
    """

    image: np.ndarray
    tensor: np.ndarray
    size: tuple[int, int] | None = None
    check: list[int] | None = None

    def __post_init__(self):
        if self.size is None:
            self.size = tuple(self.image.shape[:2])


def source_check(data, mtime_ns: int) -> list[int]:
    """A source file's fingerprint: ``[bytes, mtime_ns, crc32 of the bytes]`` (the CRC is what decides;
    ~0.3 ms per MB, on the decode threads, where the bytes were read anyway)."""
    return [len(data), int(mtime_ns), zlib.crc32(data)]


def decode(path: str, name: str, pre: Preprocess | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Read ``path``, check its header, decode it and preprocess it for the model.

    Args:
        path: the image file.
        name: how the image is named in errors (its key).
        pre: the model's preprocessing (``None``: no tensor, for tests).
        max_pixels: refuse images with more pixels (checked on the header).

    Raises:
        InputError: missing/unreadable file or a bad image (see :func:`probe`).
    """
    from attnvis.runtime.images import decode_image, preprocess

    data, check = read_checked(path, name)
    fmt = probe(data, name, max_pixels)
    try:
        image = decode_image(data, name)
    except InputError:
        raise InputError(f"{name}: the {fmt} data is corrupt or truncated; OpenCV cannot decode it") from None
    tensor = preprocess([image], pre)[0] if pre is not None else np.empty((0,), np.float32)  # (C, h, w)
    return Decoded(image, tensor, check=check)


def read(path: str, name: str) -> bytes:
    """The file's bytes; a missing or unreadable file is an :class:`InputError` naming ``name``."""
    return _read(path, name)[0]


def read_checked(path: str, name: str) -> tuple[bytes, list[int]]:
    """The file's bytes and its :func:`source_check` (what the manifest records); errors as :func:`read`."""
    data, mtime = _read(path, name)
    return data, source_check(data, mtime)


def _read(path: str, name: str) -> tuple[bytes, int]:
    try:
        with open(path, "rb") as f:
            data = f.read()
            mtime = os.fstat(f.fileno()).st_mtime_ns
    except FileNotFoundError:
        raise InputError(f"{name}: file not found") from None
    except OSError as err:
        raise InputError(f"{name}: cannot read the file ({err.strerror or err})") from None
    return data, mtime
