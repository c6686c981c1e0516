"""torchvision's Swin attention (``ShiftedWindowAttention``, V2 too): every block's window maps, with their layout.

torchvision computes a block's attention in the plain function
``torchvision.models.swin_transformer.shifted_window_attention``, so no module
boundary ever sees the softmax. The adapter swaps the module's ``forward``
(restored on removal) for :func:`window_attention`: the same arithmetic, step
for step, that also returns the softmax ``(B·windows, heads, w², w²)`` before
its dropout, and the shift it applied per axis. torchvision pads the
``(B, H, W, C)`` grid to whole windows first and rolls it after (as Hugging
Face does, ``roll_before_pad=False``), and it does not shift along an axis
whose padded size is no larger than the window, so a block's shift can differ
between the axes (:attr:`attnvis.metadata.WindowLayout.shifts`).
torchvision is never imported here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnvis.capture.adapters.windows import (_square, is_torchvision_window_attention, next_layout,
                                              record_windows)
from attnvis.capture.registry import Recorder, Restore, register_adapter


def _partition(x: torch.Tensor, window: list[int], shifts: list[int]) -> torch.Tensor:
    """Padded ``(B, pH, pW, C)`` → rolled by ``-shifts`` → ``(B·windows, wh·ww, C)``, row-major windows."""
    b, pad_h, pad_w, c = x.shape
    if sum(shifts) > 0:
        x = torch.roll(x, shifts=(-shifts[0], -shifts[1]), dims=(1, 2))
    x = x.view(b, pad_h // window[0], window[0], pad_w // window[1], window[1], c)
    num_windows = (pad_h // window[0]) * (pad_w // window[1])
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b * num_windows, window[0] * window[1], c)


def _scores(module: nn.Module, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits plus relative position bias ``(B·windows, heads, N, N)``, and v ``(B·windows, heads, N, C/heads)``."""
    n_windows, n, c = windows.shape
    qkv_bias, logit_scale = module.qkv.bias, getattr(module, "logit_scale", None)
    if logit_scale is not None and qkv_bias is not None:  # V2 has no key bias (torchvision zeroes a clone's middle)
        length = qkv_bias.numel() // 3
        qkv_bias = torch.cat((qkv_bias[:length], torch.zeros_like(qkv_bias[length: 2 * length]),
                              qkv_bias[2 * length:]))
    qkv = F.linear(windows, module.qkv.weight, qkv_bias)
    qkv = qkv.reshape(n_windows, n, 3, module.num_heads, c // module.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:  # V2: cosine attention
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        q = q * (c // module.num_heads) ** -0.5
        attn = q.matmul(k.transpose(-2, -1))
    return attn + module.get_relative_position_bias(), v


def _shift_mask(x: torch.Tensor, padded: tuple[int, int], window: list[int], shifts: list[int]) -> torch.Tensor:
    """torchvision's mask ``(windows, N, N)``: -100 between keys that came from different regions of the roll."""
    attn_mask = x.new_zeros(padded)
    h_slices = ((0, -window[0]), (-window[0], -shifts[0]), (-shifts[0], None))
    w_slices = ((0, -window[1]), (-window[1], -shifts[1]), (-shifts[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            attn_mask[h[0]: h[1], w[0]: w[1]] = count
            count += 1
    attn_mask = attn_mask.view(padded[0] // window[0], window[0], padded[1] // window[1], window[1])
    num_windows = (padded[0] // window[0]) * (padded[1] // window[1])
    attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window[0] * window[1])
    attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))


def _masked(attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B·windows, heads, N, N)`` logits plus each window's ``(windows, N, N)`` mask."""
    n_windows, heads, n, _ = attn.shape
    attn = attn.view(n_windows // mask.size(0), mask.size(0), heads, n, n)
    return (attn + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, n, n)


def window_attention(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """``shifted_window_attention`` as ``module.forward`` calls it, also returning its softmax.

    Args:
        module: a torchvision ``ShiftedWindowAttention`` (or ``ShiftedWindowAttentionV2``).
        x: the block's ``(B, H, W, C)`` grid.

    Returns:
        The module's output ``(B, H, W, C)``, the softmax ``(B·windows, heads, wh·ww, wh·ww)``
        before dropout, and the shift applied along (rows, columns).
    """
    window = list(module.window_size)
    b, height, width, c = x.shape
    pad_r = (window[1] - width % window[1]) % window[1]
    pad_b = (window[0] - height % window[0]) % window[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    padded = (x.shape[1], x.shape[2])
    # no shift along an axis whose padded size is no larger than the window, as torchvision does
    shifts = [0 if window[i] >= padded[i] else int(module.shift_size[i]) for i in range(2)]
    windows = _partition(x, window, shifts)  # (B·windows, N, C)
    attn, v = _scores(module, windows)
    if sum(shifts) > 0:
        attn = _masked(attn, _shift_mask(windows, padded, window, shifts))
    attn = F.softmax(attn, dim=-1)  # (B·windows, heads, N, N): what is recorded
    out = F.dropout(attn, p=module.attention_dropout, training=module.training)
    out = out.matmul(v).transpose(1, 2).reshape(windows.size(0), windows.size(1), c)
    out = F.dropout(F.linear(out, module.proj.weight, module.proj.bias), p=module.dropout, training=module.training)
    return _reverse(out, b, padded, window, shifts)[:, :height, :width, :].contiguous(), attn, tuple(shifts)


def _reverse(out: torch.Tensor, b: int, padded: tuple[int, int], window: list[int], shifts: list[int]) -> torch.Tensor:
    """``(B·windows, N, C)`` → the padded ``(B, pH, pW, C)`` grid, roll undone."""
    out = out.view(b, padded[0] // window[0], padded[1] // window[1], window[0], window[1], out.size(-1))
    out = out.permute(0, 1, 3, 2, 4, 5).reshape(b, padded[0], padded[1], out.size(-1))
    if sum(shifts) > 0:
        out = torch.roll(out, shifts=(shifts[0], shifts[1]), dims=(1, 2))
    return out


def _example() -> tuple[nn.Module, tuple]:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[3, 3],
                            num_classes=3)
    return model.eval(), (torch.randn(2, 3, 40, 56),)  # grids 10x14 and 5x7: padded, shifted


@register_adapter("torchvision ShiftedWindowAttention", predicate=is_torchvision_window_attention, example=_example)
def attach_torchvision_window_attention(module: nn.Module, path: str, recorder: Recorder) -> list:
    """Run ``module`` through :func:`window_attention` (its own ``forward`` back on removal); record its softmax."""
    window = _square(module.window_size, "window", path)

    def forward(x: torch.Tensor) -> torch.Tensor:
        out, attn, shifts = window_attention(module, x)
        layout = next_layout(recorder, tuple(x.shape[1:3]), window, shifts)  # x: (B, H, W, C)
        record_windows(recorder, path, attn, layout, type(module).__name__)
        return out

    previous = module.__dict__.get("forward")  # an instance forward someone set before us, kept

    def restore() -> None:
        if previous is None:
            del module.forward  # the instance attribute: the class's forward again
        else:
            module.forward = previous

    module.forward = forward
    return [Restore(restore)]
