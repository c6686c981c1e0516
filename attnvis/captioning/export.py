"""Export AoANet as two ONNX graphs: the encoder and one decoder step.

``encoder.onnx``
    inputs ``fc_feats (B, F)``, ``att_feats (B, N, A)``, ``att_masks (B, N)``
    (1 = region present; pass ones when there is no padding) → outputs
    ``mean_feats (B, D)``, ``att_feats_out (B, N, D)``, ``p_att_feats (B, N, P)``
    and the refiner's self-attention ``attn_0 .. attn_5 (B, heads, N, N)``
    (none when the model has no refiner). Inputs the graph does not use
    (``fc_feats`` with ``mean_feats=1``) may be absent: feed only
    ``session.get_inputs()``.
``decoder_step.onnx``
    inputs ``it (B,) int64``, ``state_h``/``state_c (2, B, D)``, the three
    prepared features and ``att_masks`` → ``logprobs (B, V+1)``,
    ``state_h_out``, ``state_c_out`` and ``attn (B, heads, N)``.

Batch and region count are dynamic. Greedy and beam search run over these two
sessions in Python (:mod:`attnvis.captioning.decoding`), exactly as with the
PyTorch backend. The decoding loop clips trailing all-padding regions before
calling the encoder, as the original does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from attnvis.errors import ModelError
from attnvis.metadata import LayerInfo, ModelMetadata, TokenLayout
from attnvis.export.onnx import quiet_export, save_model
from attnvis.captioning.checkpoint import build_model, read_infos
from attnvis.captioning.model import NUM_REFINER_LAYERS, AoAModel

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder_step.onnx"
ENCODER_INPUTS = ("fc_feats", "att_feats", "att_masks")
ENCODER_FEATS = ("mean_feats", "att_feats_out", "p_att_feats")
DECODER_INPUTS = ("it", "state_h", "state_c", "mean_feats", "att_feats", "p_att_feats", "att_masks")
DECODER_OUTPUTS = ("logprobs", "state_h_out", "state_c_out", "attn")
OPSET = 18
TOLERANCE = 1e-4


class EncoderGraph(nn.Module):
    """``prepare_feature`` plus the refiner maps, as one traceable module."""

    def __init__(self, model: AoAModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, fc_feats, att_feats, att_masks):
        mean_feats, feats, p_feats, _ = self.model.prepare_feature(fc_feats, att_feats, att_masks)
        return (mean_feats, feats, p_feats, *self.model.refiner_maps())


class DecoderStepGraph(nn.Module):
    """One decoder step with the state split into ``h`` and ``c``."""

    def __init__(self, model: AoAModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, it, state_h, state_c, mean_feats, att_feats, p_att_feats, att_masks):
        logprobs, (h, c) = self.model.get_logprobs_state(it, mean_feats, att_feats, p_att_feats, att_masks,
                                                         (state_h, state_c))
        return logprobs, h, c, self.model.decoder_map()


def example_inputs(model: AoAModel, batch: int = 2, regions: int = 5, seed: int = 0):
    """Encoder and decoder-step example inputs; the second row has padded regions."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    fc = torch.randn(batch, cfg.fc_feat_size, generator=gen)
    att = torch.randn(batch, regions, cfg.att_feat_size, generator=gen)
    masks = torch.ones(batch, regions)
    masks[1:, regions - 2:] = 0
    with torch.no_grad():
        mean, feats, p_feats, _ = model.prepare_feature(fc, att, masks)
    h, c = (torch.randn(2, batch, cfg.rnn_size, generator=gen) for _ in range(2))
    it = torch.randint(0, cfg.vocab_size + 1, (batch,), generator=gen)
    return (fc, att, masks), (it, h, c, mean, feats, p_feats, masks)


def metadata(model: AoAModel, part: str, tokens: TokenLayout | None = None) -> ModelMetadata:
    """Metadata of ``encoder`` or ``decoder_step``; lengths 0 mean dynamic (regions)."""
    cfg = model.cfg
    if part == "encoder":
        layers = [LayerInfo(f"refiner.layers.{i}.self_attn", "self", cfg.num_heads, 0, 0, "MultiHeadedDotAttention")
                  for i in range(NUM_REFINER_LAYERS if model.refiner is not None else 0)]
        outputs = list(ENCODER_FEATS)
    else:
        kind = "MultiHeadedDotAttention" if cfg.use_multi_head == 2 else "Attention"
        layers = [LayerInfo("core.attention", "cross", cfg.decoder_heads, 1, 0, kind)]
        outputs = list(DECODER_OUTPUTS[:3])
    extra = {"model": "aoanet", "part": part, "opt": _json_safe(vars(cfg.to_opt())), "vocab": model.vocab,
             "seq_length": model.seq_length, "state_layers": 2, "decoder_heads": cfg.decoder_heads}
    return ModelMetadata(layers=layers, tokens=tokens or TokenLayout(kind="regions"), reduction="none",
                         input_name="att_feats", model_outputs=outputs, source="aoanet", extra=extra)


def _json_safe(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool, type(None)))}


def _trace(module: nn.Module, inputs: tuple, input_names, output_names, dynamic: tuple) -> onnx.ModelProto:
    with quiet_export(), torch.no_grad():
        program = torch.onnx.export(module.eval(), inputs, dynamo=True, opset_version=OPSET,
                                    input_names=list(input_names), output_names=list(output_names),
                                    dynamic_shapes=dynamic, external_data=False, verbose=False)
    return program.model_proto


def _dynamic_axes():
    batch, regions = torch.export.Dim("batch"), torch.export.Dim("regions")
    encoder = ({0: batch}, {0: batch, 1: regions}, {0: batch, 1: regions})
    decoder = ({0: batch}, {1: batch}, {1: batch}, {0: batch}, {0: batch, 1: regions}, {0: batch, 1: regions},
               {0: batch, 1: regions})
    return encoder, decoder


def _save(proto: onnx.ModelProto, output: Path, meta: ModelMetadata) -> Path:
    """Write with metadata under a temporary name, then rename (nothing half-written)."""
    save_model(proto, output, meta.to_props())
    return output


def export_model(model: AoAModel, output_dir: str | Path, validate: bool = True,
                 tokens: TokenLayout | None = None) -> list[Path]:
    """Export an in-memory :class:`AoAModel` to ``output_dir``.

    Returns:
        ``[encoder.onnx, decoder_step.onnx]``.

    Raises:
        ModelError: validation against eager PyTorch past tolerance.
    """
    model = model.cpu().eval()
    out = Path(output_dir)
    enc_in, dec_in = example_inputs(model)
    enc_dyn, dec_dyn = _dynamic_axes()
    n_maps = NUM_REFINER_LAYERS if model.refiner is not None else 0
    enc_out = list(ENCODER_FEATS) + [f"attn_{i}" for i in range(n_maps)]
    enc = _trace(EncoderGraph(model), enc_in, ENCODER_INPUTS, enc_out, enc_dyn)
    dec = _trace(DecoderStepGraph(model), dec_in, DECODER_INPUTS, DECODER_OUTPUTS, dec_dyn)
    paths = [_save(enc, out / ENCODER_FILE, metadata(model, "encoder", tokens)),
             _save(dec, out / DECODER_FILE, metadata(model, "decoder_step", tokens))]
    if validate:
        validate_export(model, out)
    return paths


def export_aoanet(model_path: str | Path, infos_path: str | Path, output_dir: str | Path,
                  validate: bool = True) -> list[Path]:
    """Export an AoANet checkpoint to ``encoder.onnx`` and ``decoder_step.onnx``.

    Args:
        model_path: ``model.pth`` from the original training code.
        infos_path: its ``infos_*.pkl`` (a pickle: only load files you trust).
        output_dir: directory to write into (created).
        validate: run both graphs with ONNX Runtime on a batch with padded
            regions and compare every output with eager PyTorch.

    The token layout is ``regions`` unless the infos' options name a feature
    ``grid`` (h, w), as the tiny captioner's do.
    """
    _, _, opt = read_infos(infos_path)
    grid = getattr(opt, "grid", None)
    tokens = TokenLayout(kind="grid", grid=(int(grid[0]), int(grid[1]))) if grid else None
    return export_model(build_model(infos_path, model_path), output_dir, validate=validate, tokens=tokens)


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in wanted})


def validate_export(model: AoAModel, output_dir: str | Path, batch: int = 3, regions: int = 7) -> dict[str, float]:
    """Max abs difference of every output, ORT vs eager PyTorch, on fresh inputs.

    Raises:
        ModelError: a difference past ``TOLERANCE`` (the table names each output).
    """
    out = Path(output_dir)
    enc_in, dec_in = example_inputs(model, batch=batch, regions=regions, seed=1)
    with torch.no_grad():
        enc_ref = EncoderGraph(model)(*enc_in)
        dec_ref = DecoderStepGraph(model)(*dec_in)
    diffs: dict[str, float] = {}
    for path, names, inputs, refs, outs in (
        (out / ENCODER_FILE, ENCODER_INPUTS, enc_in, enc_ref, list(ENCODER_FEATS) + [f"attn_{i}" for i in range(6)]),
        (out / DECODER_FILE, DECODER_INPUTS, dec_in, dec_ref, list(DECODER_OUTPUTS)),
    ):
        got = _run(path, {n: t.numpy() for n, t in zip(names, inputs)})
        for name, ref, val in zip(outs, refs, got):
            diffs[f"{path.stem}:{name}"] = float(np.abs(ref.numpy() - val).max())
    bad = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
    if bad:
        table = ", ".join(f"{k}={v:.2e}" for k, v in bad.items())
        raise ModelError(f"ONNX Runtime disagrees with PyTorch past {TOLERANCE:g} in {out}: {table}")
    return diffs
