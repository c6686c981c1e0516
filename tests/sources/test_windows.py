"""Swin window layouts against Hugging Face's own forward pass, and its window maps stitched per stage."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from attnvis.render.windows import stitch_windows  # noqa: E402
from attnvis.sources.windows import hf_swin_layouts  # noqa: E402


def _swin():
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=48, patch_size=4, embed_dim=8, depths=[2, 2, 2], num_heads=[1, 2, 2],
                                     window_size=3)
    model = transformers.SwinModel(config, add_pooling_layer=False).eval()
    model.config._attn_implementation = "eager"
    return model


@pytest.mark.parametrize("size", [(48, 48), (40, 56)], ids=["square", "nonsquare"])
def test_layouts_match_hf_swin_forward(size):
    model = _swin()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(pixel_values=x, output_attentions=True, output_hidden_states=True)
    layouts = hf_swin_layouts(model.config, size)
    blocks = [block for stage in model.encoder.layers for block in stage.blocks]
    assert len(layouts) == len(blocks) == 6
    for layout, block in zip(layouts, blocks):  # the model's own window/shift after set_shift_and_window_size
        assert (int(block.window_size), int(block.shift_size)) == (layout.window, layout.shift)
    assert any(layout.shift for layout in layouts) and any(not layout.shift for layout in layouts)
    # transformers records each stage's last block: (B · windows, heads, w², w²)
    last = [layouts[i] for i in (1, 3, 5)]
    for attn, layout, heads in zip(out.attentions, last, model.config.num_heads):
        assert attn.shape == (2 * layout.num_windows, heads, layout.window**2, layout.window**2)
        for b in range(2):
            one = attn[b * layout.num_windows:(b + 1) * layout.num_windows].numpy()
            grid = stitch_windows(one, layout)
            assert grid.shape == layout.grid and np.isfinite(grid).all()
            if layout.padded == layout.grid:  # every window's received attention sums to its w² queries' mean: 1
                np.testing.assert_allclose(grid.sum(), layout.num_windows, rtol=1e-5)
    # each stage's input grid, as the model reshapes its hidden states: (B, C, h, w)
    assert [layouts[i].grid for i in (0, 2, 4)] == [tuple(h.shape[2:]) for h in out.reshaped_hidden_states[:3]]
