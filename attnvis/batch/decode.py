"""Read, check and decode one input image, refusing bad files with a one-line reason.

The header is checked before any pixel is decoded (PIL opens lazily), so an
enormous image or an unsupported pixel mode costs one small read, not a
gigabyte of RAM. The pixels are then decoded by OpenCV through
:func:`attnvis.runtime.images.decode_image`, as ``visualize`` does, so
both commands see the same RGB array (EXIF orientation applied).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from attnvis.errors import InputError
from attnvis.metadata import Preprocess

DEFAULT_MAX_PIXELS = 40_000_000  # ~8K × 5K: its overlays and heatmaps alone take ~1 GB in flight

# PIL modes whose pixels OpenCV turns into 8-bit colour faithfully: bilevel, grey (8/16-bit),
# palette, colour with or without alpha, CMYK and YCbCr JPEG.
SUPPORTED_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                             "I;16", "I;16B", "I;16L", "I;16N"})
_MODE_NAMES = {"F": "32-bit float", "I": "32-bit integer", "LAB": "Lab colour", "HSV": "HSV colour"}


@dataclass
class Decoded:
    """One decoded image and its model input.

    Attributes:
        image: RGB uint8 (H, W, 3) at the original size.
        tensor: float32 (C, h, w) preprocessed as the model's metadata says.
    """

    image: np.ndarray
    tensor: np.ndarray


def probe(data: bytes, name: str, max_pixels: int) -> str:
    """Check an encoded image's header; return its format name.

    Raises:
        InputError: empty file, not an image, unsupported pixel mode, or more
            than ``max_pixels`` pixels. The message is one line.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError(f"{name}: the file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only: no pixel is decoded here
            fmt, mode, (width, height) = im.format or "image", im.mode, im.size
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise InputError(f"{name}: not an image in a format PIL/OpenCV can read (PNG, JPEG, WebP, BMP, TIFF, GIF)") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL's header parsers raise these on garbage
        raise InputError(f"{name}: unreadable image header ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if width * height > max_pixels:
        raise InputError(f"{name}: {width}x{height} = {width * height:,} pixels is over --max-pixels {max_pixels:,}; raise the limit to render it")
    if mode not in SUPPORTED_MODES:
        raise InputError(f"{name}: unsupported pixel mode {mode} ({_MODE_NAMES.get(mode, 'no 8-bit colour conversion')}); convert it to 8-bit RGB")
    return fmt


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

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"{name}: file not found") from None
    except OSError as err:
        raise InputError(f"{name}: cannot read the file ({err.strerror or err})") from None
    fmt = probe(data, name, max_pixels)
    try:
        image = decode_image(data, name)
    except InputError:
        raise InputError(f"{name}: the {fmt} data is corrupt or truncated; OpenCV cannot decode it") from None
    tensor = preprocess([image], pre)[0] if pre is not None else np.empty((0,), np.float32)  # (C, h, w)
    return Decoded(image, tensor)
