"""The captioner: features in, captions and per-word attention out, on either backend."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attnvis.captioning import tiny
from attnvis.captioning.backends import OnnxBackend, TorchBackend
from attnvis.captioning.checkpoint import build_model, read_infos
from attnvis.captioning.decoding import (Backend, DecodeOptions, Features, beam_search, decode_sequence,
                                         greedy_search, init_state)
from attnvis.captioning.model import BAD_ENDINGS, AoAConfig, AoAModel, clip_att
from attnvis.errors import InputError
from attnvis.runtime.device import torch_device


@dataclass
class CaptionResult:
    """Captions and where the model looked.

    Attributes:
        seq: ``(B, T)`` int64 word ids, 0 after the end (``T`` = max length).
        logprobs: ``(B, T)`` log-prob of each chosen word (as the original returns them).
        sentences: one string per image, as the original's ``decode_sequence``.
        decoder_attention: ``(B, T, heads, N)``, the decoder's attention at the
            step that chose each word; zero after the end token.
        refiner_attention: 6 arrays ``(B, heads, N, N)``; empty without refiner.
    """

    seq: np.ndarray
    logprobs: np.ndarray
    sentences: list[str]
    decoder_attention: np.ndarray
    refiner_attention: list[np.ndarray] = field(default_factory=list)

    def words(self, b: int = 0) -> list[str]:
        """The words of caption ``b`` (no subword merging)."""
        return self.sentences[b].split(" ") if self.sentences[b] else []


class Captioner:
    """Caption region or grid features and return per-word attention.

    Build it with :func:`load_aoanet` or the
    ``from_*`` constructors.
    """

    def __init__(self, backend: Backend, cfg: AoAConfig, vocab: dict[str, str], name: str = "") -> None:
        self.backend = backend
        self.cfg = cfg
        self.vocab = dict(vocab)
        self.seq_length = cfg.decode_length
        self.name = name
        self.bad_endings_ix = [int(k) for k, v in self.vocab.items() if v in BAD_ENDINGS]

    @classmethod
    def from_torch(cls, model: AoAModel, device: str = "cpu") -> "Captioner":
        """Eager PyTorch backend."""
        return cls(TorchBackend(model, device), model.cfg, model.vocab, name="torch")

    @classmethod
    def from_onnx_dir(cls, directory: str | Path, vocab: dict[str, str], cfg: AoAConfig,
                      device: str = "cpu") -> "Captioner":
        """ONNX Runtime backend over an :func:`~attnvis.captioning.export.export_aoanet` directory."""
        from attnvis.captioning.export import DECODER_FILE, ENCODER_FILE

        d = Path(directory)
        for f in (ENCODER_FILE, DECODER_FILE):
            if not (d / f).is_file():
                raise InputError(f"{d} has no {f}: export it first with `attnvis export`")
        return cls(OnnxBackend(d / ENCODER_FILE, d / DECODER_FILE, device), cfg, vocab, name="onnx")

    @classmethod
    def from_torch_via_onnx(cls, model: AoAModel, device: str = "cpu", validate: bool = False) -> "Captioner":
        """Export ``model`` to a temporary directory and run it with ONNX Runtime."""
        from attnvis.captioning.export import export_model

        with tempfile.TemporaryDirectory(prefix="attnvis-aoanet-") as tmp:
            export_model(model, tmp, validate=validate)
            # sessions read the files now; the directory can go afterwards
            return cls.from_onnx_dir(tmp, model.vocab, model.cfg, device)

    def caption(self, fc_feats, att_feats, att_masks=None, beam_size: int = 1,
                options: DecodeOptions | None = None) -> CaptionResult:
        """Caption a batch.

        Args:
            fc_feats: ``(B, fc_feat_size)`` or None (then the mean of the regions).
            att_feats: ``(B, N, att_feat_size)`` or a grid ``(B, H, W, C)``; numpy or torch.
            att_masks: ``(B, N)``, 1 for present regions, or None.
            beam_size: 1 for greedy search.
            options: the original's optional sampling switches.
        """
        opts = options or DecodeOptions()
        fc, att, masks = self._inputs(fc_feats, att_feats, att_masks)
        if not 1 <= beam_size <= self.cfg.vocab_size + 1:
            raise InputError(f"beam_size must be in 1..{self.cfg.vocab_size + 1}, got {beam_size}")
        n_regions = att.size(1)
        att, masks = clip_att(att, masks)
        dev = getattr(self.backend, "device", torch.device("cpu"))
        feats, maps = self.backend.encode(fc.to(dev), att.to(dev), None if masks is None else masks.to(dev))
        if beam_size == 1:
            state = init_state(att.size(0), self.cfg, dev)
            seq, logps, attn = greedy_search(self.backend, feats, state, self.seq_length, opts, self.bad_endings_ix)
        else:
            seq, logps, attn = self._beam(feats, beam_size, opts)
        return self._result(seq, logps, attn, maps, n_regions, opts)

    def _beam(self, feats: Features, beam_size: int, opts: DecodeOptions):
        best = []
        for k in range(feats.mean_feats.size(0)):
            rows = torch.full((beam_size,), k, dtype=torch.long, device=feats.mean_feats.device)
            state = init_state(beam_size, self.cfg, rows.device)
            best.append(beam_search(self.backend, feats.rows(rows), state, self.seq_length, opts,
                                    self.bad_endings_ix))
        return (torch.stack([b["seq"] for b in best]), torch.stack([b["logps"] for b in best]),
                torch.stack([b["attn"] for b in best]))

    def _result(self, seq, logps, attn, maps, n_regions: int, opts: DecodeOptions) -> CaptionResult:
        seq_np = seq.numpy().astype(np.int64)
        attn_np = _pad_last(attn.numpy().astype(np.float32), n_regions, 1)
        attn_np[_after_end(seq_np)] = 0.0
        maps_np = [_pad_last(m.detach().cpu().numpy().astype(np.float32), n_regions, 2) for m in maps]
        return CaptionResult(seq=seq_np, logprobs=logps.numpy().astype(np.float32),
                             sentences=decode_sequence(self.vocab, seq_np, opts.remove_bad_endings),
                             decoder_attention=attn_np, refiner_attention=maps_np)

    def _inputs(self, fc_feats, att_feats, att_masks):
        """Validate and convert to float32 CPU tensors ``(B, F)``, ``(B, N, A)``, ``(B, N)``."""
        att = _as_tensor(att_feats, "att_feats")
        if att.dim() == 4:  # a (B, H, W, C) grid, as prepro_feats stores it
            att = att.reshape(att.size(0), -1, att.size(-1))
        if att.dim() != 3 or att.size(-1) != self.cfg.att_feat_size or att.size(1) == 0:
            raise InputError(f"att_feats must be (B, N, {self.cfg.att_feat_size}), got {tuple(att.shape)}: "
                             "the features do not match this model's att_feat_size")
        fc = att.mean(1) if fc_feats is None else _as_tensor(fc_feats, "fc_feats").reshape(att.size(0), -1)
        if not self.cfg.mean_feats and fc.size(-1) != self.cfg.fc_feat_size:
            raise InputError(f"fc_feats must be (B, {self.cfg.fc_feat_size}), got {tuple(fc.shape)}")
        masks = None if att_masks is None else _as_tensor(att_masks, "att_masks")
        if masks is not None and (tuple(masks.shape) != tuple(att.shape[:2]) or bool((masks.sum(1) == 0).any())):
            raise InputError(f"att_masks must be (B, N) = {tuple(att.shape[:2])} with a region in every row, "
                             f"got shape {tuple(masks.shape)}")
        return fc, att, masks


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu()
    try:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a numeric array, got {type(x).__name__}") from exc


def _pad_last(a: np.ndarray, n: int, axes: int) -> np.ndarray:
    """Zero-pad the last ``axes`` axes to length ``n`` (regions clipped before encoding)."""
    pad = [(0, 0)] * (a.ndim - axes) + [(0, n - a.shape[d]) for d in range(a.ndim - axes, a.ndim)]
    return np.pad(a, pad) if any(p[1] for p in pad) else a


def _after_end(seq: np.ndarray) -> np.ndarray:
    """``(B, T)`` True strictly after the first 0 of each row."""
    ended = np.cumsum(seq == 0, axis=1) > 0
    return np.concatenate([np.zeros_like(ended[:, :1]), ended[:, :-1]], axis=1)


def load_aoanet(infos_path: str | Path, model_path: str | Path, backend: str = "torch",
                device: str = "cpu") -> Captioner:
    """Load an AoANet checkpoint as a :class:`Captioner`.

    Args:
        infos_path: ``infos_*.pkl`` written by the original training code (a
            pickle: load only files you trust).
        model_path: ``model.pth``. With ``backend="onnx"`` it may also be a
            directory holding ``encoder.onnx`` and ``decoder_step.onnx`` from
            :func:`attnvis.captioning.export.export_aoanet`; given a ``.pth`` the
            model is exported to a temporary directory first.
        backend: ``"torch"`` or ``"onnx"``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (an error when CUDA is not usable).
    """
    if backend not in ("torch", "onnx"):
        raise InputError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    if backend == "onnx" and Path(model_path).is_dir():
        cfg, vocab, _ = read_infos(infos_path)
        return Captioner.from_onnx_dir(model_path, vocab, cfg, device=device)
    model = build_model(infos_path, model_path, device="cpu" if backend == "onnx" else str(torch_device(device)))
    if backend == "torch":
        return Captioner.from_torch(model, device=device)
    return Captioner.from_torch_via_onnx(model, device=device)




def load_default_captioner(backend: str = "torch", device: str = "cpu") -> Captioner:
    """The tiny captioner shipped in ``assets`` (``attnvis demo --caption``).

    Its features come from :func:`~attnvis.captioning.tiny.load_tiny_backbone` via
    :func:`~attnvis.captioning.tiny.tiny_features`.
    """
    return load_aoanet(tiny.ASSETS / tiny.TINY_INFOS, tiny.ASSETS / tiny.TINY_MODEL, backend=backend, device=device)
