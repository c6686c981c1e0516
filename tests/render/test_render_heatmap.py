"""render_map / render_heatmap / render_regions against NumPy references and OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from render_reference import opencv_chain, paint_regions, render, resize_bilinear

from attnvis.render import COLORMAPS, Scale, colormap_table, region_values, render_heatmap, render_map, render_regions

SIZES = [  # (h, w, H, W): grid and image
    (14, 14, 480, 640),
    (1, 1, 7, 5),
    (3, 5, 1, 9),
    (7, 3, 100, 1),
    (1, 1, 1, 1),
    (5, 9, 37, 23),
    (24, 16, 333, 517),
    (14, 14, 14, 14),
    (16, 16, 9, 13),
]


def _inputs(h, w, H, W, seed=0):
    rng = np.random.default_rng(seed)
    grid = rng.random((h, w), dtype=np.float32) * 0.01  # softmax-sized values
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    return grid, image


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("size", SIZES)
def test_matches_numpy_reference_exactly(size, parallel):
    grid, image = _inputs(*size)
    heat, over = render_map(grid, image, parallel=parallel)
    ref_heat, ref_over = render(grid, image, colormap_table("jet"))
    np.testing.assert_array_equal(heat, ref_heat)
    np.testing.assert_array_equal(over, ref_over)


@pytest.mark.parametrize("size", SIZES)
def test_matches_opencv_chain_within_one_level(size):
    grid, image = _inputs(*size, seed=1)
    ref_heat, ref_over, ref_level = opencv_chain(grid, image)
    gray_heat, _ = render_map(grid, image, colormap="gray")  # gray: colour == level
    level_diff = np.abs(gray_heat[:, :, 0].astype(int) - ref_level)
    assert level_diff.max() <= 1
    heat, over = render_map(grid, image)
    same_level = level_diff == 0
    np.testing.assert_array_equal(heat[same_level], ref_heat[same_level])
    np.testing.assert_array_equal(over[same_level], ref_over[same_level])
    assert same_level.mean() >= 0.9999 or same_level.size < 10_000 and level_diff.sum() <= 1


def test_large_image_against_opencv():
    # one 4000x3000 case: the share of pixels off by one level must stay below 1e-4
    grid, image = _inputs(14, 14, 3000, 4000, seed=2)
    _, _, ref_level = opencv_chain(grid, image)
    gray_heat, _ = render_map(grid, image, colormap="gray")
    diff = np.abs(gray_heat[:, :, 0].astype(int) - ref_level)
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-4


def test_resize_reference_is_opencv_up_to_rounding():
    # OpenCV 5's float32 INTER_LINEAR strays from the exact taps by up to ~1.3e-5 of the
    # value range on a few % of pixels (its SIMD path); far below one level (1/255).
    grid, _ = _inputs(14, 14, 1, 1)
    ours = resize_bilinear(grid, 480, 640)
    theirs = cv2.resize(grid, (640, 480), interpolation=cv2.INTER_LINEAR)
    span = float(grid.max() - grid.min())
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=5e-5 * span)
    assert (ours == theirs).mean() > 0.2  # the same formula, not merely something close


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.7, 1.0, 1 / 3])
def test_blend_equals_addweighted_for_every_pair(alpha):
    # every (image, heat) byte pair appears once: a 256x256 image with gray heat levels
    image_byte, heat_byte = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    image = np.repeat(image_byte[:, :, None], 3, axis=2).astype(np.uint8)
    grid = heat_byte.astype(np.float32)
    heat, over = render_map(grid, image, colormap="gray", alpha=alpha)
    np.testing.assert_array_equal(heat[:, :, 0], heat_byte)  # identity size, 0..255 range: levels exact
    np.testing.assert_array_equal(over, cv2.addWeighted(image, 1 - alpha, heat, alpha, 0))


@pytest.mark.parametrize("colormap", COLORMAPS)
def test_every_colormap_uses_its_table(colormap):
    grid, image = _inputs(6, 4, 30, 20, seed=3)
    heat, _ = render_map(grid, image, colormap=colormap)
    np.testing.assert_array_equal(heat, render(grid, image, colormap_table(colormap))[0])


@pytest.mark.parametrize("value", [0.0, 1e-3, -5.0])
def test_constant_map_gives_level_zero(value):
    grid = np.full((14, 14), value, np.float32)
    image = np.full((10, 12, 3), 200, np.uint8)
    heat, over = render_map(grid, image)
    assert (heat == colormap_table("jet")[0]).all()
    np.testing.assert_array_equal(over, cv2.addWeighted(image, 0.5, heat, 0.5, 0))


def test_inputs_unmodified_and_outputs_fresh():
    grid, image = _inputs(14, 14, 48, 64)
    grid_copy, image_copy = grid.copy(), image.copy()
    heat, over = render_map(grid, image)
    np.testing.assert_array_equal(grid, grid_copy)
    np.testing.assert_array_equal(image, image_copy)
    assert heat.dtype == over.dtype == np.uint8 and heat.shape == over.shape == image.shape
    assert not np.shares_memory(heat, image) and not np.shares_memory(over, image)


def test_out_arrays_are_written_and_returned():
    grid, image = _inputs(14, 14, 48, 64)
    out = (np.full_like(image, 7), np.full_like(image, 9))  # stale contents: every byte must be overwritten
    for seed in range(3):  # map after map into the same memory
        grid = _inputs(14, 14, 48, 64, seed=seed)[0]
        heat, over = render_map(grid, image, parallel=bool(seed % 2), out=out)
        assert heat is out[0] and over is out[1]
        expected = render_map(grid, image)
        np.testing.assert_array_equal(heat, expected[0])
        np.testing.assert_array_equal(over, expected[1])


@pytest.mark.parametrize("out", [
    (np.zeros((48, 64, 3), np.uint8),),
    (np.zeros((48, 64, 3), np.uint8), np.zeros((48, 65, 3), np.uint8)),
    (np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64, 3), np.float32)),
    (np.zeros((48, 64, 3), np.uint8), np.zeros((64, 48, 3), np.uint8).transpose(1, 0, 2)),
])
def test_bad_out_arrays_raise_value_error(out):
    grid, image = _inputs(14, 14, 48, 64)
    with pytest.raises(ValueError, match="out must be two C-contiguous uint8 arrays"):
        render_map(grid, image, out=out)
    shared = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="must not overlap"):
        render_map(grid, image, out=(shared, shared))


def test_non_contiguous_and_float64_inputs():
    grid, image = _inputs(14, 14, 40, 60)
    expected = render_map(grid, image)
    got = render_map(grid.astype(np.float64).T.copy().T, np.asfortranarray(image))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_fixed_scale_clips_and_matches_reference():
    grid, image = _inputs(14, 14, 40, 60, seed=4)
    scale = Scale(vmin=0.002, vmax=0.006)
    heat, over = render_map(grid, image, scale=scale)
    ref_heat, ref_over = render(grid, image, colormap_table("jet"), vmin=0.002, vmax=0.006)
    np.testing.assert_array_equal(heat, ref_heat)
    np.testing.assert_array_equal(over, ref_over)
    degenerate, _ = render_map(grid, image, scale=Scale(0.1, 0.1))
    assert (degenerate == colormap_table("jet")[0]).all()


def test_render_heatmap_is_render_map_heat():
    grid, image = _inputs(5, 7, 21, 33)
    np.testing.assert_array_equal(render_heatmap(grid, (21, 33), "magma"), render_map(grid, image, "magma")[0])


@pytest.mark.parametrize(
    "grid, image, kwargs, match",
    [
        (np.zeros((2, 2), np.float32), np.zeros((4, 4, 3), np.float32), {}, "uint8"),
        (np.zeros((2, 2), np.float32), np.zeros((4, 4), np.uint8), {}, r"\[H, W, 3\]"),
        (np.zeros((2, 2), np.float32), np.zeros((0, 4, 3), np.uint8), {}, "empty"),
        (np.zeros((2, 2, 2), np.float32), np.zeros((4, 4, 3), np.uint8), {}, "2-D"),
        (np.array([[np.nan, 0]], np.float32), np.zeros((4, 4, 3), np.uint8), {}, "NaN"),
        (np.zeros((2, 2), np.float32), np.zeros((4, 4, 3), np.uint8), {"alpha": 1.5}, "alpha"),
        (np.zeros((2, 2), np.float32), np.zeros((4, 4, 3), np.uint8), {"colormap": "rainbow"}, "rainbow"),
        (np.zeros((2, 2), np.float32), np.zeros((4, 4, 3), np.uint8), {"scale": Scale(1, 0)}, "vmin"),
    ],
)
def test_bad_input_raises_value_error(grid, image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        render_map(grid, image, **kwargs)


def test_region_values_match_reference():
    rng = np.random.default_rng(5)
    boxes = np.array([[0, 0, 10, 8], [3.2, 2.7, 17.9, 11.4], [-5, -5, 100, 100], [15, 1, 15, 9], [7, 3, 2, 9]], np.float32)
    weights = rng.random(len(boxes), dtype=np.float32)
    got = region_values(weights, boxes, (12, 20))
    np.testing.assert_allclose(got, paint_regions(weights, boxes, 12, 20), rtol=1e-6, atol=1e-7)
    assert got[0, 0] == pytest.approx(weights[0] + weights[2])  # integer box paints [y1:y2, x1:x2]
    assert got[8, 0] == pytest.approx(weights[2])


def test_render_regions_normalizes_and_blends_like_grid_path():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    weights = np.array([0.5, 0.3, 0.2], np.float32)
    boxes = np.array([[0, 0, 20, 15], [10, 5, 40, 30], [5, 20, 15, 30]], np.float32)
    heat, over = render_regions(weights, boxes, image, alpha=0.4)
    values = paint_regions(weights, boxes, 30, 40)
    lut = colormap_table("jet")
    from render_reference import blend, levels

    np.testing.assert_array_equal(heat, lut[levels(values)])
    np.testing.assert_array_equal(over, blend(image, heat, 0.4))
    assert (heat[0, 0] != heat[25, 35]).any()


def test_render_regions_bad_shapes():
    with pytest.raises(ValueError, match="boxes"):
        render_regions(np.ones(2, np.float32), np.ones((3, 4), np.float32), np.zeros((4, 4, 3), np.uint8))


def test_threads_calling_both_variants_at_once_agree():
    # the parallel variant takes a lock (workqueue layer), the serial one runs concurrently
    from concurrent.futures import ThreadPoolExecutor

    grid, image = _inputs(14, 14, 60, 80, seed=7)
    expected = render_map(grid, image, parallel=False)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: render_map(grid, image, parallel=k % 2 == 0), range(8)))
    for heat, over in results:
        np.testing.assert_array_equal(heat, expected[0])
        np.testing.assert_array_equal(over, expected[1])


def _range_cases():
    rng = np.random.default_rng(11)
    for case in range(300):
        h, w = rng.integers(1, 20, 2)
        H, W = rng.integers(1, 400, 2)
        kind = case % 4
        if kind == 0:
            grid = rng.random((h, w), dtype=np.float32)
        elif kind == 1:  # near-constant: rounding decides the extremes
            grid = (np.float32(0.3) + rng.integers(-2, 3, (h, w)) * np.float32(2.0**-24)).astype(np.float32)
        elif kind == 2:  # signed, wide dynamic range
            grid = (rng.standard_normal((h, w)) * 10.0 ** rng.integers(-6, 6, (h, w))).astype(np.float32)
        else:  # few distinct values: many ties
            grid = rng.integers(0, 3, (h, w)).astype(np.float32) / np.float32(7)
        yield grid, int(H), int(W)


def test_upsampled_range_equals_the_min_max_of_every_pixel():
    from attnvis.render import _kernels as k

    for grid, H, W in _range_cases():
        rows = k.resize_rows(grid, W)
        y0, y1, fy = k.axis_coeffs(grid.shape[0], H)
        full = resize_bilinear(grid, H, W)
        assert k._upsampled_range(rows, y0, y1, fy) == (full.min(), full.max()), (grid.shape, H, W)
