"""The Huffman-only deflate coder (attnvis.render._png) and the writer's choice between coders."""

from __future__ import annotations

import heapq
import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from attnvis.render import _png, encode_image, render_map
from attnvis.render import writers


def _deflate(data: np.ndarray) -> bytes:
    words = np.empty(_png.words_needed(data.size), np.uint32)
    size = _png.deflate_huffman(data, words)
    return words.view(np.uint8)[:size].tobytes()


def _inputs():
    rng = np.random.default_rng(0)
    yield "empty", np.zeros(0, np.uint8)
    yield "one byte", np.array([7], np.uint8)
    yield "two bytes", np.array([0, 255], np.uint8)
    yield "odd length", rng.integers(0, 256, 1001, dtype=np.uint8)
    yield "constant", np.full(70_000, 3, np.uint8)
    yield "uniform", rng.integers(0, 256, 200_000, dtype=np.uint8)
    yield "three values", rng.integers(0, 3, 100_001, dtype=np.uint8)
    # geometric: a plain Huffman code would need codes longer than deflate's 15 bits
    yield "geometric", np.minimum(rng.geometric(0.5, 300_000) - 1, 255).astype(np.uint8)
    yield "photo residuals", (rng.normal(0, 6, 500_000).round() % 256).astype(np.uint8)


@pytest.mark.parametrize("name, data", list(_inputs()), ids=[name for name, _ in _inputs()])
def test_stream_inflates_to_the_input(name, data):
    assert zlib.decompress(_deflate(data), wbits=-15) == data.tobytes()


def test_output_is_deterministic():
    data = (np.random.default_rng(3).normal(0, 9, 300_000).round() % 256).astype(np.uint8)
    assert _deflate(data) == _deflate(data.copy())


def _reference_huffman_cost(freq: np.ndarray) -> int:
    """Total bits of an optimal (unlimited) Huffman code, by the textbook heap construction."""
    heap = [int(f) for f in freq if f > 0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


@pytest.mark.parametrize("seed", range(20))
def test_code_lengths_are_optimal_and_complete(seed):
    rng = np.random.default_rng(seed)
    freq = np.zeros(257, np.int64)
    used = rng.choice(257, size=rng.integers(2, 258), replace=False)
    freq[used] = rng.integers(1, 10_000, used.size)
    lengths = np.zeros(257, np.int64)
    _png._huffman_lengths(freq, 15, lengths)
    assert ((lengths > 0) == (freq > 0)).all()
    assert (2.0 ** -lengths[lengths > 0]).sum() == 1.0  # complete prefix code (Kraft equality)
    assert (freq * lengths).sum() == _reference_huffman_cost(freq)


def test_code_lengths_are_limited_to_15_bits():
    freq = np.zeros(257, np.int64)
    freq[:40] = [2**i for i in range(40)]  # unlimited Huffman depth would be 39
    lengths = np.zeros(257, np.int64)
    _png._huffman_lengths(freq, 15, lengths)
    assert lengths.max() == 15
    assert (2.0 ** -lengths[lengths > 0]).sum() == 1.0
    assert (lengths[:40] > 0).all()


def test_canonical_codes_decode_with_zlib_for_every_byte_value():
    data = np.arange(256, dtype=np.uint8).repeat(np.arange(1, 257))  # every value, skewed counts
    np.random.default_rng(0).shuffle(data)
    assert zlib.decompress(_deflate(data), wbits=-15) == data.tobytes()


def _filtered(rgb: np.ndarray) -> np.ndarray:
    rows = rgb.reshape(rgb.shape[0], -1).astype(np.int16)
    sub = np.concatenate([rows[:, :3], rows[:, 3:] - rows[:, :-3]], axis=1) % 256
    return np.concatenate([np.ones((rows.shape[0], 1)), sub], axis=1).astype(np.uint8).ravel()


def test_writer_picks_huffman_for_photos_and_lz77_for_heatmaps(monkeypatch):
    rng = np.random.default_rng(0)
    photo = np.clip(rng.normal(128, 30, (120, 160, 3)), 0, 255).astype(np.uint8)
    grid = rng.random((14, 14), dtype=np.float32)
    heat, over = render_map(grid, photo)
    assert _png.repeat_share(_filtered(over), 3) < writers.LZ77_REPEATS
    assert _png.repeat_share(_filtered(heat), 3) >= writers.LZ77_REPEATS
    calls = []
    real = _png.deflate_huffman
    monkeypatch.setattr(_png, "deflate_huffman", lambda *a: calls.append(1) or real(*a))
    for image, huffman in ((over, True), (heat, False)):
        calls.clear()
        data = encode_image(image)
        assert bool(calls) is huffman
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1], image)
        Image.open(io.BytesIO(data)).verify()  # chunk CRCs
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_repeat_share_counts_repeats_at_the_distance():
    data = np.tile(np.array([1, 2, 3], np.uint8), 1000)
    assert _png.repeat_share(data, 3) == 1.0
    assert _png.repeat_share(data, 1) == 0.0
    assert _png.repeat_share(np.zeros(2, np.uint8), 3) == 1.0  # nothing to compare: no claim of noise


def test_huffman_png_is_no_larger_than_deflate_level_1_on_a_blended_photo():
    rng = np.random.default_rng(1)
    smooth = cv2.GaussianBlur(rng.normal(128, 60, (240, 320, 3)).astype(np.float32), (0, 0), 1.5)
    photo = np.clip(smooth + rng.normal(0, 3, smooth.shape), 0, 255).astype(np.uint8)
    filtered = _filtered(render_map(rng.random((14, 14), dtype=np.float32), photo)[1])
    assert _png.repeat_share(filtered, 3) < writers.LZ77_REPEATS
    assert len(_deflate(filtered)) <= 1.02 * len(zlib.compress(filtered.tobytes(), 1))


@pytest.mark.parametrize("width", [1, 2, 3, 7, 640])
def test_sub_filter_matches_the_png_definition(width):
    rgb = np.random.default_rng(width).integers(0, 256, (5, width, 3), dtype=np.uint8)
    out = np.empty((5, 3 * width + 1), np.uint8)
    _png.sub_filter(rgb.reshape(5, -1), out)
    np.testing.assert_array_equal(out.ravel(), _filtered(rgb))
