"""Export a Hugging Face captioner as two ONNX graphs: the encoder and one decoder step with a key/value cache.

``encoder.onnx``
    ``pixel_values (B, 3, H, W)`` → ``cross_keys``, ``cross_values``
    ``(layers, B, heads, K, head_dim)``: every decoder layer's cross-attention
    keys and values, computed once per image.
``decoder_step.onnx``
    ``input_ids (N, 1)`` int64, ``position_ids (N, 1)`` int64, ``past_keys``,
    ``past_values (layers, N, heads, P, head_dim)`` (``P = 0`` at the first
    step), ``cross_keys``, ``cross_values`` → ``logits (N, vocab)``,
    ``present_keys``, ``present_values (layers, N, heads, P + 1, head_dim)``,
    ``cross_attention (N, layers, heads, K)``.

The step graph is written from the decoder's own modules (GPT-2 blocks, or
BERT-style layers as in BERT decoders and BLIP's text decoder) with the
attention math explicit, so that the maps are graph outputs. Export validates
itself against the Hugging Face model's eager teacher-forced forward pass
(logits and ``output_attentions``).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from attnvis.captioning.hf import HFCaptionModel
from attnvis.captioning.hf_onnx import OnnxStepBackend
from attnvis.errors import ModelError
from attnvis.export.onnx import quiet_export, save_model
from attnvis.metadata import LayerInfo, ModelMetadata

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
ENCODER_OUTPUTS = ("cross_keys", "cross_values")
DECODER_INPUTS = ("input_ids", "position_ids", "past_keys", "past_values", "cross_keys", "cross_values")
DECODER_OUTPUTS = ("logits", "present_keys", "present_values", "cross_attention")
OPSET = 18
#: Max abs difference allowed against eager PyTorch: (logits, cross-attention).
TOLERANCE = {"logits": 1e-3, "cross_attention": 1e-4}


def _heads(q: torch.Tensor, heads: int) -> torch.Tensor:
    """``(N, S, D)`` → ``(N, heads, S, head_dim)``."""
    n, s, d = q.shape
    return q.view(n, s, heads, d // heads).transpose(1, 2)


def _merge(ctx: torch.Tensor) -> torch.Tensor:
    """``(N, heads, S, head_dim)`` → ``(N, S, D)``."""
    n, h, s, d = ctx.shape
    return ctx.transpose(1, 2).reshape(n, s, h * d)


def _attend(q, k, v, scale: float):
    """Explicit attention: ``(context, weights (N, heads, 1, K))``."""
    weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)
    return torch.matmul(weights, v), weights


class _Gpt2Decoder(nn.Module):
    """A GPT-2 LM head model with cross-attention, one token per step."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        if getattr(lm.config, "reorder_and_upcast_attn", False):
            raise ModelError("GPT-2 decoders with reorder_and_upcast_attn are not supported by the ONNX export; "
                             "use backend='torch'")
        self.lm, self.heads = lm, lm.config.n_head

    def cross_kv(self, states: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        keys, values = [], []
        for block in self.lm.transformer.h:
            k, v = block.crossattention.c_attn(states).split(block.crossattention.split_size, dim=2)
            keys.append(_heads(k, self.heads))
            values.append(_heads(v, self.heads))
        return keys, values

    def forward(self, ids, pos, past_k, past_v, cross_k, cross_v):
        t = self.lm.transformer
        h = t.wte(ids) + t.wpe(pos)
        presents_k, presents_v, maps = [], [], []
        for i, block in enumerate(t.h):
            q, k, v = block.attn.c_attn(block.ln_1(h)).split(block.attn.split_size, dim=2)
            k = torch.cat([past_k[i], _heads(k, self.heads)], dim=2)
            v = torch.cat([past_v[i], _heads(v, self.heads)], dim=2)
            ctx, _ = _attend(_heads(q, self.heads), k, v, block.attn.scaling)
            h = h + block.attn.c_proj(_merge(ctx))
            q = _heads(block.crossattention.q_attn(block.ln_cross_attn(h)), self.heads)
            ctx, w = _attend(q, cross_k[i], cross_v[i], block.crossattention.scaling)
            h = h + block.crossattention.c_proj(_merge(ctx))
            h = h + block.mlp(block.ln_2(h))
            presents_k.append(k)
            presents_v.append(v)
            maps.append(w[:, :, 0])
        logits = self.lm.lm_head(t.ln_f(h))[:, -1]
        return logits, torch.stack(presents_k), torch.stack(presents_v), torch.stack(maps, 1)


class _BertDecoder(nn.Module):
    """A BERT-style LM head model with cross-attention (BERT decoders, BLIP's text decoder), one token per step."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm, self.heads = lm, lm.config.num_attention_heads
        self.scale = 1.0 / math.sqrt(lm.config.hidden_size // self.heads)

    def cross_kv(self, states: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        layers = self.lm.bert.encoder.layer
        return ([_heads(layer.crossattention.self.key(states), self.heads) for layer in layers],
                [_heads(layer.crossattention.self.value(states), self.heads) for layer in layers])

    def _embed(self, ids, pos):
        emb = self.lm.bert.embeddings
        h = emb.word_embeddings(ids)
        if getattr(emb, "token_type_embeddings", None) is not None:
            h = h + emb.token_type_embeddings(torch.zeros_like(ids))
        return emb.LayerNorm(h + emb.position_embeddings(pos))

    def forward(self, ids, pos, past_k, past_v, cross_k, cross_v):
        h = self._embed(ids, pos)
        presents_k, presents_v, maps = [], [], []
        for i, layer in enumerate(self.lm.bert.encoder.layer):
            sa = layer.attention.self
            k = torch.cat([past_k[i], _heads(sa.key(h), self.heads)], dim=2)
            v = torch.cat([past_v[i], _heads(sa.value(h), self.heads)], dim=2)
            ctx, _ = _attend(_heads(sa.query(h), self.heads), k, v, self.scale)
            h = layer.attention.output(_merge(ctx), h)
            ca = layer.crossattention
            ctx, w = _attend(_heads(ca.self.query(h), self.heads), cross_k[i], cross_v[i], self.scale)
            h = ca.output(_merge(ctx), h)
            h = layer.output(layer.intermediate(h), h)
            presents_k.append(k)
            presents_v.append(v)
            maps.append(w[:, :, 0])
        logits = self.lm.cls(h)[:, -1]
        return logits, torch.stack(presents_k), torch.stack(presents_v), torch.stack(maps, 1)


def step_decoder(m: HFCaptionModel) -> nn.Module:
    """The one-token decoder for ``m``'s language model.

    Raises:
        ModelError: a decoder type the export does not know.
    """
    lm = m.decoder
    if hasattr(lm, "transformer") and hasattr(lm.transformer, "h"):
        return _Gpt2Decoder(lm).eval()
    if hasattr(lm, "bert") and hasattr(lm, "cls") and not _relative_positions(lm):
        return _BertDecoder(lm).eval()
    raise ModelError(f"{m.path}: the ONNX export knows GPT-2 and BERT-style decoders, not {type(lm).__name__}; "
                     "use backend='torch'")


def _relative_positions(lm: nn.Module) -> bool:
    return getattr(lm.config, "position_embedding_type", "absolute") not in ("absolute", None)


class EncoderGraph(nn.Module):
    """Image → every decoder layer's cross-attention keys and values."""

    def __init__(self, m: HFCaptionModel, decoder: nn.Module) -> None:
        super().__init__()
        self.m, self.decoder = m, decoder

    def forward(self, pixel_values):
        keys, values = self.decoder.cross_kv(self.m.encode(pixel_values))
        return torch.stack(keys), torch.stack(values)


def trace_graph(module: nn.Module, inputs: tuple, names_in, names_out, dynamic) -> onnx.ModelProto:
    """``module`` exported by the dynamo exporter at :data:`OPSET`, weights inside, as a ModelProto."""
    with quiet_export(), torch.no_grad():
        program = torch.onnx.export(module.eval(), inputs, dynamo=True, opset_version=OPSET,
                                    input_names=list(names_in), output_names=list(names_out),
                                    dynamic_shapes=dynamic, external_data=False, verbose=False)
    return program.model_proto


def _examples(m: HFCaptionModel, decoder: nn.Module, batch: int = 2, past: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = m.pixel_values([np.zeros((8, 8, 3), np.uint8)]).shape[-2:]
    pixels = torch.randn(batch, 3, *size, generator=gen)
    with torch.no_grad():
        ck, cv = EncoderGraph(m, decoder)(pixels)
    layers, _, heads, _, dim = ck.shape
    pk, pv = (torch.randn(layers, batch, heads, past, dim, generator=gen) for _ in range(2))
    ids = torch.randint(0, _vocab(m), (batch, 1), generator=gen)
    return (pixels,), (ids, torch.full((batch, 1), past, dtype=torch.long), pk, pv, ck, cv)


def _vocab(m: HFCaptionModel) -> int:
    return int(m.decoder.get_output_embeddings().weight.shape[0])


def _metadata(m: HFCaptionModel, part: str, layers: int, heads: int) -> ModelMetadata:
    infos = [LayerInfo(f"decoder.layers.{i}.crossattention", "cross", heads, 1, 0, type(m.decoder).__name__)
             for i in range(layers)] if part == "decoder_step" else []
    outputs = list(DECODER_OUTPUTS) if part == "decoder_step" else list(ENCODER_OUTPUTS)
    extra = {"model": m.kind, "part": part, "start": m.generation.start, "eos": m.generation.eos,
             "pad": m.generation.pad, "source_dir": str(m.path)}
    return ModelMetadata(layers=infos, tokens=m.tokens, reduction="none", input_name="pixel_values",
                         model_outputs=outputs, source=m.kind, extra=extra)


def export_hf_captioner(m: HFCaptionModel, output_dir: str | Path, validate: bool = True) -> list[Path]:
    """Write ``encoder.onnx`` and ``decoder_step.onnx`` for ``m`` into ``output_dir``.

    Raises:
        ModelError: an unsupported decoder, or validation past :data:`TOLERANCE`.
    """
    m.model.cpu().eval()
    decoder = step_decoder(m)
    enc_in, dec_in = _examples(m, decoder)
    batch, rows, past = torch.export.Dim("batch"), torch.export.Dim("rows"), torch.export.Dim("past")
    enc = trace_graph(EncoderGraph(m, decoder), enc_in, ["pixel_values"], ENCODER_OUTPUTS, ({0: batch},))
    kv, cross = {1: rows, 3: past}, {1: rows}
    dec = trace_graph(decoder, dec_in, DECODER_INPUTS, DECODER_OUTPUTS, ({0: rows}, {0: rows}, kv, kv, cross, cross))
    layers, _, heads = dec_in[4].shape[:3]
    out = Path(output_dir)
    paths = [out / ENCODER_FILE, out / DECODER_FILE]
    save_model(enc, paths[0], _metadata(m, "encoder", layers, heads).to_props())
    save_model(dec, paths[1], _metadata(m, "decoder_step", layers, heads).to_props())
    if validate:
        validate_hf_export(m, out)
    return paths


def validate_hf_export(m: HFCaptionModel, output_dir: str | Path, batch: int = 2, steps: int = 4) -> dict[str, float]:
    """Max abs differences, ONNX Runtime step by step vs the model's eager teacher-forced forward pass.

    Raises:
        ModelError: a difference past :data:`TOLERANCE` (the message names each output).
    """
    from attnvis.captioning import hf_decoding

    gen = torch.Generator().manual_seed(1)
    size = m.pixel_values([np.zeros((8, 8, 3), np.uint8)]).shape[-2:]
    pixels = torch.randn(batch, 3, *size, generator=gen)
    rows = torch.randint(0, _vocab(m), (batch, steps), generator=gen).tolist()
    backend = OnnxStepBackend(Path(output_dir) / ENCODER_FILE, Path(output_dir) / DECODER_FILE, "cpu")
    got_maps = hf_decoding.replay(backend, backend.encode(pixels), m.generation, rows)
    ref_maps = hf_decoding.teacher_forced_cross_attention(m, pixels, rows)
    ids = torch.tensor([[m.generation.start] + r[:-1] for r in rows])
    got_logits = _replay_logits(backend, pixels, ids)
    with torch.no_grad():
        ref_logits = _eager_logits(m, pixels, ids)
    diffs = {"cross_attention": float(max(np.abs(a - b).max() for a, b in zip(got_maps, ref_maps))),
             "logits": float(np.abs(got_logits - ref_logits).max())}
    bad = {k: v for k, v in diffs.items() if not v <= TOLERANCE[k]}
    if bad:
        table = ", ".join(f"{k}={v:.2e} (tolerance {TOLERANCE[k]:g})" for k, v in bad.items())
        raise ModelError(f"ONNX Runtime disagrees with eager PyTorch in {output_dir}: {table}")
    return diffs


def _replay_logits(backend, pixels: torch.Tensor, ids: torch.Tensor) -> np.ndarray:
    state = backend.init_state(backend.encode(pixels), torch.arange(ids.shape[0]))
    out = []
    for t in range(ids.shape[1]):
        logits, _, state = backend.step(ids[:, t], state)
        out.append(logits.numpy())
    return np.stack(out, 1)


def _eager_logits(m: HFCaptionModel, pixels: torch.Tensor, ids: torch.Tensor) -> np.ndarray:
    if m.kind == "blip":
        return m.decoder(input_ids=ids, encoder_hidden_states=m.encode(pixels)).logits.numpy()
    return m.model(pixel_values=pixels, decoder_input_ids=ids).logits.numpy()


def export_key(path: str | Path) -> str:
    """A cache key for a captioner directory: its path and every file's size and modification time."""
    root = Path(path).resolve()
    h = hashlib.sha256(str(root).encode())
    for f in sorted(p for p in root.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def exported_dir(m: HFCaptionModel) -> Path:
    """Where the export of ``m``'s directory lives in the attnvis cache (exported and validated on first use)."""
    from attnvis.runtime.loader import cache_dir

    out = cache_dir() / "captioners" / export_key(m.path)
    if not ((out / ENCODER_FILE).is_file() and (out / DECODER_FILE).is_file()):
        export_hf_captioner(m, out, validate=True)
    return out


def onnx_step_backend(m: HFCaptionModel, device: str = "auto") -> OnnxStepBackend:
    """The ONNX Runtime backend for ``m``, exporting it on first use."""
    out = exported_dir(m)
    return OnnxStepBackend(out / ENCODER_FILE, out / DECODER_FILE, device)
