"""timm's ``Attention`` (ViT, DeiT, DINOv2, ... blocks): weights from its unfused path.

With ``fused_attn`` on, timm calls ``F.scaled_dot_product_attention`` and the
softmax weights never exist. The adapter switches ``fused_attn`` off (restored
on removal) so the module computes ``softmax(q·kᵀ·scale)`` explicitly and
passes it through ``attn_drop``; a pre-hook on ``attn_drop`` records its input,
(B, heads, N, N), before any dropout. For one query row it switches
``fused_attn`` on and leaves the row to the SDPA interception.

timm is never imported here: a module can only be a timm ``Attention`` if
timm was already imported by whoever built the model.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from attnvis.capture.registry import Recorder, Restore, register_adapter


def is_timm_attention(module: nn.Module) -> bool:
    """True for ``timm.layers.Attention`` and subclasses that keep its ``forward``."""
    attention = getattr(sys.modules.get("timm.layers.attention"), "Attention", None)
    return (attention is not None and isinstance(module, attention) and type(module).forward is attention.forward
            and isinstance(getattr(module, "attn_drop", None), nn.Module))


def _example() -> tuple[nn.Module, tuple]:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    return model.eval(), (torch.randn(2, 3, 32, 32),)


@register_adapter("timm.layers.Attention", predicate=is_timm_attention, example=_example)
def attach_timm_attention(module: nn.Module, path: str, recorder: Recorder) -> list:
    """Switch ``module`` to its explicit path and record the softmax weights it computes.

    For one query row (``recorder.query``) the module takes its fused path
    instead and the SDPA interception computes the row from its q and k.
    """
    was_fused = module.fused_attn

    def record(_dropout: nn.Module, args: tuple) -> None:
        recorder.record(path, args[0], "self", type(module).__name__)  # (B, heads, N, N)

    def restore() -> None:
        module.fused_attn = was_fused

    module.fused_attn = recorder.query is not None
    if recorder.query is not None:
        recorder.delegated[path] = type(module).__name__
        return [Restore(restore)]
    return [module.attn_drop.register_forward_pre_hook(record), Restore(restore)]
