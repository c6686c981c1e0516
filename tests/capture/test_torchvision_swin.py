"""torchvision Swin (``ShiftedWindowAttention``, V1 and V2) captured per block: torchvision's own softmax, its layout.

Oracles: the output of ``F.softmax`` inside torchvision's own
``shifted_window_attention`` (recorded by wrapping ``torch.nn.functional.softmax``
during the model's real forward), and, for the layout, torchvision's own
padding, roll and partition of position ids.
"""

import numpy as np
import pytest
import torch

swin_tv = pytest.importorskip("torchvision.models.swin_transformer")

from attnvis.capture import capture_attention  # noqa: E402
from attnvis.capture.adapters.windows import has_window_blocks  # noqa: E402
from attnvis.metadata import LayerInfo, ModelMetadata, WindowLayout  # noqa: E402
from attnvis.render.windows import stitch_windows  # noqa: E402

# (input size, every block's (grid, shift)): 4-pixel patches, window 4, blocks alternate unshifted/shifted by 2
SIZES = {
    "square": ((32, 32), [((8, 8), 0), ((8, 8), 2), ((4, 4), 0), ((4, 4), 0)]),  # 4x4 = one window: no shift
    # 7x11 padded to 8x12; then 4x6 padded to 4x8: no shift along the rows only (4 <= window)
    "nonsquare-padded": ((28, 44), [((7, 11), 0), ((7, 11), 2), ((4, 6), 0), ((4, 6), (0, 2))]),
}


def tiny_swin(v2: bool = False) -> torch.nn.Module:
    """A random-weight torchvision SwinTransformer (two stages of two blocks), V1 or V2."""
    torch.manual_seed(0)
    extra = {"block": swin_tv.SwinTransformerBlockV2, "downsample_layer": swin_tv.PatchMergingV2} if v2 else {}
    return swin_tv.SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
                                   num_classes=10, **extra).eval()


def torchvision_softmax(model: torch.nn.Module, x: torch.Tensor, monkeypatch) -> tuple[torch.Tensor, list[np.ndarray]]:
    """The model's output and every ``F.softmax`` output of its real forward, (B·windows, heads, w², w²)."""
    seen, softmax = [], torch.nn.functional.softmax

    def recording(*args, **kwargs):
        out = softmax(*args, **kwargs)
        seen.append(out.detach().numpy().copy())
        return out

    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(torch.nn.functional, "softmax", recording)
        out = model(x)
    return out, seen


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("case", list(SIZES), ids=list(SIZES))
def test_blocks_equal_torchvision_softmax(case, v2, monkeypatch):
    size, expected = SIZES[case]
    model = tiny_swin(v2)
    x = torch.randn(2, 3, *size)
    plain, theirs = torchvision_softmax(model, x, monkeypatch)
    with capture_attention(model) as recorder, torch.no_grad():
        captured = model(x)
    torch.testing.assert_close(captured, plain, rtol=0, atol=1e-5)  # the rewritten forward is the model's own result
    layouts = [info.window for info in recorder.layers]
    assert [(lay.grid, lay.shift) for lay in layouts] == expected
    assert [lay.stage for lay in layouts] == [0, 0, 1, 1] and not any(lay.roll_before_pad for lay in layouts)
    assert len(recorder.weights) == len(theirs) == 4
    for mine, attn, lay, info in zip(recorder.weights, theirs, layouts, recorder.layers):
        assert tuple(mine.shape) == (2, lay.num_windows, 2, 16, 16)  # (B, windows, heads, w², w²)
        np.testing.assert_allclose(mine.numpy().reshape(attn.shape), attn, atol=1e-5, rtol=0)
        assert info.name.endswith(".attn") and info.module_type.startswith("ShiftedWindowAttention")


def test_capture_restores_the_module_forward():
    model = tiny_swin()
    attn = model.features[1][1].attn
    with capture_attention(model):
        assert "forward" in attn.__dict__  # the rewritten forward, on the instance
    assert "forward" not in attn.__dict__ and has_window_blocks(model)


def _ids_as_torchvision_partitions(grid: tuple[int, int], window: int, shift: int, monkeypatch) -> np.ndarray:
    """(windows, w²): the position id (from 1; padding 0) of each key slot, as torchvision's function places it."""
    seen, linear = [], torch.nn.functional.linear
    ids = torch.arange(1, grid[0] * grid[1] + 1, dtype=torch.float32).reshape(1, *grid, 1)
    n = window * window

    def spy(x, weight, bias=None):
        seen.append(x[..., 0].clone())  # the first call gets the partitioned windows (windows, w², C=1)
        return linear(x, weight, bias)

    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(torch.nn.functional, "linear", spy)
        swin_tv.shifted_window_attention(ids, torch.zeros(3, 1), torch.zeros(1, 1), torch.zeros(1, 1, n, n),
                                         [window, window], 1, [shift, shift], training=False)
    return seen[0].numpy()


def reference_stitch(attn: np.ndarray, layout: WindowLayout) -> np.ndarray:
    """Position by position, pad then roll by ``-shifts``: mean over heads and queries of the key (i, j) became."""
    (h, w), (ph, pw), win, (sh, sw) = layout.grid, layout.padded, layout.window, layout.shifts
    out = np.zeros((h, w), np.float64)
    for i in range(h):
        for j in range(w):
            si, sj = (i - sh) % ph, (j - sw) % pw  # torch.roll(x, (-sh, -sw)) moves (i, j) to (i - sh, j - sw)
            out[i, j] = attn[(si // win) * (pw // win) + sj // win, :, :, (si % win) * win + sj % win].mean()
    return out


@pytest.mark.parametrize("grid,shift,want", [
    ((8, 12), 2, 2),  # padded as is, shifted on both axes
    ((4, 6), 2, (0, 2)),  # padded to 4x8: no shift along the rows
    ((7, 11), 0, 0),  # padded to 8x12, unshifted
])
def test_layout_stitches_torchvision_geometry_back(grid, shift, want, monkeypatch):
    """torchvision's own pad/roll/partition of position ids, stitched with the captured layout, gives the ids back."""
    model = tiny_swin()
    size = (grid[0] * 4, grid[1] * 4)
    with capture_attention(model) as recorder, torch.no_grad():
        model(torch.randn(1, 3, *size))
    layout = next(info.window for info in recorder.layers if info.window.grid == grid and bool(info.window.shift) ==
                  bool(shift))
    assert layout.shift == want
    keys = _ids_as_torchvision_partitions(grid, 4, shift, monkeypatch)  # (windows, 16)
    attn = np.broadcast_to(keys[:, None, None, :], (keys.shape[0], 1, 16, 16))
    ids = np.arange(1, grid[0] * grid[1] + 1, dtype=np.float32).reshape(grid)
    np.testing.assert_array_equal(stitch_windows(attn, layout), ids)
    np.testing.assert_array_equal(reference_stitch(attn, layout), ids)
    if layout.shifts == (0, 2):  # the configured shift on both axes would misplace this block's keys
        both = WindowLayout(layout.stage, grid, 4, 2)
        assert not np.array_equal(stitch_windows(attn, both), ids)


def test_captured_maps_stitch_as_the_numpy_reference():
    model = tiny_swin()
    with capture_attention(model) as recorder, torch.no_grad():
        model(torch.randn(2, 3, 28, 44))
    for weights, info in zip(recorder.weights, recorder.layers):
        for b in range(2):
            attn = weights[b].numpy()  # (windows, heads, w², w²)
            np.testing.assert_allclose(stitch_windows(attn, info.window), reference_stitch(attn, info.window),
                                       atol=1e-6)
            np.testing.assert_allclose(stitch_windows(attn, info.window, head=1),
                                       reference_stitch(attn[:, 1:2], info.window), atol=1e-6)


def test_per_axis_shift_round_trips_through_metadata():
    layout = WindowLayout(1, (4, 6), 4, (0, 2))
    layers = [LayerInfo("features.3.1.attn", "self", 2, 16, 16, "ShiftedWindowAttention", layout)]
    back = ModelMetadata.from_props(ModelMetadata(layers=layers).to_props()).layers
    assert back == layers and back[0].window.shifts == (0, 2) and back[0].window.padded == (4, 8)
    assert WindowLayout(0, (8, 8), 4, (2, 2)).shift == 2 and WindowLayout(0, (8, 8), 4, 3).shifts == (3, 3)
