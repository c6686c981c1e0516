"""One explanation pass: the model's forward, the backward the methods need, their relevance rows.

:func:`explain_pass` is plain PyTorch: called eagerly it is the ``torch``
backend; traced by ``make_fx`` (:mod:`attnvis.export.explain`) it becomes the
exported graph. The gradient is that of ``logits.gather(1, target).sum()``:
the sum over the batch gives each image the gradient of its own target's raw
logit, and it traces with a dynamic batch (a one-hot would not).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnvis.capture.context import capture_attention, no_maps_error
from attnvis.capture.outputs import flatten_outputs
from attnvis.errors import ModelError
from attnvis.metadata import TokenLayout
from attnvis.explain import lrp
from attnvis.explain.methods import METHODS, Traces, check_methods

#: Module names of a pre-norm ViT block's first LayerNorm: timm / attnvis, Hugging Face, torchvision.
NORM1_NAMES = ("norm1", "layernorm_before", "ln_1")


@dataclass(frozen=True)
class Options:
    """The methods' parameters: ``start_layer`` (rollout, transformer-attribution), ``discard_ratio`` (grad-rollout)."""

    start_layer: int = 0
    discard_ratio: float = 0.9

    def as_dict(self, methods: list[str]) -> dict:
        """The ``explain`` entry of the metadata."""
        return {"methods": list(methods), "start_layer": int(self.start_layer), "discard_ratio": float(self.discard_ratio)}


def _mha_explicit(module: nn.MultiheadAttention):
    """``nn.MultiheadAttention.forward`` as explicit math whose returned weights are the ones multiplied with V.

    PyTorch's own path returns a view of its weights made after ``weights @ V``, which is not on the
    way to the output: no gradient reaches it. Self-attention without masks (ViT blocks) only.
    """

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if key_padding_mask is not None or attn_mask is not None or not (query is key is value):
            raise ModelError("explanations support unmasked self-attention in nn.MultiheadAttention only")
        x = query if module.batch_first else query.transpose(0, 1)  # (B, N, E)
        batch, tokens, dim = x.shape
        heads = module.num_heads
        q, k, v = F.linear(x, module.in_proj_weight, module.in_proj_bias).reshape(
            batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, d)
        weights = torch.softmax(q @ k.transpose(-2, -1) * (dim // heads) ** -0.5, dim=-1)  # (B, heads, N, N)
        out = F.linear((weights @ v).transpose(1, 2).reshape(batch, tokens, dim), module.out_proj.weight,
                       module.out_proj.bias)
        out = out if module.batch_first else out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights

    return forward


@contextlib.contextmanager
def gradients_reach_weights(model: nn.Module) -> Iterator[None]:
    """Swap every ``nn.MultiheadAttention``'s forward for :func:`_mha_explicit` while the block runs."""
    swapped = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    try:
        for module in swapped:
            module.forward = _mha_explicit(module)
        yield
    finally:
        for module in swapped:
            del module.forward


def last_norm1(model: nn.Module) -> nn.Module:
    """The last block's first LayerNorm (Grad-CAM's ViT target layer ``blocks[-1].norm1``)."""
    found = [m for path, m in model.named_modules() if path.rpartition(".")[2] in NORM1_NAMES]
    if not found:
        raise ModelError(f"gradcam needs the last block's first LayerNorm ({' / '.join(NORM1_NAMES)}); "
                         f"{type(model).__name__} has none")
    return found[-1]


@contextlib.contextmanager
def _recording_output(module: nn.Module, store: list) -> Iterator[None]:
    handle = module.register_forward_hook(lambda _m, _args, out: store.append(out))
    try:
        yield
    finally:
        handle.remove()


def logits_of(outputs: list[tuple[str, torch.Tensor]], what: str = "the model") -> torch.Tensor:
    """The model's class scores: its first output, ``(B, classes)``.

    Raises:
        ModelError: the first output is no ``(B, classes)`` tensor (a backbone without a head).
    """
    name, logits = outputs[0]
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ModelError(f"{what} has no class output: its first output {name!r} is shaped {tuple(logits.shape)}, "
                         "not (batch, classes); explanations need a classifier head (e.g. ViTForImageClassification, "
                         "a timm model with num_classes > 0)")
    return logits


def explain_pass(model: nn.Module, inputs: tuple[torch.Tensor, ...], target: torch.Tensor, methods: list[str],
                 tokens: TokenLayout, options: Options = Options()) -> tuple[list[tuple[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Forward ``inputs``, backward what ``methods`` need, and their relevance rows.

    Args:
        model: a ViT classifier in eval mode.
        inputs: its inputs (one image batch ``(B, 3, H, W)``).
        target: int64 ``(B,)`` class per image; negative = the top-1 class.
        methods: names in :data:`~attnvis.explain.methods.METHODS`.
        tokens: the model's token layout (CLS row, prefix tokens).
        options: ``start_layer``, ``discard_ratio``.

    Returns:
        The model's own outputs (name, tensor), logits first; ``{method: (B, patches)}``.
    """
    methods = check_methods(methods)
    needs = set().union(*(METHODS[m].needs for m in methods))
    acts: list[torch.Tensor] = []
    act_ctx = _recording_output(last_norm1(model), acts) if "act" in needs else contextlib.nullcontext()
    parts = lrp.anatomy(model) if "lrp" in needs else None
    lrp_ctx = lrp.recording(parts) if parts is not None else contextlib.nullcontext()
    with torch.enable_grad(), gradients_reach_weights(model), capture_attention(model) as recorder, act_ctx, \
            lrp_ctx as seen:
        outputs = flatten_outputs(model(*inputs))
        logits = logits_of(outputs)
        if not recorder.weights:
            raise no_maps_error(model)
        traces = Traces(list(recorder.weights), tokens, start_layer=options.start_layer,
                        discard_ratio=options.discard_ratio)
        chosen = torch.where(target < 0, logits.argmax(dim=1), target)
        wrt = (traces.attns if needs & {"grad", "lrp"} else []) + (acts[-1:] if "act" in needs else [])
        if wrt:
            score = logits.gather(1, chosen[:, None]).sum()
            grads = list(torch.autograd.grad(score, wrt))
            if "act" in needs:
                traces.act, traces.act_grad = acts[-1], grads.pop()
            traces.grads = grads
        if parts is not None:
            traces.cams = lrp.attention_relevances(parts, seen, traces.attns, chosen, traces.cls, options.start_layer)
        relevance = {m: METHODS[m].rule(traces).detach() for m in methods}
    return [(n, t.detach()) for n, t in outputs], relevance
