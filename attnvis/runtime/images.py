"""Images in, model input out: decoding and the preprocessing the metadata describes."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import cv2
import numpy as np
import PIL
from PIL import Image

from attnvis.errors import InputError
from attnvis.metadata import Preprocess
from attnvis.runtime import _jpeg

DEFAULT_MAX_PIXELS = 40_000_000  # ~8K × 5K: its overlays and heatmaps alone take ~1 GB in flight

# PIL modes whose pixels OpenCV turns into 8-bit colour faithfully: bilevel, grey (8/16-bit),
# palette, colour with or without alpha, CMYK and YCbCr JPEG.
SUPPORTED_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                             "I;16", "I;16B", "I;16L", "I;16N"})
_MODE_NAMES = {"F": "32-bit float", "I": "32-bit integer", "LAB": "Lab colour", "HSV": "HSV colour"}
_PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}
_VERIFIED_PILLOW = 13  # the Pillow major version attnvis.runtime._resample is tested against (its pass order changed in 13)
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", 0)  # OpenCV >= 4.11 decodes straight to RGB: no BGR pass


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (H, W, 3).

    A plain JPEG is decoded straight to RGB by libjpeg-turbo
    (:func:`attnvis.runtime._jpeg.decode`: the same pixels, 28% less time for a photo);
    everything else by ``cv2.imdecode``, which also rejects truncated files
    that ``cv2.imread`` would silently fill with grey.
    """
    if not data:
        raise InputError(f"{name}: the file is empty; give a PNG/JPEG/WebP/BMP/TIFF image")
    rgb = _jpeg.decode(data)
    if rgb is not None:
        return rgb
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD_RGB or cv2.IMREAD_COLOR)
    if rgb is None:
        raise InputError(f"{name}: cannot decode the image (corrupt, truncated or not an image); give a readable PNG/JPEG file")
    return rgb if _IMREAD_RGB else cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)


def probe(data: bytes, name: str, max_pixels: int) -> str:
    """Check an encoded image's header; return its format name.

    Raises:
        InputError: empty file, not an image, unsupported pixel mode, or more
            than ``max_pixels`` pixels. The message is one line.
    """
    from PIL import UnidentifiedImageError

    if not data:
        raise InputError(f"{name}: the file is empty (0 bytes)")
    size = _jpeg.size(data)
    if size is not None:
        _check_pixels(name, *size, max_pixels)
        return "JPEG"
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only: no pixel is decoded here
            fmt, mode, (width, height) = im.format or "image", im.mode, im.size
    except Image.DecompressionBombError as err:  # PIL's own guard, past twice its MAX_IMAGE_PIXELS
        declared = _declared(err)
        if declared is not None and declared <= max_pixels:
            return "image"  # the user raised --max-pixels past PIL's guard on purpose: OpenCV decodes it
        said = f"{declared:,} pixels" if declared is not None else "an enormous image"
        raise InputError(f"{name}: the header declares {said} (a decompression bomb?), over --max-pixels "
                         f"{max_pixels:,}; raise --max-pixels only for a file you trust") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image in a format PIL/OpenCV can read (PNG, JPEG, WebP, BMP, TIFF, GIF)") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL's header parsers raise these on garbage
        raise InputError(f"{name}: unreadable image header ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    _check_pixels(name, width, height, max_pixels)
    if mode not in SUPPORTED_MODES:
        raise InputError(f"{name}: unsupported pixel mode {mode} ({_MODE_NAMES.get(mode, 'no 8-bit colour conversion')}); convert it to 8-bit RGB")
    return fmt


def _check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InputError(f"{name}: {width}x{height} = {width * height:,} pixels is over --max-pixels {max_pixels:,}; raise --max-pixels to render it")


def _declared(err: Exception) -> int | None:
    """The pixel count a ``DecompressionBombError`` says the header declares (PIL does not tell it otherwise)."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    return int(found.group(1)) if found else None


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3), with one clear error if it cannot be.

    The header is checked first (:func:`probe`): an image of more than
    ``max_pixels`` pixels is refused before a byte of it is decoded.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except (IsADirectoryError, PermissionError) as err:
        raise InputError(f"cannot read image {path}: {err.strerror}") from None
    probe(data, str(path), max_pixels)
    return decode_image(data, str(path))


def _resize(image: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Resize (and center-crop when ``resize_short``) to ``pre.size`` as PIL does, as timm/HF/torchvision do.

    With ``resize_short`` the image is first resized to ``floor(size / crop_pct)``
    — its short side for a square target (torchvision ``Resize(int)``), both
    sides for a non-square one (timm's eval transform) — then center-cropped.
    """
    out_h, out_w = pre.size
    if not pre.resize_short:
        return _pil_resize(image, (out_w, out_h), pre.interpolation)
    scale_h, scale_w = (math.floor(s / pre.crop_pct + 1e-6) for s in (out_h, out_w))
    h, w = image.shape[:2]
    if scale_h == scale_w:  # torchvision's Resize(int) arithmetic
        size = (scale_w, int(scale_w * h / w)) if w <= h else (int(scale_h * w / h), scale_h)
    else:
        size = (scale_w, scale_h)
    resized = _pil_resize(image, size, pre.interpolation)
    left, top = int(round((size[0] - out_w) / 2.0)), int(round((size[1] - out_h) / 2.0))
    return _crop(resized, left, top, out_w, out_h)


def _pil_resize(image: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """``Image.resize(size, filter)`` of an RGB array, bit for bit (PIL's resampling is what timm/HF/torchvision use).

    Through :func:`attnvis.runtime._resample.resize_rgb` (~5x faster, no PIL
    image) where it is verified equal to the installed Pillow, else PIL.
    """
    from attnvis.runtime import _resample

    if interpolation in _resample.FILTERS and _PILLOW_MAJOR == _VERIFIED_PILLOW:
        return _resample.resize_rgb(image, size, interpolation)
    return np.asarray(Image.fromarray(image).resize(size, _PIL_FILTERS.get(interpolation, Image.BILINEAR)))


def _crop(image: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
    """``Image.crop`` of an array: the box may reach past the edges, which PIL fills with zeros."""
    out = np.zeros((height, width, image.shape[2]), image.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, image.shape[0]), min(left + width, image.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return out


def preprocess(images: list[np.ndarray], pre: Preprocess) -> np.ndarray:
    """RGB uint8 images → float32 (B, 3, H, W) normalized as the model expects."""
    batch = np.empty((len(images), 3, *pre.size), np.float32)
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    for i, image in enumerate(images):
        x = _resize(image, pre)
        if pre.channel_order.upper() == "BGR":
            x = x[..., ::-1]
        # order="C": the transposed copy laid out channel-first, so the arithmetic runs along rows (4x faster
        # than on a channel-last layout, whose innermost axis is 3 long); the same float32 operations either way
        batch[i] = (x.transpose(2, 0, 1).astype(np.float32, order="C") * np.float32(pre.scale) - mean) / std
    return batch
