"""Export a LLaVA model as two ONNX graphs: the vision tower with its projector, and one language-model step.

``vision.onnx``
    ``pixel_values (B, 3, H, W)`` → ``image_features (B, I, D)``: the image
    tokens' embeddings, as ``get_image_features`` makes them.
``decoder_step.onnx``
    ``inputs_embeds (B, S, D)``, ``attention_mask (B, P + S)`` int64 (0 for
    left padding), ``position_ids (B, S)`` int64, ``past_keys``,
    ``past_values (layers, B, kv_heads, P, head_dim)`` (``P = 0`` for the
    prompt's pass) → ``logits (B, vocab)`` of the last position,
    ``present_keys``, ``present_values (layers, B, kv_heads, P + S, head_dim)``
    and ``attention (B, layers, heads, P + S)``: the last position's attention
    row of every layer, the row with which the next token is chosen.

The step is written from the Llama-family language model's own modules
(norms, projections, rotary embedding, MLP) with the attention math explicit,
so that the rows are graph outputs. The token embeddings, and the image
features put in place of the image tokens, are looked up outside the graph
(:mod:`.vlm_onnx`). Export validates itself against the model in PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnvis.captioning.hf_export import trace_graph
from attnvis.errors import ModelError
from attnvis.export.onnx import save_model
from attnvis.metadata import ModelMetadata

VISION_FILE = "vision.onnx"
STEP_FILE = "decoder_step.onnx"
EMBED_FILE = "embed_tokens.npy"
STEP_INPUTS = ("inputs_embeds", "attention_mask", "position_ids", "past_keys", "past_values")
STEP_OUTPUTS = ("logits", "present_keys", "present_values", "attention")
#: Max abs difference allowed against PyTorch: logits, attention rows.
TOLERANCE = {"logits": 1e-4, "attention": 1e-5}
#: Language models whose decoder layers this step reproduces (Llama's layout: pre-norm, rotary, gated MLP).
LLAMA_LIKE = {"llama", "mistral", "qwen2", "vicuna"}


class VisionGraph(nn.Module):
    """LLaVA's tower and projector: the feature layer's patch states (CLS dropped by ``default``), projected."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.model
        self.layer = model.config.vision_feature_layer
        self.strategy = model.config.vision_feature_select_strategy
        if not isinstance(self.layer, int):
            raise ModelError("LLaVA with several vision feature layers: the onnx backend takes one; use "
                             "backend='torch'")

    def forward(self, pixel_values):
        states = self.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[self.layer]
        if self.strategy == "default":
            states = states[:, 1:]
        return self.model.multi_modal_projector(states)


class StepGraph(nn.Module):
    """The language model over ``S`` new positions with a key/value cache, attention explicit."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.lm, self.head, self.rotate = model.model.language_model, model.lm_head, apply_rotary_pos_emb
        text = model.config.get_text_config()
        if text.model_type not in LLAMA_LIKE or getattr(text, "sliding_window", None):
            raise ModelError(f"LLaVA with a {text.model_type!r} language model"
                             f"{' (sliding window)' if getattr(text, 'sliding_window', None) else ''}: the onnx "
                             f"backend covers {', '.join(sorted(LLAMA_LIKE))} without sliding windows; use "
                             "backend='torch'")

    def forward(self, inputs_embeds, attention_mask, position_ids, past_keys, past_values):
        x = inputs_embeds
        s, p = x.shape[1], past_keys.shape[3]
        cos, sin = self.lm.rotary_emb(x, position_ids)
        mask = _mask(attention_mask, s, p, x.dtype)
        keys, values, rows = [], [], []
        for i, layer in enumerate(self.lm.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(x.shape[0], s, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(x.shape[0], s, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(x.shape[0], s, -1, attn.head_dim).transpose(1, 2)
            q, k = self.rotate(q, k, cos, sin)
            k, v = torch.cat([past_keys[i], k], 2), torch.cat([past_values[i], v], 2)
            keys.append(k)
            values.append(v)
            groups = q.shape[1] // k.shape[1]
            kk, vv = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            weights = torch.softmax(torch.matmul(q, kk.transpose(2, 3)) * attn.scaling + mask, dim=-1)
            rows.append(weights[:, :, -1])  # (B, heads, P + S)
            out = torch.matmul(weights, vv).transpose(1, 2).reshape(x.shape[0], s, -1)
            x = x + attn.o_proj(out)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.head(self.lm.norm(x[:, -1]))
        return logits, torch.stack(keys), torch.stack(values), torch.stack(rows, 1)


def _mask(attention_mask: torch.Tensor, s: int, p: int, dtype) -> torch.Tensor:
    """``(B, 1, S, P + S)`` additive: key ``j`` visible to new position ``i`` when ``j ≤ P + i`` and not padding."""
    j = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    i = torch.arange(s, device=attention_mask.device) + p
    ok = (j[None, :] <= i[:, None])[None, None] & (attention_mask[:, None, None, :] > 0)
    return torch.where(ok, torch.zeros((), dtype=dtype), torch.full((), torch.finfo(dtype).min, dtype=dtype))


def _step_examples(model: nn.Module, batch: int = 2, new: int = 3, past: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    text = model.config.get_text_config()
    lm = model.model.language_model
    attn = lm.layers[0].self_attn
    kv = attn.k_proj.out_features // attn.head_dim
    embeds = torch.randn(batch, new, text.hidden_size, generator=gen)
    mask = torch.ones(batch, past + new, dtype=torch.long)
    mask[0, :2] = 0
    positions = torch.arange(past, past + new).repeat(batch, 1)
    pk, pv = (torch.randn(len(lm.layers), batch, kv, past, attn.head_dim, generator=gen) for _ in range(2))
    return embeds, mask, positions, pk, pv


def export_llava(model: nn.Module, pixel_shape: tuple[int, int], output_dir: str | Path, source: str = "") -> list[Path]:
    """Write ``vision.onnx``, ``decoder_step.onnx`` and the token embeddings for a LLaVA model.

    Raises:
        ModelError: an unsupported language model, or validation past :data:`TOLERANCE`.
    """
    model = model.cpu().eval()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    vision, step = VisionGraph(model), StepGraph(model)
    pixels = torch.randn(2, 3, *pixel_shape, generator=torch.Generator().manual_seed(0))
    batch, rows, total, new = (torch.export.Dim(n) for n in ("batch", "rows", "total", "new"))
    vis = trace_graph(vision, (pixels,), ["pixel_values"], ["image_features"], ({0: batch},))
    examples = _step_examples(model)
    kv = {1: rows, 3: total}
    dec = trace_graph(step, examples, STEP_INPUTS, STEP_OUTPUTS,
                 ({0: rows, 1: new}, {0: rows, 1: torch.export.Dim("keys")}, {0: rows, 1: new}, kv, kv))
    meta = ModelMetadata(layers=[], reduction="none", input_name="pixel_values", source="llava",
                         extra={"source_dir": source})
    paths = [out / VISION_FILE, out / STEP_FILE, out / EMBED_FILE]
    save_model(vis, paths[0], meta.to_props())
    save_model(dec, paths[1], meta.to_props())
    np.save(paths[2], model.get_input_embeddings().weight.detach().float().numpy())
    validate_step(step, paths[1], examples)
    return paths


def validate_step(step: StepGraph, path: Path, examples: tuple) -> dict[str, float]:
    """Max abs differences between ONNX Runtime and the step in PyTorch (one line past :data:`TOLERANCE`)."""
    from attnvis.runtime.device import ort_session

    with torch.no_grad():
        want = step(*examples)
    got = ort_session(path, "cpu").run(None, {n: t.numpy() for n, t in zip(STEP_INPUTS, examples)})
    diffs = {"logits": float(np.abs(got[0] - want[0].numpy()).max()),
             "attention": float(np.abs(got[3] - want[3].numpy()).max())}
    bad = {k: v for k, v in diffs.items() if not v <= TOLERANCE[k]}
    if bad:
        raise ModelError(f"ONNX Runtime disagrees with PyTorch in {path}: "
                         + ", ".join(f"{k}={v:.2e} (tolerance {TOLERANCE[k]:g})" for k, v in bad.items()))
    return diffs
