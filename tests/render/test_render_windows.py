"""Window attention stitched into one map: against a per-position NumPy reference and Swin's own geometry."""

import numpy as np
import pytest

from attnvis.metadata import LayerInfo, ModelMetadata, WindowLayout
from attnvis.render.windows import stitch_windows


def reference_stitch(attn: np.ndarray, layout: WindowLayout) -> np.ndarray:
    """Position by position: where did the block see (i, j)? Mean over heads and queries of that key."""
    h, w = layout.grid
    ph, pw = layout.padded
    win, (sh, sw) = layout.window, layout.shifts
    per_window = (pw // win)
    out = np.zeros((h, w), np.float64)
    for i in range(h):
        for j in range(w):
            si, sj = (i - sh) % ph, (j - sw) % pw  # torch.roll(x, (-sh, -sw)) moves (i, j) to (i - sh, j - sw)
            n = (si // win) * per_window + sj // win
            k = (si % win) * win + sj % win
            out[i, j] = attn[n, :, :, k].mean()
    return out


def _random_attention(layout: WindowLayout, heads: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((layout.num_windows, heads, layout.window**2, layout.window**2))
    attn = np.exp(logits)
    return (attn / attn.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("layout", [
    WindowLayout(0, (8, 8), 4, 0),  # unshifted, square
    WindowLayout(0, (8, 8), 4, 2),  # shifted
    WindowLayout(1, (5, 7), 3, 1),  # non-square, padded to 6x9, shifted
    WindowLayout(2, (2, 3), 2, 0),  # padded, unshifted
    WindowLayout(3, (3, 5), 4, (0, 2)),  # padded to 4x8, shifted along the columns only (torchvision)
], ids=["unshifted", "shifted", "nonsquare-shifted", "nonsquare-padded", "per-axis-shift"])
def test_stitch_matches_per_position_reference(layout):
    attn = _random_attention(layout)
    got = stitch_windows(attn, layout)
    assert got.shape == layout.grid and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, reference_stitch(attn, layout), atol=1e-6)
    one = stitch_windows(attn, layout, head=1)
    np.testing.assert_allclose(one, reference_stitch(attn[:, 1:2], layout), atol=1e-6)
    np.testing.assert_allclose(stitch_windows(attn[None], layout), got)  # a batch axis of 1 is accepted


def test_unpadded_windows_each_sum_to_one():
    layout = WindowLayout(0, (6, 9), 3, 0)
    grid = stitch_windows(_random_attention(layout), layout)
    np.testing.assert_allclose(grid.reshape(2, 3, 3, 3).sum(axis=(1, 3)), 1.0, atol=1e-5)


def test_shift_is_undone_with_swin_own_partition():
    """Oracle: Hugging Face's ``window_partition`` and Swin's ``torch.roll`` place each position in its window."""
    torch = pytest.importorskip("torch")
    swin = pytest.importorskip("transformers.models.swin.modeling_swin")
    layout = WindowLayout(0, (6, 10), 3, 1)  # padded to 6x12
    ph, pw = layout.padded
    ids = torch.arange(ph * pw, dtype=torch.float32).reshape(1, ph, pw, 1)
    rolled = torch.roll(ids, shifts=(-layout.shift, -layout.shift), dims=(1, 2))  # SwinLayer.cyclic_shift
    windows = swin.window_partition(rolled, layout.window).reshape(-1, layout.window**2)  # (windows, w²): position ids
    attn = windows[:, None, None, :].expand(-1, 2, 4, -1).numpy()  # every query "gives" each key its own id
    got = stitch_windows(attn, layout)
    np.testing.assert_array_equal(got, np.arange(ph * pw, dtype=np.float32).reshape(ph, pw)[:6, :10])


def test_shape_mismatch_is_one_clear_error():
    layout = WindowLayout(0, (8, 8), 4, 0)
    with pytest.raises(ValueError, match="does not match 4 windows of 4x4"):
        stitch_windows(np.zeros((3, 2, 16, 16), np.float32), layout)
    with pytest.raises(ValueError, match="head 5 out of range"):
        stitch_windows(_random_attention(layout), layout, head=5)


def test_window_layout_round_trips_through_metadata():
    layers = [LayerInfo("encoder.layers.0.blocks.1", "self", 2, 16, 16, "SwinLayer", WindowLayout(0, (5, 7), 4, 2)),
              LayerInfo("blocks.0.attn", "self", 2, 17, 17)]
    back = ModelMetadata.from_props(ModelMetadata(layers=layers).to_props()).layers
    assert back == layers and back[0].window.padded == (8, 8) and back[1].window is None
