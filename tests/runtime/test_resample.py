"""``resize_rgb`` against Pillow's ``Image.resize``: equal bit for bit, for every shape it is given."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnvis.runtime._resample import resize_rgb
from attnvis.runtime.images import _PILLOW_MAJOR, _VERIFIED_PILLOW

# resize_rgb reproduces Pillow 13 (whose pass order differs from older releases); attnvis uses it only there
pytestmark = pytest.mark.skipif(_PILLOW_MAJOR != _VERIFIED_PILLOW, reason=f"Pillow {_PILLOW_MAJOR} installed, "
                                f"resize_rgb reproduces Pillow {_VERIFIED_PILLOW}: PIL itself resizes here")

PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
FILTERS = list(PIL_FILTERS)


def pillow(image: np.ndarray, size: tuple[int, int], filter: str) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, PIL_FILTERS[filter]))


def check(image: np.ndarray, size: tuple[int, int], filter: str) -> np.ndarray:
    out = resize_rgb(image, size, filter)
    assert out.dtype == np.uint8 and out.shape == (size[1], size[0], 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, pillow(image, size, filter), err_msg=f"{image.shape} -> {size} {filter}")
    return out


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Blurred noise plus a little grain: smooth gradients like a photograph's."""
    rng = np.random.default_rng(seed)
    x = rng.random((h + 16, w + 16, 3))
    for axis in (0, 1):  # two passes of an 8-wide box blur per axis
        for _ in range(2):
            c = np.cumsum(x, axis=axis)
            x = (np.take(c, range(8, c.shape[axis]), axis) - np.take(c, range(c.shape[axis] - 8), axis)) / 8
    x = (x - x.min()) / max(np.ptp(x), 1e-9) * 255 + rng.normal(0, 4, x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def extremes(h: int, w: int) -> dict[str, np.ndarray]:
    """Flat black and white, a 0/255 checkerboard and 0/255 columns: overshoot that clip8 must clamp."""
    y, x = np.indices((h, w))
    checker = np.where((x + y) % 2 == 0, 255, 0).astype(np.uint8)
    columns = np.where(x % 2 == 0, 255, 0).astype(np.uint8)
    return {
        "black": np.zeros((h, w, 3), np.uint8),
        "white": np.full((h, w, 3), 255, np.uint8),
        "checker": np.repeat(checker[..., None], 3, axis=2),
        "columns": np.stack([columns, 255 - columns, columns], axis=2),
    }


# (in_w, in_h) -> (out_w, out_h)
SHAPES = [
    ((640, 480), (96, 96)),
    ((640, 480), (224, 224)),
    ((640, 480), (97, 31)),
    ((333, 201), (17, 250)),  # down in x, up in y
    ((31, 182), (40, 150)),  # up in x, down in y: Pillow runs the vertical pass first
    ((100, 100), (90, 80)),  # rows removed == 2 x columns removed: horizontal first
    ((100, 100), (90, 79)),  # one more row removed: vertical first
    ((7, 5), (64, 48)),
    ((96, 96), (640, 480)),
    ((100, 80), (100, 40)),  # width unchanged: vertical pass only
    ((100, 80), (50, 80)),  # height unchanged: horizontal pass only
    ((100, 80), (100, 80)),  # same size: a copy
    ((1, 1), (5, 7)),
    ((9, 1), (3, 1)),
    ((5, 5), (1, 1)),
    ((1, 9), (4, 2)),
    ((2, 3), (1, 700)),
    ((700, 2), (3, 1)),
]


@pytest.mark.parametrize("filter", FILTERS)
@pytest.mark.parametrize(("in_size", "out_size"), SHAPES, ids=[f"{a[0]}x{a[1]}-{b[0]}x{b[1]}" for a, b in SHAPES])
def test_matches_pillow(in_size, out_size, filter):
    w, h = in_size
    check(noise(h, w), out_size, filter)
    check(photo(h, w), out_size, filter)
    for image in extremes(h, w).values():
        check(image, out_size, filter)


RANDOM_SIZES = [tuple(int(v) for v in np.random.default_rng(7 + i).integers(1, 701, 4)) for i in range(40)]


@pytest.mark.parametrize(("w", "h", "out_w", "out_h"), RANDOM_SIZES)
def test_matches_pillow_random_sizes(w, h, out_w, out_h):
    rng = np.random.default_rng(w * 701 + h)
    for filter in FILTERS:
        make = noise if rng.random() < 0.5 else photo
        image = make(h, w, int(rng.integers(1 << 30)))
        check(image, (out_w, out_h), filter)


@pytest.mark.parametrize("filter", FILTERS)
def test_clamping_is_exercised(filter):
    """A 0/255 checkerboard upscaled overshoots both ways; the result must hit both clamps and still match."""
    out = check(extremes(12, 16)["checker"], (37, 29), filter)
    if filter != "bilinear":  # bilinear weights are never negative: nothing to clamp
        assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize("filter", FILTERS)
def test_non_contiguous_input(filter):
    base = photo(90, 120, seed=3)
    views = {
        "transposed": base.transpose(1, 0, 2),
        "strided": base[::2, 1::3],
        "flipped": base[::-1, ::-1],
        "bgr": base[..., ::-1],
        "fortran": np.asfortranarray(base),
    }
    for name, view in views.items():
        assert not view.flags.c_contiguous, name
        out = resize_rgb(view, (41, 23), filter)
        np.testing.assert_array_equal(out, resize_rgb(np.ascontiguousarray(view), (41, 23), filter), err_msg=name)
        np.testing.assert_array_equal(out, pillow(view, (41, 23), filter), err_msg=name)


def test_read_only_input_and_fresh_output():
    image = np.asarray(Image.fromarray(photo(40, 50)))
    assert not image.flags.writeable
    np.testing.assert_array_equal(resize_rgb(image, (20, 15), "bicubic"), pillow(image, (20, 15), "bicubic"))
    same = resize_rgb(image, (50, 40), "bilinear")
    np.testing.assert_array_equal(same, image)
    assert same.flags.writeable and not np.shares_memory(same, image)


@pytest.mark.parametrize("filter", ["nearest", "box", "hamming", "BILINEAR", "", None])
def test_bad_filter(filter):
    with pytest.raises(ValueError, match="unsupported filter"):
        resize_rgb(noise(8, 8), (4, 4), filter)


@pytest.mark.parametrize("image", [
    np.zeros((8, 8), np.uint8),
    np.zeros((8, 8, 4), np.uint8),
    np.zeros((8, 8, 1), np.uint8),
    np.zeros((8, 8, 3), np.float32),
    np.zeros((8, 8, 3), np.uint16),
    np.zeros((2, 8, 8, 3), np.uint8),
    [[[0, 0, 0]]],
], ids=["gray", "rgba", "one-channel", "float32", "uint16", "batch", "list"])
def test_bad_image(image):
    with pytest.raises(ValueError, match=r"uint8 RGB image of shape \(H, W, 3\)"):
        resize_rgb(image, (4, 4), "bilinear")


def test_empty_image():
    with pytest.raises(ValueError, match="empty"):
        resize_rgb(np.zeros((0, 8, 3), np.uint8), (4, 4), "bilinear")


@pytest.mark.parametrize("size", [(0, 4), (4, -1), (4,), (4, 4, 4), (4.0, 4), "ab", None])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        resize_rgb(noise(8, 8), size, "bilinear")
