"""Contact sheet and layers GIF: layout, labels, normalization scope, files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnvis.metadata import TokenLayout
from attnvis.render import Scale, attention_grid, contact_sheet, global_scale, layers_gif, render_map

TOKENS = TokenLayout(prefix_tokens=1, grid=(2, 2), cls_index=0)


def _maps(layers=3, heads=2, seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.random((layers, heads, 5, 5)).astype(np.float32)
    return list(maps / maps.sum(-1, keepdims=True))  # per layer (heads, Q, K)


@pytest.fixture
def image():
    return np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)


def test_contact_sheet_layout_and_tiles(image):
    maps = _maps()
    sheet = contact_sheet(maps, TOKENS, image, tile_height=40)
    assert sheet.dtype == np.uint8 and sheet.shape == (3 * 42 - 2, 3 * 62 - 2, 3)  # 3 layers x (mean + 2 heads)
    assert (sheet[40:42] == 255).all() and (sheet[:, 60:62] == 255).all()  # white gaps
    tile = sheet[42:82, 124:184]  # layer 1, head 1
    expected = render_map(attention_grid(maps[1], TOKENS, head=1), image)[1]
    body = (slice(20, 40), slice(0, 60))  # below the label
    np.testing.assert_array_equal(tile[body], expected[body])


def test_contact_sheet_global_normalization_differs(image):
    maps = _maps()
    maps[2] = maps[2] * 0.1  # a weak layer: faint under one global range
    per_image = contact_sheet(maps, TOKENS, image, tile_height=40, mean_column=False)
    global_ = contact_sheet(maps, TOKENS, image, tile_height=40, mean_column=False, normalize="global")
    assert per_image.shape == global_.shape == (3 * 42 - 2, 2 * 62 - 2, 3)
    np.testing.assert_array_equal(per_image[110:, :60], render_map(attention_grid(maps[2], TOKENS, 0), image)[1][26:])
    assert not np.array_equal(per_image[84:], global_[84:])
    with pytest.raises(ValueError, match="normalize"):
        contact_sheet(maps, TOKENS, image, normalize="layer")


def test_global_scale_spans_all_maps():
    assert global_scale([np.array([[0.2, 0.5]]), np.array([[0.1, 0.3]])]) == Scale(0.1, 0.5)
    with pytest.raises(ValueError):
        global_scale([])


def test_layers_gif_frames(tmp_path, image):
    path = layers_gif(tmp_path / "layers.gif", _maps(layers=4), TOKENS, image, duration_ms=300)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 4 and gif.size == (60, 40)
        assert gif.info["duration"] == 300 and gif.info.get("loop") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["layers.gif"]


def test_layers_gif_errors(tmp_path, image):
    with pytest.raises(FileNotFoundError):
        layers_gif(tmp_path / "no" / "x.gif", _maps(), TOKENS, image)
    with pytest.raises(ValueError, match="head 5"):
        layers_gif(tmp_path / "x.gif", _maps(), TOKENS, image, head=5)
