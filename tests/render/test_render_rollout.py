"""Attention rollout and threshold masks on hand-computed 3x3 cases."""

from __future__ import annotations

import numpy as np
import pytest

from attnvis.render import attention_rollout, threshold_mask

A1 = np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.4, 0.4, 0.2]], np.float32)
A2 = np.array([[0.2, 0.2, 0.6], [0.3, 0.3, 0.4], [1.0, 0.0, 0.0]], np.float32)
SHIFT = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)


def test_single_layer_adds_identity_and_normalizes_rows():
    expected = [[0.75, 0.15, 0.1], [0.05, 0.9, 0.05], [0.2, 0.2, 0.6]]  # (A1 + I) / 2
    np.testing.assert_allclose(attention_rollout([A1[None]]), expected, rtol=1e-6)


def test_two_layers_later_layer_on_the_left():
    # Â1 = (A1 + I)/2, Â2 = (A2 + I)/2 = [[.6,.1,.3],[.15,.65,.2],[.5,0,.5]]; R = Â2 · Â1 by hand
    expected = [[0.515, 0.24, 0.245], [0.185, 0.6475, 0.1675], [0.475, 0.175, 0.35]]
    result = attention_rollout([A1[None], A2[None]])
    np.testing.assert_allclose(result, expected, rtol=1e-6)
    np.testing.assert_allclose(result.sum(axis=1), 1.0, rtol=1e-6)
    wrong_order = [0.5225, 0.1725, 0.305]  # Â1 · Â2, what tools with the product reversed draw
    assert not np.allclose(result[0], wrong_order)


@pytest.mark.parametrize(
    "fusion, expected",
    [
        ("mean", [[0.75, 0.25, 0], [0, 0.75, 0.25], [0.25, 0, 0.75]]),
        ("max", [[2 / 3, 1 / 3, 0], [0, 2 / 3, 1 / 3], [1 / 3, 0, 2 / 3]]),
        ("min", np.eye(3)),
    ],
)
def test_head_fusion(fusion, expected):
    heads = np.stack([np.eye(3, dtype=np.float32), SHIFT])  # (heads, Q, K)
    np.testing.assert_allclose(attention_rollout([heads], head_fusion=fusion), expected, rtol=1e-6, atol=1e-7)


def test_discard_ratio_drops_weakest_per_row_ties_later_key_first():
    # floor(0.34 * 3) = 1 weight per row: .2 | the later .1 | .2
    expected = [[1.5 / 1.8, 0.3 / 1.8, 0], [0.1 / 1.9, 1.8 / 1.9, 0], [0.4 / 1.8, 0.4 / 1.8, 1.0 / 1.8]]
    np.testing.assert_allclose(attention_rollout([A1[None]], discard_ratio=0.34), expected, rtol=1e-6)
    np.testing.assert_allclose(attention_rollout([A1[None]], discard_ratio=1.0), np.eye(3))


def test_accepts_head_reduced_maps_and_leaves_input_alone():
    heads = np.stack([A1, A2])
    copy = heads.copy()
    np.testing.assert_allclose(attention_rollout([heads]), attention_rollout([heads.mean(0)]), rtol=1e-6)
    np.testing.assert_array_equal(heads, copy)


@pytest.mark.parametrize(
    "maps, kwargs, match",
    [
        ([], {}, "at least one"),
        ([np.ones((2, 3, 4))], {}, "square"),
        ([np.ones((2, 3, 3)), np.ones((2, 4, 4))], {}, "one size"),
        ([np.ones((2, 3, 3))], {"head_fusion": "median"}, "median"),
        ([np.ones((2, 3, 3))], {"discard_ratio": 1.5}, "discard_ratio"),
    ],
)
def test_rollout_bad_arguments(maps, kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_rollout(maps, **kwargs)


@pytest.mark.parametrize(
    "keep, expected",
    [
        (0.6, [[False, True], [True, False]]),  # .4 + .3 = .7 >= .6; .4 alone is not
        (0.4, [[False, True], [False, False]]),  # .4 alone reaches .4
        (0.41, [[False, True], [True, False]]),
        (0.0, [[False, False], [False, False]]),
        (1.0, [[True, True], [True, True]]),
    ],
)
def test_threshold_mask_by_hand(keep, expected):
    values = np.array([[1, 4], [3, 2]], np.float32)  # shares .1 .4 .3 .2, exact in binary
    np.testing.assert_array_equal(threshold_mask(values, keep), expected)


def test_threshold_mask_3x3_and_zeros():
    values = np.arange(9, dtype=np.float32).reshape(3, 3)  # total 36; 8 + 7 = 15 < 18 <= 8 + 7 + 6
    expected = np.zeros((3, 3), bool)
    expected[2] = True
    np.testing.assert_array_equal(threshold_mask(values, 0.5), expected)
    assert not threshold_mask(values, 1.0)[0, 0]  # a zero weight is never needed


def test_threshold_mask_ties_by_position_and_errors():
    np.testing.assert_array_equal(threshold_mask(np.full(4, 0.25), 0.5), [True, True, False, False])
    with pytest.raises(ValueError, match="keep"):
        threshold_mask(np.ones(3), 1.2)
    with pytest.raises(ValueError, match="non-negative"):
        threshold_mask(np.array([0.5, -0.1]), 0.5)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("cls_index", [0, None])
def test_rollout_row_is_the_drawn_row_of_the_full_rollout(fusion, cls_index):
    from attnvis.metadata import TokenLayout
    from attnvis.render.rollout import rollout_row

    rng = np.random.default_rng(5)
    prefix = 1 if cls_index is not None else 0
    maps = [rng.random((3, 9 + prefix, 9 + prefix)).astype(np.float32) for _ in range(4)]
    maps = [m / m.sum(-1, keepdims=True) for m in maps]
    copies = [m.copy() for m in maps]
    tokens = TokenLayout(prefix_tokens=prefix, grid=(3, 3), cls_index=cls_index)
    full = attention_rollout(maps, head_fusion=fusion)  # (T, T) float32
    drawn = full[cls_index] if cls_index is not None else full.mean(axis=0)  # a model without CLS: the mean row
    np.testing.assert_allclose(rollout_row(maps, tokens, fusion), drawn[prefix:], rtol=1e-5, atol=1e-7)
    assert all(np.array_equal(m, c) for m, c in zip(maps, copies))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_rollout_row_of_head_means_and_other_dtypes(dtype):
    """``[T, T]`` maps (a ``mean-heads`` export) and non-float32 maps take the same one-pass kernel."""
    from attnvis.metadata import TokenLayout
    from attnvis.render.rollout import rollout_row

    rng = np.random.default_rng(9)
    maps = [rng.random((13, 13)) for _ in range(3)]
    maps = [(m / m.sum(-1, keepdims=True)).astype(dtype) for m in maps]
    tokens = TokenLayout(prefix_tokens=1, grid=(3, 4), cls_index=0)
    want = attention_rollout([m.astype(np.float32) for m in maps])[0, 1:]
    np.testing.assert_allclose(rollout_row(maps, tokens), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("heads, prefix, grid", [(1, 1, (3, 3)), (4, 1, (12, 12)), (12, 5, (7, 9)), (16, 1, (4, 4))])
def test_cls_rows_with_rollout_equal_attention_grid_and_rollout_row_bit_for_bit(heads, prefix, grid):
    """The map store's one-call path: each layer's row is attention_grid's, the rollout row is rollout_row's."""
    from attnvis.metadata import TokenLayout
    from attnvis.render import attention_grid
    from attnvis.render.rollout import cls_rows_with_rollout, rollout_row

    rng = np.random.default_rng(heads)
    size = prefix + grid[0] * grid[1]
    maps = [rng.random((heads, size, size), dtype=np.float32) for _ in range(3)]
    maps = [m / m.sum(-1, keepdims=True) for m in maps]
    tokens = TokenLayout(prefix_tokens=prefix, grid=grid, cls_index=0)
    rows, rollout = cls_rows_with_rollout(maps, tokens)
    assert rows.dtype == rollout.dtype == np.float32 and rows.shape == (3, grid[0] * grid[1])
    for layer, row in zip(maps, rows):
        assert row.tobytes() == attention_grid(layer, tokens).tobytes()
    assert rollout.tobytes() == rollout_row(maps, tokens).tobytes()


def test_cls_rows_with_rollout_leaves_other_maps_to_the_general_functions():
    from attnvis.metadata import TokenLayout
    from attnvis.render.rollout import cls_rows_with_rollout

    maps = [np.full((2, 10, 10), 0.1, np.float32)] * 2
    tokens = TokenLayout(prefix_tokens=1, grid=(3, 3), cls_index=0)
    assert cls_rows_with_rollout(maps, tokens) is not None
    assert cls_rows_with_rollout(maps, TokenLayout(prefix_tokens=1, grid=(3, 3))) is None  # no CLS: the mean over queries
    assert cls_rows_with_rollout([m.astype(np.float16) for m in maps], tokens) is None
    assert cls_rows_with_rollout([m[0] for m in maps], tokens) is None  # [T, T]: heads already averaged
    assert cls_rows_with_rollout([maps[0], maps[0][:1]], tokens) is None  # layers of different shapes
    assert cls_rows_with_rollout(maps, TokenLayout(prefix_tokens=1, grid=(2, 3), cls_index=0)) is None  # keys ≠ grid
