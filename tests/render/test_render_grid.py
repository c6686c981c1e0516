"""attention_grid: head reduction and query row on the CLS row, checked against full-map reduction."""

from __future__ import annotations

import numpy as np
import pytest
from render_reference import grid_from_full

from attnvis.metadata import TokenLayout
from attnvis.render import attention_grid, attention_grids, head_grids

VIT = TokenLayout(prefix_tokens=1, grid=(14, 14), cls_index=0, prefix_names=("cls",))
DEIT = TokenLayout(prefix_tokens=2, grid=(3, 4), cls_index=0, prefix_names=("cls", "dist"))
NO_CLS = TokenLayout(prefix_tokens=0, grid=(2, 3), cls_index=None)


def _softmax_maps(heads, q, k, seed=0):
    logits = np.random.default_rng(seed).normal(size=(heads, q, k))
    maps = np.exp(logits)
    return (maps / maps.sum(-1, keepdims=True)).astype(np.float32)  # (heads, Q, K)


@pytest.mark.parametrize("tokens", [VIT, DEIT, NO_CLS])
@pytest.mark.parametrize("head", [None, 0, 2])
def test_full_capture_matches_full_map_reduction(tokens, head):
    k = tokens.prefix_tokens + tokens.num_patches
    attn = _softmax_maps(3, k, k)
    got = attention_grid(attn, tokens, head=head)
    assert got.dtype == np.float32 and got.shape == tokens.grid and got.flags.c_contiguous
    expected = grid_from_full(attn, tokens.prefix_tokens, tokens.grid, tokens.cls_index, head)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_cls_row_values_by_hand():
    tokens = TokenLayout(prefix_tokens=1, grid=(1, 2), cls_index=0)
    attn = np.zeros((2, 3, 3), np.float32)  # (heads, Q, K)
    attn[0, 0] = [0.5, 0.2, 0.3]
    attn[1, 0] = [0.1, 0.6, 0.3]
    np.testing.assert_allclose(attention_grid(attn, tokens), [[0.4, 0.3]])
    np.testing.assert_allclose(attention_grid(attn, tokens, head=1), [[0.6, 0.3]])


def test_mean_heads_and_cls_reduced_inputs():
    k = 1 + 196
    attn = _softmax_maps(4, k, k, seed=1)
    full = attention_grid(attn, VIT)
    np.testing.assert_allclose(attention_grid(attn.mean(0), VIT), full, rtol=1e-6)  # "mean-heads": [Q, K]
    np.testing.assert_allclose(attention_grid(attn.mean(0)[0, 1:], VIT), full, rtol=1e-6)  # "cls": [K - prefix]
    np.testing.assert_allclose(attention_grid(attn[None], VIT), full)  # (1, heads, Q, K)


def test_batched_variant():
    k = 2 + 12
    attn = np.stack([_softmax_maps(3, k, k, seed=s) for s in range(4)])  # (B, heads, Q, K)
    grids = attention_grids(attn, DEIT, head=1)
    assert grids.shape == (4, 3, 4)
    for b in range(4):
        np.testing.assert_array_equal(grids[b], attention_grid(attn[b], DEIT, head=1))


@pytest.mark.parametrize("tokens", [VIT, DEIT, NO_CLS])
def test_head_grids_equal_one_call_per_head(tokens):
    k = tokens.prefix_tokens + tokens.num_patches
    attn = _softmax_maps(5, k, k, seed=3)
    grids = head_grids(attn, tokens)
    assert grids.dtype == np.float32 and grids.shape == (5, *tokens.grid) and grids.flags.c_contiguous
    for h in range(5):
        np.testing.assert_array_equal(grids[h], attention_grid(attn, tokens, head=h))
    np.testing.assert_array_equal(head_grids(attn[None], tokens), grids)  # (1, heads, Q, K)
    with pytest.raises(ValueError, match="per-head grids need a \\[heads, Q, K\\] map"):
        head_grids(attn[0], tokens)


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 6, 12, 16])
def test_head_mean_is_numpys_mean_bit_for_bit(heads):
    rng = np.random.default_rng(heads)
    for scale in (1e-6, 1.0, 1e4):  # softmax-like, unit and wide ranges
        attn = (rng.random((heads, 5, 1 + 196)) * scale).astype(np.float32)
        expected = attn[:, 0, 1:].mean(axis=0, dtype=np.float32).reshape(14, 14)
        np.testing.assert_array_equal(attention_grid(attn, VIT), expected)


def test_input_unmodified():
    attn = _softmax_maps(2, 197, 197)
    copy = attn.copy()
    attention_grid(attn, VIT)
    np.testing.assert_array_equal(attn, copy)


@pytest.mark.parametrize(
    "attn, tokens, head, match",
    [
        (np.zeros((2, 197, 198), np.float32), VIT, None, "key length 198 does not match 1 prefix \\+ 14x14 grid"),
        (np.zeros((2, 197, 197), np.float32), VIT, 2, "head 2 out of range.*0..1"),
        (np.zeros((2, 197, 197), np.float32), VIT, -1, "head -1 out of range"),
        (np.zeros((197, 197), np.float32), VIT, 0, "already averaged"),
        (np.zeros(197, np.float32), VIT, None, "reduced row length 197 does not match a 14x14 grid"),
        (np.zeros(196, np.float32), VIT, 0, "reduced in-graph"),
        (np.zeros((1, 2, 3, 4, 5), np.float32), VIT, None, "must be"),
        (np.zeros((1, 4, 4), np.float32), TokenLayout(prefix_tokens=0, grid=None, kind="regions"), None, "regions"),
        (np.zeros((1, 4, 4), np.float32), TokenLayout(prefix_tokens=0, grid=(2, 2), cls_index=5), None, "cls_index 5"),
    ],
)
def test_bad_shapes_raise_clear_errors(attn, tokens, head, match):
    with pytest.raises(ValueError, match=match):
        attention_grid(attn, tokens, head=head)
