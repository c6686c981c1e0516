"""The table of explanation methods: each one short rule over the attention maps and their gradients.

A rule takes the :class:`Traces` of one batch and returns the relevance of
the explained token's row (the CLS row) over the patches, ``(B, patches)``,
raw (not min-max scaled). The same rule runs eagerly (``backend="torch"``)
and traced into the exported graph (``attnvis export --explain``).

Every multi-layer rule is a **row chain**: ``r ← e_clsᵀ`` and ``r ← r·M_l``
from the last layer down, O(L·N²) per image; the N×N product of the ``M_l``
(which the originals build) is never formed. The row of that product is the
same vector: ``e_clsᵀ·M_L·…·M_s``.

Conventions shared by all rules: ``attns[l]`` is layer ``l``'s post-softmax
attention ``(B, heads, N, N)``; ``grads[l]`` its gradient of the target's
**raw logit** (summed over the batch, which gives each image its own
gradient); the CLS row is ``tokens.cls_index``, the patches are the columns
after the ``tokens.prefix_tokens`` prefix tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from attnvis.metadata import TokenLayout

if TYPE_CHECKING:  # the rules only call tensor methods: the table (and the CLI's choices) load without torch
    import torch

#: What a rule can ask of the pass: attention maps, their gradients, LRP relevances, an activation and its gradient.
NEEDS = ("attn", "grad", "lrp", "act")


@dataclass
class Traces:
    """What one forward (and backward) pass left for the rules.

    Attributes:
        attns: per layer ``(B, heads, N, N)`` post-softmax attention.
        grads: per layer ``∂ logit_target / ∂ attns[l]`` (empty unless a rule needs ``grad``).
        cams: per layer the LRP relevance of ``attns[l]`` (Transformer-Explainability's ``attn_cam``).
        act: the last block's ``norm1`` output ``(B, N, D)`` (Grad-CAM's ViT recipe), or ``None``.
        act_grad: its gradient of the target's raw logit.
        tokens: the token layout (CLS row, prefix tokens).
        start_layer: first layer of ``rollout`` / ``transformer-attribution``.
        discard_ratio: share of the smallest fused weights ``grad-rollout`` zeroes.
    """

    attns: list[torch.Tensor]
    tokens: TokenLayout
    grads: list[torch.Tensor] = field(default_factory=list)
    cams: list[torch.Tensor] = field(default_factory=list)
    act: torch.Tensor | None = None
    act_grad: torch.Tensor | None = None
    start_layer: int = 0
    discard_ratio: float = 0.9

    @property
    def cls(self) -> int:
        return int(self.tokens.cls_index or 0)

    @property
    def prefix(self) -> int:
        return int(self.tokens.prefix_tokens)

    def cls_rows(self) -> torch.Tensor:
        """``e_clsᵀ`` for every image, ``(B, N)``."""
        row = self.attns[0][:, 0, 0] * 0  # (B, N)
        return row.index_fill(1, row.new_tensor([self.cls]).long(), 1.0)


Rule = Callable[[Traces], "torch.Tensor"]


@dataclass(frozen=True)
class Method:
    """One explanation method: its name, what it needs from the pass, its rule and its original."""

    name: str
    needs: frozenset[str]
    rule: Rule
    original: str

    @property
    def output(self) -> str:
        """The exported graph's output holding this method's relevance row."""
        return relevance_output(self.name)


METHODS: dict[str, Method] = {}


def relevance_output(name: str) -> str:
    """``grad-rollout`` → ``relevance_grad_rollout``."""
    return "relevance_" + name.replace("-", "_")


def register_method(name: str, needs: tuple[str, ...], original: str) -> Callable[[Rule], Rule]:
    """Decorator adding a rule to :data:`METHODS`; a name registered twice is an error."""

    def add(rule: Rule) -> Rule:
        if name in METHODS:
            raise ValueError(f"explanation method {name!r} is registered already")
        unknown = set(needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"method {name!r} needs unknown inputs {sorted(unknown)}; known: {', '.join(NEEDS)}")
        METHODS[name] = Method(name, frozenset(needs), rule, original)
        return rule

    return add


def _row_times_mean(row: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``row · E_h[maps]`` without forming the head mean: ``(B, N) × (B, heads, N, N) → (B, N)``."""
    return (row[:, None, None, :] @ maps)[:, :, 0].mean(dim=1)


def _row_times_normalized(row: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """``row · M`` for ``M = (F + I)`` with rows normalized to 1, ``F`` (B, N, N), without forming ``M``.

    ``(r·M)_j = Σ_i r_i (F_ij + δ_ij) / d_i`` with ``d_i = Σ_j F_ij + 1``: ``(r/d)·F + r/d``.
    """
    scaled = row / (fused.sum(dim=-1) + 1.0)
    return (scaled[:, None, :] @ fused)[:, 0] + scaled


@register_method("attention", ("attn",), "Transformer-Explainability ViT_LRP relprop(method='last_layer_attn')")
def attention(t: Traces) -> torch.Tensor:
    """The last layer's CLS row, mean over heads (class-agnostic)."""
    return t.attns[-1][:, :, t.cls, t.prefix:].mean(dim=1)


@register_method("rollout", ("attn",), "Transformer-Explainability ViT_explanation_generator.generate_rollout")
def rollout(t: Traces) -> torch.Tensor:
    """Abnar & Zuidema rollout: ``M_l = (E_h[A_l] + I)`` with rows normalized, layers ``start_layer…L-1``.

    ``r·M`` is ``(r/d)·Ā + r/d`` with ``d`` the row sums of ``Ā + I``: no N×N matrix besides the head mean.
    """
    row = t.cls_rows()
    for attn in reversed(t.attns[t.start_layer:]):
        row = _row_times_normalized(row, attn.mean(dim=1))
    return row[:, t.prefix:]


@register_method("gae", ("attn", "grad"), "Transformer-MM-Explainability ViT notebook generate_relevance")
def gae(t: Traces) -> torch.Tensor:
    """Chefer ICCV 2021: ``Ā = E_h[(∇A ⊙ A)⁺]`` (clamp before the head mean), ``R ← R + Ā·R`` from ``R = I``."""
    row = t.cls_rows()
    for attn, grad in zip(reversed(t.attns), reversed(t.grads)):
        row = row + _row_times_mean(row, (grad * attn).clamp(min=0))
    return row[:, t.prefix:]


@register_method("grad-rollout", ("attn", "grad"), "jacobgil/vit-explain vit_grad_rollout.grad_rollout")
def grad_rollout(t: Traces) -> torch.Tensor:
    """vit-explain's rule: ``Ā = E_h[∇A ⊙ A]``, negatives zeroed after the mean, the smallest
    ``discard_ratio`` of each image's N² entries zeroed, ``M = (Ā + I)/2`` with **rows** normalized.

    vit-explain divides ``M`` by ``M.sum(dim=-1)`` without ``keepdim``, which broadcasts the row sums
    over columns (its issue #16), and pairs layer ``l``'s map with the gradient of layer ``L-1-l``
    (its hooks append gradients in backward order); here each map meets its own gradient and rows sum to 1.
    """
    row = t.cls_rows()
    for attn, grad in zip(reversed(t.attns), reversed(t.grads)):
        fused = (grad * attn).mean(dim=1).clamp(min=0)  # (B, N, N)
        flat = fused.flatten(1)
        drop = int(flat.shape[-1] * t.discard_ratio)
        if drop > 0:
            _, lowest = flat.topk(drop, dim=-1, largest=False)
            flat = flat.scatter(1, lowest, 0.0)
        row = _row_times_normalized(row, flat.view_as(fused))  # (F + I)/2 normalized = (F + I) normalized
    return row[:, t.prefix:]


@register_method("attn-gradcam", ("attn", "grad"), "Transformer-Explainability ViT_explanation_generator.generate_cam_attn")
def attn_gradcam(t: Traces) -> torch.Tensor:
    """Grad-CAM on the last layer's CLS row: per-head weight = mean gradient over the patches."""
    cam = t.attns[-1][:, :, t.cls, t.prefix:]  # (B, heads, patches)
    weights = t.grads[-1][:, :, t.cls, t.prefix:].mean(dim=-1, keepdim=True)
    return (cam * weights).mean(dim=1).clamp(min=0)


@register_method("transformer-attribution", ("attn", "grad", "lrp"),
                 "Transformer-Explainability ViT_LRP relprop(method='transformer_attribution')")
def transformer_attribution(t: Traces) -> torch.Tensor:
    """Chefer CVPR 2021: ``Ā = E_h[(∇A ⊙ R_A)⁺] + I`` with ``R_A`` the LRP relevance of the maps
    (:mod:`attnvis.explain.lrp`), chained from ``start_layer`` **without** row normalization."""
    row = t.cls_rows()
    for cam, grad in zip(reversed(t.cams[t.start_layer:]), reversed(t.grads[t.start_layer:])):
        row = row + _row_times_mean(row, (grad * cam).clamp(min=0))
    return row[:, t.prefix:]


@register_method("gradcam", ("act",), "pytorch-grad-cam usage_examples/vit_example.py (GradCAM on blocks[-1].norm1)")
def gradcam(t: Traces) -> torch.Tensor:
    """Grad-CAM on the last block's ``norm1`` output: channel weights = mean gradient over the patches,
    ReLU of the weighted channel sum."""
    act = t.act[:, t.prefix:]  # (B, patches, D)
    weights = t.act_grad[:, t.prefix:].mean(dim=1, keepdim=True)
    return (act * weights).sum(dim=-1).clamp(min=0)


def check_methods(names: list[str] | tuple[str, ...] | str) -> list[str]:
    """Method names from a list or a comma-separated string; unknown names raise ``ValueError``."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown explanation method {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))
