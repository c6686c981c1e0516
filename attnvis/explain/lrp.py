"""LRP relevance of every attention map, as Transformer-Explainability propagates it (``transformer-attribution``).

Rules of its ``modules/layers_ours.py`` and ``ViT_LRP.py``, written as plain
tensor operations so that they trace into the exported graph like the rest:

- ``Linear``: the alpha-beta rule with α = 1 (β = 0), bias left out:
  ``R_x = x⁺ ⊙ (S·W⁺) + x⁻ ⊙ (S·W⁻)`` with ``S = R / (x⁺W⁺ᵀ + x⁻W⁻ᵀ)``;
- a product of two activations (``A·V``, ``Q·Kᵀ``): ``R_a = a ⊙ ∂Z/∂a·S``, halved per operand;
- the residual ``Add``: the z-rule, each branch rescaled to its share of ``|Σ|`` of the relevance;
- the ``Clone`` feeding both branches: ``x ⊙ Σ_i R_i / x``;
- LayerNorm, GELU, softmax, dropout, the CLS pooling: relevance passes unchanged;
- every division is their ``safe_divide``.

The activations are recomputed from each block's input and its captured
attention map with the block's own weights (:class:`BlockParts`); the
relevance of the target's one-hot starts at the head. Blocks below
``start_layer`` are not visited: their maps do not enter the rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnvis.errors import ModelError


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` with zero where ``b`` is zero, and ``b`` moved 1e-9 off zero (Transformer-Explainability's)."""
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).to(den.dtype) * 1e-9
    return a / den * b.ne(0).to(b.dtype)


def linear_relprop(x: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Alpha-beta rule, α = 1, β = 0: relevance of a ``Linear``'s input ``x`` (its bias is not a source)."""
    pw, nw = weight.clamp(min=0), weight.clamp(max=0)
    px, nx = x.clamp(min=0), x.clamp(max=0)
    s = safe_divide(relevance, F.linear(px, pw) + F.linear(nx, nw))
    return px * (s @ pw) + nx * (s @ nw)


def add_relprop(a: torch.Tensor, b: torch.Tensor, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual ``a + b``: z-rule shares, each rescaled so its sum is its share of the relevance (per image)."""
    s = safe_divide(relevance, a + b)
    ra, rb = a * s, b * s
    dims = tuple(range(1, a.dim()))
    a_sum, b_sum = ra.sum(dim=dims, keepdim=True), rb.sum(dim=dims, keepdim=True)
    total = relevance.sum(dim=dims, keepdim=True)
    a_fact = safe_divide(a_sum.abs(), a_sum.abs() + b_sum.abs()) * total
    b_fact = safe_divide(b_sum.abs(), a_sum.abs() + b_sum.abs()) * total
    return ra * safe_divide(a_fact, a_sum), rb * safe_divide(b_fact, b_sum)


def clone_relprop(x: torch.Tensor, *relevances: torch.Tensor) -> torch.Tensor:
    """``x`` fed two branches: ``x ⊙ Σ_i R_i / x``."""
    return x * sum(safe_divide(r, x) for r in relevances)


def matmul_relprop(a: torch.Tensor, b: torch.Tensor, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Z = a·b`` of two activations: each operand's share, halved (as their attention's relprop does)."""
    s = safe_divide(relevance, a @ b)
    return a * (s @ b.transpose(-2, -1)) / 2, b * (a.transpose(-2, -1) @ s) / 2


@dataclass(frozen=True)
class BlockParts:
    """One pre-norm ViT block's weights, whatever library built it."""

    module: nn.Module
    norm1: Callable
    qkv: tuple[torch.Tensor, torch.Tensor | None]  # (3D, D) weight, bias: q, k, v stacked
    proj: tuple[torch.Tensor, torch.Tensor | None]
    norm2: Callable
    fc1: tuple[torch.Tensor, torch.Tensor | None]
    act: Callable
    fc2: tuple[torch.Tensor, torch.Tensor | None]
    heads: int


@dataclass(frozen=True)
class Anatomy:
    """A ViT classifier as LRP needs it: its blocks, final norm and head."""

    blocks: list[BlockParts]
    norm: Callable
    head: nn.Linear


def _wb(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    return linear.weight, linear.bias


def _identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _timm_like(model: nn.Module) -> Anatomy:
    """timm ``VisionTransformer`` (CLS pooling, no layer scale, no q/k norm) and the embedded TinyViT."""
    blocks = []
    for blk in model.blocks:
        attn, mlp = blk.attn, blk.mlp
        extras = [getattr(blk, n, None) for n in ("ls1", "ls2", "drop_path1", "drop_path2")] + \
            [getattr(attn, n, None) for n in ("q_norm", "k_norm", "norm")] + [getattr(mlp, "norm", None)]
        if not all(_identity(m) or isinstance(m, nn.Dropout) for m in extras):
            raise ModelError("transformer-attribution: this timm ViT has layer scale or q/k norms, which "
                             "Transformer-Explainability's LRP rules do not cover")
        fc1, act, fc2 = (mlp.fc1, mlp.act, mlp.fc2) if hasattr(mlp, "fc1") else (mlp[0], mlp[1], mlp[2])
        heads = getattr(attn, "num_heads", None) or attn.heads
        blocks.append(BlockParts(blk, blk.norm1, _wb(attn.qkv), _wb(attn.proj), blk.norm2, _wb(fc1), act, _wb(fc2),
                                 heads))
    if getattr(model, "global_pool", "token") not in ("token",) or not _identity(getattr(model, "fc_norm", None)):
        raise ModelError("transformer-attribution follows the CLS token into the head; this model pools otherwise")
    return Anatomy(blocks, model.norm, model.head)


def _hf_layer(layer: nn.Module) -> tuple[list[nn.Linear], nn.Linear, nn.Linear, Callable, nn.Linear, int]:
    """(q, k, v), output, fc1, activation, fc2, heads of a ViTLayer, Transformers 4 or 5 layout."""
    attn = layer.attention
    if hasattr(attn, "q_proj"):  # Transformers 5
        heads = attn.config.num_attention_heads
        return [attn.q_proj, attn.k_proj, attn.v_proj], attn.o_proj, layer.mlp.fc1, layer.mlp.activation_fn, \
            layer.mlp.fc2, heads
    inner = attn.attention
    return [inner.query, inner.key, inner.value], attn.output.dense, layer.intermediate.dense, \
        layer.intermediate.intermediate_act_fn, layer.output.dense, inner.num_attention_heads


def _hf_vit(model: nn.Module) -> Anatomy:
    """Hugging Face ``ViTForImageClassification``."""
    encoder = model.vit.encoder if hasattr(model.vit, "encoder") else model.vit
    blocks = []
    for layer in getattr(encoder, "layer", None) or encoder.layers:
        qkv, out, fc1, act, fc2, heads = _hf_layer(layer)
        weight = torch.cat([m.weight for m in qkv])
        bias = None if qkv[0].bias is None else torch.cat([m.bias for m in qkv])
        blocks.append(BlockParts(layer, layer.layernorm_before, (weight, bias), _wb(out), layer.layernorm_after,
                                 _wb(fc1), act, _wb(fc2), heads))
    return Anatomy(blocks, model.vit.layernorm, model.classifier)


def _torchvision_vit(model: nn.Module) -> Anatomy:
    """torchvision ``VisionTransformer`` (a single ``head`` Linear)."""
    if list(dict(model.heads.named_children())) != ["head"]:
        raise ModelError("transformer-attribution: this torchvision ViT has a pre-logits layer before its head")
    blocks = []
    for layer in model.encoder.layers:
        mha = layer.self_attention
        blocks.append(BlockParts(layer, layer.ln_1, (mha.in_proj_weight, mha.in_proj_bias), _wb(mha.out_proj),
                                 layer.ln_2, _wb(layer.mlp[0]), layer.mlp[1], _wb(layer.mlp[3]), mha.num_heads))
    return Anatomy(blocks, model.encoder.ln, model.heads.head)


def anatomy(model: nn.Module) -> Anatomy:
    """The blocks, norm and head of a timm / Hugging Face / torchvision ViT classifier (or the embedded TinyViT).

    Raises:
        ModelError: another architecture (Transformer-Explainability's rules are written for these blocks).
    """
    if hasattr(model, "blocks") and hasattr(model, "head") and hasattr(model, "norm"):
        return _timm_like(model)
    if hasattr(model, "vit") and hasattr(model, "classifier"):
        return _hf_vit(model)
    if hasattr(model, "encoder") and hasattr(model, "heads") and hasattr(model.encoder, "layers"):
        return _torchvision_vit(model)
    raise ModelError(f"transformer-attribution needs a ViT classifier it knows the blocks of (timm, Hugging Face "
                     f"ViTForImageClassification, torchvision vit_*); {type(model).__name__} is none of them")


@dataclass
class Activations:
    """What the forward pass leaves for LRP: each block's input and the final norm's output, (B, N, D)."""

    inputs: list[torch.Tensor]
    normed: list[torch.Tensor]


@contextlib.contextmanager
def recording(parts: Anatomy) -> Iterator[Activations]:
    """Record each block's input and the final norm's output while the model runs."""
    seen = Activations([], [])
    handles = [p.module.register_forward_pre_hook(lambda _m, args: seen.inputs.append(args[0])) for p in parts.blocks]
    handles.append(parts.norm.register_forward_hook(lambda _m, _args, out: seen.normed.append(out)))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _linear(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    return F.linear(x, *wb)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, D) → (B, heads, N, D / heads)."""
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) → (B, N, heads·d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _block_relprop(part: BlockParts, x: torch.Tensor, attn: torch.Tensor, relevance: torch.Tensor,
                   last: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Relevance of the block's input (``None`` when ``last``) and of its attention map."""
    n1 = part.norm1(x)
    q, k, v = (_heads(t, part.heads) for t in _linear(n1, part.qkv).chunk(3, dim=-1))
    mixed = _merge(attn @ v)
    out = _linear(mixed, part.proj)
    xm = x + out
    n2 = part.norm2(xm)
    hidden = part.act(_linear(n2, part.fc1))
    mlp = _linear(hidden, part.fc2)
    r_res, r_mlp = add_relprop(xm, mlp, relevance)
    r_n2 = linear_relprop(n2, part.fc1[0], linear_relprop(hidden, part.fc2[0], r_mlp))
    r_x, r_out = add_relprop(x, out, clone_relprop(xm, r_res, r_n2))
    r_mixed = _heads(linear_relprop(mixed, part.proj[0], r_out), part.heads)
    r_attn, r_v = matmul_relprop(attn, v, r_mixed)
    if last:
        return None, r_attn
    r_q, r_kt = matmul_relprop(q, k.transpose(-2, -1), r_attn)  # the softmax passes relevance unchanged
    r_qkv = torch.cat([_merge(r_q), _merge(r_kt.transpose(-2, -1)), _merge(r_v)], dim=-1)
    return clone_relprop(x, r_x, linear_relprop(n1, part.qkv[0], r_qkv)), r_attn


def attention_relevances(parts: Anatomy, seen: Activations, attns: list[torch.Tensor], target: torch.Tensor,
                         cls: int, start_layer: int) -> list[torch.Tensor | None]:
    """``R_A`` of every layer from ``start_layer`` up (``None`` below), for the one-hot of ``target`` at the head.

    Args:
        parts: from :func:`anatomy`.
        seen: each block's input and the final norm's output, from :func:`recording`.
        attns: each block's post-softmax attention (B, heads, N, N).
        target: int64 (B,) explained class per image (resolved, non-negative).
        cls: the CLS token's index.
        start_layer: the lowest layer whose relevance is needed.
    """
    inputs = seen.inputs
    if len(inputs) != len(parts.blocks) or len(attns) != len(parts.blocks) or len(seen.normed) != 1:
        raise ModelError(f"transformer-attribution: {len(parts.blocks)} blocks but {len(inputs)} block inputs, "
                         f"{len(attns)} attention maps and {len(seen.normed)} final norms were recorded")
    with torch.no_grad():
        normed = seen.normed[0]  # (B, N, D); the head reads its CLS token
        pooled = normed[:, cls]
        one_hot = torch.zeros_like(pooled[:, :1].expand(-1, parts.head.weight.shape[0]))
        one_hot = one_hot.scatter(1, target[:, None], 1.0)
        r_pooled = pooled * safe_divide(linear_relprop(pooled, parts.head.weight, one_hot), pooled)
        token = torch.arange(normed.shape[1], device=normed.device)[None, :, None] == cls  # (1, N, 1)
        relevance = torch.where(token, r_pooled[:, None, :], torch.zeros_like(normed))
        cams: list[torch.Tensor | None] = [None] * len(parts.blocks)
        for layer in range(len(parts.blocks) - 1, start_layer - 1, -1):
            relevance, cams[layer] = _block_relprop(parts.blocks[layer], inputs[layer], attns[layer], relevance,
                                                    last=layer == start_layer)
    return cams
