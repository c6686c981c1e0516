"""Windowed attention (Swin and kin): every block's window maps, with the layout to stitch them.

A windowed block attends within ``w × w`` windows of its stage's token grid,
so its attention module computes ``(B·windows, heads, w², w²)``. Only the
*block* knows where those windows lie (its grid, window side and cyclic
shift), so these adapters attach to the block: a pre-hook reads the grid the
block is called with, and the weights its attention module computes are
recorded as ``(B, windows, heads, w², w²)`` (the window count per image is
fixed for a given input size, so the batch axis stays the first axis, as for
every other map) with the block's :class:`~attnvis.metadata.WindowLayout` in
``LayerInfo.window``.

Out of the box: Hugging Face ``SwinLayer`` (weights its eager attention
returns) and ``Swinv2Layer`` (the softmax its attention passes to dropout),
timm's ``SwinTransformerBlock`` (its ``WindowAttention`` switched to the
unfused path, the softmax its ``attn_drop`` receives); torchvision's
``ShiftedWindowAttention`` in :mod:`~attnvis.capture.adapters.torchvision_swin`.
transformers, timm and torchvision are never imported here.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from attnvis.capture.adapters.hf import _switch
from attnvis.capture.registry import Recorder, Restore, register_adapter
from attnvis.errors import ModelError
from attnvis.metadata import LayerInfo, WindowLayout


def next_layout(recorder: Recorder, grid: tuple[int, int], window: int, shift: int | tuple[int, int],
                roll_before_pad: bool = False) -> WindowLayout:
    """The layout of the next windowed block: its stage counts the grid changes among the blocks recorded so far.

    ``shift``: one int for both axes, or ``(rows, columns)`` (torchvision drops it per axis).
    """
    grids = [info.window.grid for info in recorder.layers if info.window is not None]
    stage = sum(1 for before, after in zip(grids, grids[1:]) if before != after)
    if grids and grids[-1] != grid:
        stage += 1
    shift = tuple(int(s) for s in shift) if isinstance(shift, (tuple, list)) else int(shift)
    return WindowLayout(stage, (int(grid[0]), int(grid[1])), int(window), shift, roll_before_pad)


def record_windows(recorder: Recorder, path: str, weights: torch.Tensor, layout: WindowLayout,
                   module_type: str) -> None:
    """Append one block's ``(B·windows, heads, w², w²)`` weights as ``(B, windows, heads, w², w²)``."""
    if recorder.query is not None:
        raise ModelError(f"{path} ({module_type}) is windowed attention: it has no CLS row to capture alone")
    _, heads, q_len, k_len = weights.shape
    if q_len != layout.window ** 2 or k_len != layout.window ** 2:
        raise ModelError(f"{path} ({module_type}) computed {q_len}x{k_len} window maps, but its window is "
                         f"{layout.window}x{layout.window}; attnvis cannot place them on the image")
    recorder.weights.append(weights.reshape(-1, layout.num_windows, heads, q_len, k_len))
    recorder.layers.append(LayerInfo(path, "self", int(heads), int(q_len), int(k_len), module_type, window=layout))


def _grid_hook(grid: list):
    """A ``with_kwargs`` pre-hook keeping the ``input_dimensions`` a HF block is called with."""

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        grid[:] = list(args[1] if len(args) > 1 else kwargs["input_dimensions"])

    return pre


def is_hf_window_block(module: nn.Module) -> bool:
    """True for a transformers Swin/Swinv2 block: it has a window, a shift and an attention module."""
    return (type(module).__module__.startswith(("transformers.models.swin.", "transformers.models.swinv2."))
            and hasattr(module, "window_size") and hasattr(module, "shift_size")
            and isinstance(getattr(module, "attention", None), nn.Module))


def _swin_example() -> tuple[nn.Module, tuple]:
    from transformers import SwinConfig, SwinModel

    torch.manual_seed(0)
    config = SwinConfig(image_size=48, patch_size=4, embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=3)
    return SwinModel(config, add_pooling_layer=False).eval(), (torch.randn(2, 3, 48, 48),)


@register_adapter("transformers Swin window attention", predicate=is_hf_window_block, example=_swin_example)
def attach_hf_window_block(block: nn.Module, path: str, recorder: Recorder) -> list:
    """Record the block's window maps: Swinv2's softmax as its dropout receives it, Swin's eager weights."""
    grid: list = []
    inner = getattr(block.attention, "self", None)
    name = type(block.attention if inner is None else inner).__name__
    attn_path = f"{path}.attention" if inner is None else f"{path}.attention.self"

    def record(weights: torch.Tensor) -> None:
        layout = next_layout(recorder, tuple(grid), int(block.window_size), int(block.shift_size))
        record_windows(recorder, attn_path, weights, layout, name)

    handles = [block.register_forward_pre_hook(_grid_hook(grid), with_kwargs=True)]
    if inner is not None and isinstance(getattr(inner, "dropout", None), nn.Module):  # Swinv2: softmax → dropout
        handles.append(inner.dropout.register_forward_pre_hook(lambda _m, args: record(args[0])))
        return handles

    def after(_m: nn.Module, _args: tuple, output) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise ModelError(f"{attn_path} ({name}) returned no attention weights; load the model with "
                             "attn_implementation='eager'")
        record(weights)

    handles.append(block.attention.register_forward_hook(after))
    return handles + _switch(block.attention.config, "eager")


def _square(pair, what: str, path: str) -> int:
    """One side of a square window (or an equal shift on both axes); an error otherwise."""
    first, second = (int(v) for v in pair)
    if first != second:
        raise ModelError(f"{path}: its {what} differs between the axes ({first}x{second}); attnvis stitches square "
                         "windows shifted equally along both axes")
    return first


def is_timm_window_block(module: nn.Module) -> bool:
    """True for timm's ``SwinTransformerBlock`` whose ``WindowAttention`` has its ``attn_drop``."""
    block = getattr(sys.modules.get("timm.models.swin_transformer"), "SwinTransformerBlock", None)
    return (block is not None and isinstance(module, block)
            and isinstance(getattr(getattr(module, "attn", None), "attn_drop", None), nn.Module))


def _timm_example() -> tuple[nn.Module, tuple]:
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(img_size=(48, 60), patch_size=4, window_size=3, embed_dim=8, depths=(2, 2),
                            num_heads=(1, 2), num_classes=3)
    return model.eval(), (torch.randn(2, 3, 48, 60),)


@register_adapter("timm SwinTransformerBlock", predicate=is_timm_window_block, example=_timm_example)
def attach_timm_window_block(block: nn.Module, path: str, recorder: Recorder) -> list:
    """Switch the block's attention to its explicit path; record the softmax its ``attn_drop`` receives.

    timm rolls the block's (B, H, W, C) input first and pads it after, so the layout says ``roll_before_pad``.
    """
    grid: list = []
    attn, was_fused = block.attn, block.attn.fused_attn

    def pre(_m: nn.Module, args: tuple) -> None:
        grid[:] = list(args[0].shape[1:3])  # (B, H, W, C)

    def record(_dropout: nn.Module, args: tuple) -> None:
        window = _square(block.window_size, "window", path)
        layout = next_layout(recorder, tuple(grid), window, _square(block.shift_size, "shift", path), True)
        record_windows(recorder, f"{path}.attn", args[0], layout, type(attn).__name__)  # (B·windows, heads, w², w²)

    def restore() -> None:
        attn.fused_attn = was_fused

    attn.fused_attn = False
    return [block.register_forward_pre_hook(pre), attn.attn_drop.register_forward_pre_hook(record), Restore(restore)]


def is_torchvision_window_attention(module: nn.Module) -> bool:
    """True for torchvision's ``ShiftedWindowAttention`` (Swin) and ``ShiftedWindowAttentionV2`` as shipped."""
    swin = sys.modules.get("torchvision.models.swin_transformer")
    v1, v2 = (getattr(swin, name, None) for name in ("ShiftedWindowAttention", "ShiftedWindowAttentionV2"))
    return (v1 is not None and isinstance(module, v1)
            and type(module).forward in {v1.forward, getattr(v2, "forward", v1.forward)})


def has_window_blocks(model: nn.Module) -> bool:
    """Whether ``model`` has windowed blocks these adapters capture (its windows can be stitched)."""
    return any(is_hf_window_block(m) or is_timm_window_block(m) or is_torchvision_window_attention(m)
               for m in model.modules())
