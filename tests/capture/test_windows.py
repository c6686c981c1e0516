"""Windowed blocks (Swin, Swinv2) captured per block: equal to the library's own attention, with their layout.

Oracles: Hugging Face ``output_attentions=True`` (eager; it returns each
stage's last block) and, for every block, the weights the model's own
attention modules return, read by a plain forward hook.
"""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnvis.capture import capture_attention  # noqa: E402
from attnvis.metadata import WindowLayout  # noqa: E402
from attnvis.sources.windows import hf_swin_layouts  # noqa: E402

SIZES = {"square": (48, 48), "nonsquare": (40, 56)}


def _swin(v2: bool = False):
    torch.manual_seed(0)
    config_cls, model_cls = ((transformers.Swinv2Config, transformers.Swinv2Model) if v2
                             else (transformers.SwinConfig, transformers.SwinModel))
    config = config_cls(image_size=48, patch_size=4, embed_dim=8, depths=[2, 2, 2], num_heads=[1, 2, 2], window_size=3)
    model = model_cls(config, add_pooling_layer=False).eval()
    model.config._attn_implementation = "eager"
    return model


def _module_weights(model, x: torch.Tensor) -> list[np.ndarray]:
    """Every block's attention module's returned weights, (B·windows, heads, w², w²), by a forward hook."""
    seen = []
    modules = [block.attention for stage in model.encoder.layers for block in stage.blocks]
    handles = [m.register_forward_hook(lambda _m, _a, out: seen.append(out[1].numpy())) for m in modules]
    with torch.no_grad():
        model(pixel_values=x, output_attentions=True)  # Swinv2's modules return weights only when asked
    for handle in handles:
        handle.remove()
    return seen


def _captured(model, x: torch.Tensor):
    with capture_attention(model) as recorder, torch.no_grad():
        model(pixel_values=x)
    return [w.numpy() for w in recorder.weights], list(recorder.layers)


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_swin_blocks_equal_hf_attention(size):
    model = _swin()
    x = torch.randn(2, 3, *size)
    maps, layers = _captured(model, x)
    layouts = hf_swin_layouts(model.config, size)
    assert [info.window for info in layers] == layouts
    assert {layout.shift for layout in layouts} == {0, 1}  # shifted and unshifted blocks
    for mine, theirs, layout in zip(maps, _module_weights(model, x), layouts):
        assert mine.shape == (2, layout.num_windows, *theirs.shape[1:])  # (B, windows, heads, w², w²)
        np.testing.assert_allclose(mine.reshape(theirs.shape), theirs, atol=1e-5, rtol=0)
    with torch.no_grad():
        last = model(pixel_values=x, output_attentions=True).attentions  # each stage's last block
    for i, theirs in zip((1, 3, 5), last):
        np.testing.assert_allclose(maps[i].reshape(theirs.shape), theirs.numpy(), atol=1e-5, rtol=0)


def test_swin_capture_leaves_sdpa_model_as_it_was():
    model = _swin()
    model.config._attn_implementation = "sdpa"
    x = torch.randn(1, 3, 48, 48)
    maps, layers = _captured(model, x)
    assert len(maps) == 6 and model.config._attn_implementation == "sdpa"
    np.testing.assert_allclose(maps[0].sum(-1), 1.0, atol=1e-5)  # softmax rows


def test_swinv2_blocks_equal_hf_attention():
    model = _swin(v2=True)
    x = torch.randn(2, 3, 48, 48)
    maps, layers = _captured(model, x)
    theirs = _module_weights(model, x)
    with torch.no_grad():
        last = model(pixel_values=x, output_attentions=True).attentions  # each stage's last block
    assert len(maps) == len(theirs) == 6
    for mine, attn, info, block in zip(maps, theirs, layers,
                                       [b for stage in model.encoder.layers for b in stage.blocks]):
        np.testing.assert_allclose(mine.reshape(attn.shape), attn, atol=1e-5, rtol=0)
        assert (info.window.window, info.window.shift) == (block.window_size, block.shift_size)
    for i, attn in zip((1, 3, 5), last):
        np.testing.assert_allclose(maps[i].reshape(attn.shape), attn.numpy(), atol=1e-5, rtol=0)
    assert [info.window.grid for info in layers] == [(12, 12)] * 2 + [(6, 6)] * 2 + [(3, 3)] * 2
    assert [info.window.stage for info in layers] == [0, 0, 1, 1, 2, 2]
    assert layers[1].window == WindowLayout(0, (12, 12), 3, 1)


def _timm_swin():
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    torch.manual_seed(0)
    return timm_swin.SwinTransformer(img_size=(48, 60), patch_size=4, window_size=3, embed_dim=8, depths=(2, 2),
                                     num_heads=(1, 2), num_classes=3).eval()


def _timm_recomputed(model, x: torch.Tensor) -> list[np.ndarray]:
    """softmax(q·kᵀ·scale + relative bias + shift mask), from each WindowAttention's own input, weights and bias."""
    seen = []

    def pre(attn, args, kwargs):
        windows, mask = args[0], kwargs.get("mask", args[1] if len(args) > 1 else None)
        b_, n, _ = windows.shape
        q, k, _ = attn.qkv(windows).reshape(b_, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q * attn.scale) @ k.transpose(-2, -1) + attn._get_rel_pos_bias()
        if mask is not None:
            scores = (scores.view(-1, mask.shape[0], attn.num_heads, n, n) + mask[None, :, None]).view(b_, -1, n, n)
        seen.append(scores.softmax(-1).numpy())

    blocks = [block for stage in model.layers for block in stage.blocks]
    handles = [block.attn.register_forward_pre_hook(pre, with_kwargs=True) for block in blocks]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


def test_timm_swin_blocks_equal_timm_attention():
    model = _timm_swin()
    x = torch.randn(2, 3, 48, 60)
    with torch.no_grad():
        plain = model(x)
    with capture_attention(model) as recorder, torch.no_grad():
        captured = model(x)
    torch.testing.assert_close(captured, plain, rtol=0, atol=1e-5)  # the unfused path is the model's own result
    layouts = [info.window for info in recorder.layers]
    assert [(lay.grid, lay.shift) for lay in layouts] == [((12, 15), 0), ((12, 15), 1), ((6, 8), 0), ((6, 8), 1)]
    assert all(lay.roll_before_pad for lay in layouts) and layouts[3].padded == (6, 9)
    for mine, theirs, lay in zip(recorder.weights, _timm_recomputed(model, x), layouts):
        assert tuple(mine.shape) == (2, lay.num_windows, *theirs.shape[1:])
        np.testing.assert_allclose(mine.numpy().reshape(theirs.shape), theirs, atol=1e-5, rtol=0)


def test_timm_geometry_stitches_back_to_each_position():
    """Oracle: timm's own ``_attn`` (roll, pad, partition) places position ids in windows; stitching puts them back."""
    from attnvis.render.windows import stitch_windows

    block = _timm_swin().layers[1].blocks[1]  # shifted, grid 6x8 padded to 6x9 after the roll
    windows = []

    class Spy(torch.nn.Module):
        def forward(self, x, mask=None):
            windows.append(x[..., 0].clone())  # (windows, w²): the position id of each key
            return x

    block.attn = Spy()
    ids = torch.arange(1, 6 * 8 + 1, dtype=torch.float32).reshape(1, 6, 8, 1).expand(1, 6, 8, 8).contiguous()
    with torch.no_grad():
        block._attn(ids)
    keys = windows[0].numpy()  # padding keys hold 0
    attn = np.broadcast_to(keys[:, None, None, :], (keys.shape[0], 1, 9, 9)) / 1.0
    layout = WindowLayout(1, (6, 8), 3, 1, roll_before_pad=True)
    np.testing.assert_array_equal(stitch_windows(attn, layout), ids[0, ..., 0].numpy())
    hf_order = WindowLayout(1, (6, 8), 3, 1)  # the pad-then-roll placement differs here
    assert not np.array_equal(stitch_windows(attn, hf_order), ids[0, ..., 0].numpy())
