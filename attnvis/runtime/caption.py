"""Captioning with per-word attention: greedy and beam search over AoANet.

The decoding loops follow the original AoANet / self-critical.pytorch code step
by step (``AttModel._sample``, ``CaptionModel.beam_search``), including the
choices that decide ties and the values users see:

- greedy: ``torch.max`` over the log-probs; a finished row keeps being fed id
  0 and its ``logprobs`` entries keep the maximum log-prob of that step;
- beam search: each image alone; ``torch.sort`` (descending) per row, the
  candidates ordered word rank first, then beam, stably sorted by summed
  log-prob; ``UNK`` (the last id) is penalised by 1000 at every step; a beam
  that emits id 0 is stored and its sum set to -1000 but stays in the beam;
  after each step the log-probs go through ``log_softmax`` once more;
- ``sentences`` as ``misc.utils.decode_sequence``.

Both backends (PyTorch module, or ``encoder.onnx`` + ``decoder_step.onnx``
run by ONNX Runtime) feed the same loops, so they pick the same words.
"""

from __future__ import annotations

import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from attnvis.errors import InputError, ModelError
from attnvis.models.aoanet import AoAConfig, AoAModel, clip_att

# misc/utils.py's list, used by decode_sequence when remove_bad_endings is on
DECODE_BAD_ENDINGS = ("with", "in", "on", "of", "a", "at", "to", "for", "an", "this", "his", "her", "that", "the")


class Features(NamedTuple):
    """Prepared features: ``(B, D)``, ``(B, N, D)``, ``(B, N, P)``, ``(B, N)`` or None."""

    mean_feats: torch.Tensor
    att_feats: torch.Tensor
    p_att_feats: torch.Tensor
    att_masks: torch.Tensor | None

    def rows(self, index: torch.Tensor) -> "Features":
        """The rows ``index`` (a beam repeats one image's row)."""
        return Features(*(None if t is None else t.index_select(0, index).contiguous() for t in self))


State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (2, B, D)


class Backend(Protocol):
    """What the decoding loops need from a model."""

    def encode(self, fc_feats, att_feats, att_masks) -> tuple[Features, list[torch.Tensor]]: ...

    def step(self, it: torch.Tensor, state: State, feats: Features) -> tuple[torch.Tensor, State, torch.Tensor]: ...


@dataclass
class DecodeOptions:
    """Sampling switches of the original's eval options (all off by default)."""

    remove_bad_endings: bool = False
    decoding_constraint: bool = False
    temperature: float = 1.0
    length_penalty: str = ""


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


# ---------------------------------------------------------------- backends


class TorchBackend:
    """Runs an :class:`AoAModel` eagerly."""

    def __init__(self, model: AoAModel, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def encode(self, fc_feats, att_feats, att_masks):
        feats = Features(*self.model.prepare_feature(fc_feats, att_feats, att_masks))
        return feats, [m.clone() for m in self.model.refiner_maps()]

    @torch.no_grad()
    def step(self, it, state, feats):
        logprobs, state = self.model.get_logprobs_state(it, *feats, state)
        return logprobs, state, self.model.decoder_map().clone()


class OnnxBackend:
    """Runs ``encoder.onnx`` and ``decoder_step.onnx`` with ONNX Runtime."""

    def __init__(self, encoder_path: str | Path, decoder_path: str | Path, device: str = "cpu") -> None:
        self.encoder = _ort_session(encoder_path, device)
        self.decoder = _ort_session(decoder_path, device)
        self.device = torch.device("cpu")
        self._enc_inputs = {i.name for i in self.encoder.get_inputs()}
        self._dec_inputs = {i.name for i in self.decoder.get_inputs()}

    def encode(self, fc_feats, att_feats, att_masks):
        masks = torch.ones(att_feats.shape[:2]) if att_masks is None else att_masks
        feeds = {"fc_feats": fc_feats, "att_feats": att_feats, "att_masks": masks}
        out = self.encoder.run(None, _numpy_feeds(feeds, self._enc_inputs))
        tensors = [torch.from_numpy(o) for o in out]
        return Features(*tensors[:3], masks.float()), tensors[3:]

    def step(self, it, state, feats):
        feeds = {"it": it, "state_h": state[0], "state_c": state[1], "mean_feats": feats.mean_feats,
                 "att_feats": feats.att_feats, "p_att_feats": feats.p_att_feats, "att_masks": feats.att_masks}
        logprobs, h, c, attn = (torch.from_numpy(o) for o in self.decoder.run(None, _numpy_feeds(feeds, self._dec_inputs)))
        return logprobs, (h, c), attn


def _numpy_feeds(feeds: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in feeds.items() if k in wanted}


def _ort_session(path: str | Path, device: str):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            from attnvis.errors import DeviceError

            raise DeviceError(f"device {device!r} asked for, but ONNX Runtime has no CUDA provider here; use --device cpu")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), providers=providers)


# ---------------------------------------------------------------- decoding loops


def init_state(batch: int, cfg: AoAConfig, device) -> State:
    """Zero ``(h, c)``, two state layers."""
    return (torch.zeros(2, batch, cfg.rnn_size, device=device), torch.zeros(2, batch, cfg.rnn_size, device=device))


def _block_words(logprobs, prev, opts: DecodeOptions, bad_ix: list[int]):
    """Greedy's optional constraints (decoding_constraint, remove_bad_endings), out of place."""
    if opts.decoding_constraint:
        tmp = logprobs.new_zeros(logprobs.size())
        tmp.scatter_(1, prev.unsqueeze(1), float("-inf"))
        logprobs = logprobs + tmp
    if opts.remove_bad_endings:
        tmp = logprobs.new_zeros(logprobs.size())
        tmp[torch.from_numpy(np.isin(prev.cpu().numpy(), bad_ix)), 0] = float("-inf")
        logprobs = logprobs + tmp
    return logprobs


def greedy_search(backend: Backend, feats: Features, state: State, length: int, opts: DecodeOptions,
                  bad_ix: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``AttModel._sample`` with ``sample_method='greedy'``.

    Returns:
        ``seq (B, T)``, ``logprobs (B, T)``, ``attention (B, T, heads, N)``.
    """
    batch = feats.mean_feats.size(0)
    seq = torch.zeros(batch, length, dtype=torch.long)
    seq_logprobs = torch.zeros(batch, length)
    attention: torch.Tensor | None = None
    it = torch.zeros(batch, dtype=torch.long)
    unfinished = torch.ones(batch, dtype=torch.bool)
    for t in range(length):
        logprobs, state, attn = backend.step(it.to(feats.mean_feats.device), state, feats)
        logprobs, attn = logprobs.cpu().float(), attn.cpu()
        if t > 0:
            logprobs = _block_words(logprobs, seq[:, t - 1], opts, bad_ix)
        if attention is None:
            attention = torch.zeros(batch, length, *attn.shape[1:])
        sample_logprobs, it = torch.max(logprobs, 1)
        unfinished = unfinished & (it > 0)
        it = it * unfinished.type_as(it)
        seq[:, t], seq_logprobs[:, t], attention[:, t] = it, sample_logprobs, attn
        if unfinished.sum() == 0:
            break
    return seq, seq_logprobs, attention


@dataclass
class _Beams:
    """The running beams of one image: ``(T, beam)`` ids/log-probs, ``(beam,)`` sums."""

    seq: torch.Tensor
    logps: torch.Tensor
    sums: torch.Tensor
    attn: torch.Tensor  # (T, beam, heads, N)


def _candidates(logprobsf, unaug, sums, beam_size: int, t: int) -> list[dict]:
    """Expansions ranked as the original: word rank-major, beam-minor, stable sort by sum."""
    ys, ix = torch.sort(logprobsf, 1, True)
    rows = 1 if t == 0 else beam_size
    cands = []
    for c in range(min(beam_size, ys.size(1))):
        for q in range(rows):
            p = sums[q] + ys[q, c].item()  # float32, as the original's tensor + float
            cands.append({"c": ix[q, c], "q": q, "p": p, "r": unaug[q, ix[q, c]]})
    return sorted(cands, key=lambda x: -float(x["p"]))


def _beam_step(logprobsf, unaug, beam_size, t, beams: _Beams, state: State, step_attn) -> State:
    """Fork the best ``beam_size`` expansions into the beams (in place); return the new state."""
    cands = _candidates(logprobsf, unaug, beams.sums, beam_size, t)
    new_state = tuple(s.clone() for s in state)
    prev_seq, prev_logps, prev_attn = beams.seq[:t].clone(), beams.logps[:t].clone(), beams.attn[:t].clone()
    for vix in range(beam_size):
        v = cands[vix]
        q = v["q"]
        if t >= 1:
            beams.seq[:t, vix], beams.logps[:t, vix], beams.attn[:t, vix] = prev_seq[:, q], prev_logps[:, q], prev_attn[:, q]
        for s_new, s_old in zip(new_state, state):
            s_new[:, vix] = s_old[:, q]
        beams.seq[t, vix], beams.logps[t, vix], beams.sums[vix] = v["c"], v["r"], v["p"]
        beams.attn[t, vix] = step_attn[q]
    return new_state


def _penalty(spec: str):
    """``misc.utils.penalty_builder``: '' | 'wu_<alpha>' | 'avg_<alpha>'."""
    if not spec:
        return lambda length, logprob: logprob
    kind, alpha = spec.split("_")
    if kind == "wu":
        return lambda length, logprob: logprob / (((5 + length) ** float(alpha)) / ((5 + 1) ** float(alpha)))
    if kind == "avg":
        return lambda length, logprob: logprob / length
    raise InputError(f"length_penalty must be 'wu_X' or 'avg_X', got {spec!r}")


def _constrain_beams(logprobsf, beams: _Beams, t: int, opts: DecodeOptions, bad_ix: list[int]) -> None:
    """In place, as the original: optional constraints, then the UNK penalty."""
    if opts.decoding_constraint and t > 0:
        logprobsf.scatter_(1, beams.seq[t - 1].unsqueeze(1), float("-inf"))
    if opts.remove_bad_endings and t > 0:
        logprobsf[torch.from_numpy(np.isin(beams.seq[t - 1].numpy(), bad_ix)), 0] = float("-inf")
    logprobsf[:, logprobsf.size(1) - 1] = logprobsf[:, logprobsf.size(1) - 1] - 1000


def beam_search(backend: Backend, feats: Features, state: State, length: int, opts: DecodeOptions,
                bad_ix: list[int]) -> dict:
    """``AttModel._sample_beam`` + ``CaptionModel.beam_search`` for one image.

    ``feats`` and the zero ``state`` hold the image once per beam.

    Returns:
        The best finished beam: ``{"seq", "logps", "attn", "p"}``.
    """
    beam_size = feats.mean_feats.size(0)
    logprobs, state, attn = backend.step(torch.zeros(beam_size, dtype=torch.long, device=feats.mean_feats.device),
                                         state, feats)
    beams = _Beams(torch.zeros(length, beam_size, dtype=torch.long), torch.zeros(length, beam_size),
                   torch.zeros(beam_size), torch.zeros(length, beam_size, *attn.shape[1:]))
    penalty, done = _penalty(opts.length_penalty), []
    for t in range(length):
        logprobsf = logprobs.cpu().float()
        _constrain_beams(logprobsf, beams, t, opts, bad_ix)
        state = _beam_step(logprobsf, logprobsf.clone(), beam_size, t, beams, state, attn.cpu())
        for vix in range(beam_size):
            if beams.seq[t, vix] == 0 or t == length - 1:
                done.append({"seq": beams.seq[:, vix].clone(), "logps": beams.logps[:, vix].clone(),
                             "attn": beams.attn[:, vix].clone(), "p": penalty(t + 1, beams.sums[vix].item())})
                beams.sums[vix] = -1000
        if t == length - 1:
            break  # the original runs one more step whose result is never used
        logprobs, state, attn = backend.step(beams.seq[t].to(feats.mean_feats.device), state, feats)
        logprobs = F.log_softmax(logprobs / opts.temperature, dim=-1)
    return sorted(done, key=lambda x: -x["p"])[0]


def decode_sequence(vocab: dict[str, str], seq: np.ndarray, remove_bad_endings: bool = False) -> list[str]:
    """Word ids → sentences, as ``misc.utils.decode_sequence`` (stops at the first 0)."""
    out = []
    for row in np.asarray(seq):
        words = []
        for ix in row:
            if ix <= 0:
                break
            words.append(vocab.get(str(int(ix)), "UNK"))
        txt = " ".join(words)
        if remove_bad_endings:
            parts, flag = txt.split(" "), 0
            for j in range(len(parts)):
                if parts[-j - 1] not in DECODE_BAD_ENDINGS:
                    flag = -j
                    break
            txt = " ".join(parts[0:len(parts) + flag])
        out.append(txt.replace("@@ ", ""))
    return out


# ---------------------------------------------------------------- the captioner


class Captioner:
    """Caption region or grid features and return per-word attention.

    Build it with :func:`attnvis.models.aoanet.load_aoanet` or the
    ``from_*`` constructors.
    """

    def __init__(self, backend: Backend, cfg: AoAConfig, vocab: dict[str, str], name: str = "") -> None:
        self.backend = backend
        self.cfg = cfg
        self.vocab = dict(vocab)
        self.seq_length = cfg.decode_length
        self.name = name
        self.bad_endings_ix = [int(k) for k, v in self.vocab.items() if v in _model_bad_endings()]

    @classmethod
    def from_torch(cls, model: AoAModel, device: str = "cpu") -> "Captioner":
        """Eager PyTorch backend."""
        return cls(TorchBackend(model, device), model.cfg, model.vocab, name="torch")

    @classmethod
    def from_onnx_dir(cls, directory: str | Path, vocab: dict[str, str], cfg: AoAConfig,
                      device: str = "cpu") -> "Captioner":
        """ONNX Runtime backend over an :func:`~attnvis.export.aoanet.export_aoanet` directory."""
        from attnvis.export.aoanet import DECODER_FILE, ENCODER_FILE

        d = Path(directory)
        for f in (ENCODER_FILE, DECODER_FILE):
            if not (d / f).is_file():
                raise InputError(f"{d} has no {f}: export it first with `attnvis export`")
        return cls(OnnxBackend(d / ENCODER_FILE, d / DECODER_FILE, device), cfg, vocab, name="onnx")

    @classmethod
    def from_torch_via_onnx(cls, model: AoAModel, device: str = "cpu", validate: bool = False) -> "Captioner":
        """Export ``model`` to a temporary directory and run it with ONNX Runtime."""
        from attnvis.export.aoanet import export_model

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


def _model_bad_endings() -> tuple[str, ...]:
    from attnvis.models.aoanet import BAD_ENDINGS

    return BAD_ENDINGS


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


# ---------------------------------------------------------------- images: features and files


@dataclass
class CaptionVisOptions:
    """What :func:`visualize_caption` reads and writes.

    Attributes:
        output: directory for the images (created).
        att_feats: bottom-up region features, ``.npz`` with key ``feat`` ``(N, A)``.
        boxes: their boxes, ``.npy`` ``(N, 4)`` ``x1, y1, x2, y2`` in image pixels.
        backbone_weights: a local torchvision ResNet-101 state dict, for grid
            features made as the original's ``prepro_feats`` (used when
            ``att_feats`` is not given).
        beam_size: 1 for greedy search.
        head: one head's map, or None for the mean over heads.
        layer: one refiner layer to write, or None for all six.
        save_raw: also write ``attn_raw_layer_{i}.npy`` and ``decoder_attention.npy``.
        colormap: an :data:`attnvis.render.COLORMAPS` name.
        alpha: heatmap weight in the overlays.
        device: ``cpu`` or ``cuda``.
        backend: ``torch`` or ``onnx``.
    """

    output: Path = Path("attn_vis")
    att_feats: Path | None = None
    boxes: Path | None = None
    backbone_weights: Path | None = None
    beam_size: int = 1
    head: int | None = None
    layer: int | None = None
    save_raw: bool = False
    colormap: str = "jet"
    alpha: float = 0.5
    device: str = "cpu"
    backend: str = "torch"


@dataclass
class FeatureLayout:
    """How the regions map onto the image: a ``grid`` ``(h, w)`` or ``boxes`` ``(N, 4)``."""

    grid: tuple[int, int] | None = None
    boxes: np.ndarray | None = None


@dataclass
class CaptionReport:
    """What a visualisation run produced."""

    sentence: str
    files: list[Path]
    result: CaptionResult


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``; grey and RGBA images are converted."""
    import cv2

    p = Path(path)
    image = cv2.imread(str(p), cv2.IMREAD_COLOR) if p.is_file() else None
    if image is None:
        raise InputError(f"cannot read image {p}: missing or not an image file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_region_features(att_path: str | Path, boxes_path: str | Path, att_feat_size: int,
                         opt: Any = None, image_hw: tuple[int, int] | None = None):
    """Bottom-up features as the AoANet data pipeline stores them.

    ``fc`` is the mean of the regions (``make_bu_data``). With ``opt.norm_att_feat``
    the rows are L2-normalised, and with ``opt.use_box`` the five box features
    are appended and the regions sorted by area, as the original's loader does.

    Returns:
        ``fc (1, A)``, ``att (1, N, A')``, ``boxes (N, 4)`` float32 (same order as ``att``).
    """
    try:
        with np.load(att_path) as data:
            feat = np.asarray(data["feat"], np.float32)
        boxes = np.asarray(np.load(boxes_path), np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"cannot read region features {att_path} / boxes {boxes_path}: {exc}") from exc
    feat = feat.reshape(-1, feat.shape[-1])
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(feat):
        raise InputError(f"boxes {boxes_path} has shape {boxes.shape}, expected ({len(feat)}, 4): "
                         f"one box per region of {att_path}")
    fc = feat.mean(0, keepdims=True)
    if getattr(opt, "norm_att_feat", 0):
        feat = feat / np.linalg.norm(feat, 2, 1, keepdims=True)
    if getattr(opt, "use_box", 0):
        feat, boxes = _with_box_feats(feat, boxes, image_hw, getattr(opt, "norm_box_feat", 0))
    if feat.shape[1] != att_feat_size:
        raise InputError(f"{att_path}: regions have {feat.shape[1]} features, the model expects {att_feat_size}")
    return fc, feat[None], boxes


def _with_box_feats(feat, boxes, image_hw, norm_box):
    h, w = image_hw or (1.0, 1.0)
    x1, y1, x2, y2 = np.hsplit(boxes, 4)
    box_feat = np.hstack((x1 / w, y1 / h, x2 / w, y2 / h, (x2 - x1) * (y2 - y1) / (w * h)))
    if norm_box:
        box_feat = box_feat / np.linalg.norm(box_feat, 2, 1, keepdims=True)
    order = np.argsort(-box_feat[:, -1], kind="stable")  # largest box first, as the loader sorts
    return np.hstack([feat, box_feat])[order].astype(np.float32), boxes[order]


def reference_resnet(weights_path: str | Path, depth: int = 101):
    """torchvision ResNet changed as the original's ``misc/resnet.py``.

    The max-pool has no padding and rounds up; the stride of the first block of
    layers 2-4 sits on its 1x1 convolution (Caffe style), so its grid features
    match ``prepro_feats``. The weights come from a local file only.
    """
    import torchvision

    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    net.maxpool = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(net, name)[0]
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise InputError(f"backbone weights not found: {path} (a local resnet{depth} .pth; nothing is downloaded)")
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, pickle.UnpicklingError) as exc:
            raise ModelError(f"{path} is not a resnet{depth} state dict: {str(exc).splitlines()[0]}") from exc
    return net.eval()


@torch.no_grad()
def resnet_grid_features(net, image: np.ndarray, att_size: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    """``prepro_feats``: the full-size image, ImageNet mean/std, ``(1, F)`` fc and ``(1, att_size², C)`` grid."""
    x = torch.from_numpy(image[:, :, :3].astype(np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = ((x - mean) / std).unsqueeze(0)
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        x = getattr(net, name)(x)
    fc = x.mean(3).mean(2)
    att = F.adaptive_avg_pool2d(x, [att_size, att_size]).permute(0, 2, 3, 1)  # (1, s, s, C)
    return fc, att.reshape(1, -1, att.size(-1))


def _word_map(attn: np.ndarray, head: int | None) -> np.ndarray:
    """``(heads, N)`` → ``(N,)``: one head or the mean over heads."""
    if head is None:
        return attn.mean(0)
    if not 0 <= head < attn.shape[0]:
        raise InputError(f"head {head} out of range: this model has heads 0..{attn.shape[0] - 1}")
    return attn[head]


def _paint(values: np.ndarray, image: np.ndarray, layout: FeatureLayout, opts: CaptionVisOptions):
    """``(N,)`` region values → ``(heatmap, overlay)`` on ``image``."""
    from attnvis import render

    values = np.ascontiguousarray(values, dtype=np.float32)
    if layout.boxes is not None:
        return render.render_regions(values, layout.boxes, image, opts.colormap, opts.alpha)
    return render.render_map(values.reshape(layout.grid), image, opts.colormap, opts.alpha)


def _safe(word: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in word) or "_"


def caption_strip(tiles: list[np.ndarray], words: list[str], height: int = 160) -> np.ndarray:
    """Overlays side by side, each word written under its tile (RGB uint8)."""
    import cv2

    cols = []
    for tile, word in zip(tiles, words):
        w = max(1, round(tile.shape[1] * height / tile.shape[0]))
        tile = cv2.resize(tile, (w, height), interpolation=cv2.INTER_AREA)
        band = np.full((28, max(w, 8 * len(word) + 8), 3), 255, np.uint8)
        cv2.putText(band, word, (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        tile = np.pad(tile, ((0, 0), (0, band.shape[1] - w), (0, 0)), constant_values=255)
        cols.append(np.pad(np.concatenate([tile, band]), ((0, 0), (0, 4), (0, 0)), constant_values=255))
    return np.concatenate(cols, axis=1) if cols else np.full((height + 28, 8, 3), 255, np.uint8)


def write_caption_maps(image: np.ndarray, result: CaptionResult, layout: FeatureLayout,
                       opts: CaptionVisOptions) -> list[Path]:
    """Per-word overlays, the caption strip and the refiner maps of image 0."""
    from attnvis import render

    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    files, tiles = [], []
    words = result.words(0)
    for t, word in enumerate(words):
        _, overlay = _paint(_word_map(result.decoder_attention[0, t], opts.head), image, layout, opts)
        files.append(render.write_image(out / f"word_{t}_{_safe(word)}.png", overlay))
        tiles.append(overlay)
    files.append(render.write_image(out / "caption_strip.png", caption_strip(tiles, words)))
    files += _write_refiner(image, result, layout, opts, out)
    if opts.save_raw:
        files.append(out / "decoder_attention.npy")
        np.save(files[-1], result.decoder_attention[0, :len(words)])
    return files


def _write_refiner(image, result: CaptionResult, layout: FeatureLayout, opts: CaptionVisOptions, out: Path):
    from attnvis import render

    maps = result.refiner_attention
    if opts.layer is not None and not 0 <= opts.layer < max(len(maps), 1):
        raise InputError(f"layer {opts.layer} out of range: the refiner has layers 0..{len(maps) - 1}")
    files = []
    for i, layer_map in enumerate(maps):
        if opts.layer is not None and i != opts.layer:
            continue
        name = f"refiner_layers_{i}_self_attn"
        # no CLS token: the mean over query regions, (heads, N, N) -> (heads, N)
        heat, overlay = _paint(_word_map(layer_map[0].mean(1), opts.head), image, layout, opts)
        files.append(render.write_image(out / f"attn_map_layer_{i}_{name}.png", overlay))
        files.append(render.write_image(out / f"heatmap_layer_{i}_{name}.png", heat))
        if opts.save_raw:
            files.append(out / f"attn_raw_layer_{i}.npy")
            np.save(files[-1], layer_map[0])
    return files


def _features(image: np.ndarray, opt: Any, cfg: AoAConfig, opts: CaptionVisOptions):
    """``(fc, att, layout)`` from region files or the ResNet grid."""
    if opts.att_feats is not None:
        if opts.boxes is None:
            raise InputError("--att-feats needs --boxes (one box per region, .npy (N, 4))")
        fc, att, boxes = load_region_features(opts.att_feats, opts.boxes, cfg.att_feat_size, opt, image.shape[:2])
        return fc, att, FeatureLayout(boxes=boxes)
    if opts.backbone_weights is None:
        raise InputError("give region features (--att-feats FILE.npz --boxes FILE.npy) or a local ResNet-101 "
                         "state dict for grid features (--backbone-weights FILE.pth)")
    fc, att = resnet_grid_features(reference_resnet(opts.backbone_weights), image)
    if att.size(-1) != cfg.att_feat_size:
        raise InputError(f"the backbone gives {att.size(-1)} features, the model expects {cfg.att_feat_size}")
    return fc, att, FeatureLayout(grid=(14, 14))


def visualize_caption(image_path: str | Path, model_path: str | Path, infos_path: str | Path,
                      options: CaptionVisOptions | None = None) -> CaptionReport:
    """Caption one image and write where each word looked.

    Writes ``word_{t}_{word}.png`` overlays, ``caption_strip.png`` and, per
    refiner layer, ``attn_map_layer_{i}_{layer}.png`` / ``heatmap_layer_{i}_{layer}.png``
    (``attn_raw_layer_{i}.npy`` with ``save_raw``).
    """
    from attnvis.models.aoanet import load_aoanet, read_infos

    opts = options or CaptionVisOptions()
    image = read_image(image_path)
    cfg, _, opt = read_infos(infos_path)
    fc, att, layout = _features(image, opt, cfg, opts)
    captioner = load_aoanet(infos_path, model_path, backend=opts.backend, device=opts.device)
    result = captioner.caption(fc, att, beam_size=opts.beam_size)
    files = write_caption_maps(image, result, layout, opts)
    return CaptionReport(result.sentences[0], files, result)


def demo_caption(output: str | Path = "attn_vis", device: str = "cpu", backend: str = "torch",
                 beam_size: int = 1, seed: int | None = None) -> CaptionReport:
    """``attnvis demo --caption``: the shipped tiny captioner on a held-out synthetic scene.

    Writes the same files as :func:`visualize_caption` plus the scene as ``scene.png``.
    """
    from attnvis import render
    from attnvis.models import aoanet

    opts = CaptionVisOptions(output=Path(output), beam_size=beam_size, device=resolve_device(device), backend=backend)
    scene = aoanet.make_caption_scene(aoanet.TINY_HELD_OUT_SEED + 7 if seed is None else seed)
    fc, att = aoanet.tiny_features(aoanet.load_tiny_backbone(), scene.image)
    captioner = aoanet.load_default_captioner(opts.backend, device=opts.device)
    result = captioner.caption(fc, att, beam_size=opts.beam_size)
    side = aoanet.TINY_IMAGE // aoanet.TINY_CELL
    files = write_caption_maps(scene.image, result, FeatureLayout(grid=(side, side)), opts)
    files.append(render.write_image(Path(opts.output) / "scene.png", scene.image))
    return CaptionReport(result.sentences[0], files, result)


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when PyTorch can use it, else ``cpu``; other names unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _cli_backend(name: str) -> str:
    return "onnx" if name in ("ort", "onnx") else name


def visualize_caption_cli(args: Any) -> int:
    """``attnvis visualize --infos_path ...``: parsed arguments → :func:`visualize_caption`; prints one line."""
    opts = CaptionVisOptions(
        output=Path(args.output), att_feats=args.att_feats, boxes=args.boxes, backbone_weights=args.backbone_weights,
        beam_size=args.beam_size, head=args.head, layer=args.layer, save_raw=args.save_raw, colormap=args.colormap,
        alpha=args.alpha, device=resolve_device(args.device), backend=_cli_backend(args.backend))
    report = visualize_caption(args.image, args.model, args.infos_path, opts)
    print(f"caption: {report.sentence!r}; wrote {len(report.files)} files to {opts.output}")
    return 0


def demo_caption_cli(args: Any) -> int:
    """``attnvis demo --caption``: parsed arguments → :func:`demo_caption`; prints one line."""
    report = demo_caption(args.output, device=args.device, backend=_cli_backend(getattr(args, "backend", "torch")))
    print(f"caption: {report.sentence!r}; wrote {len(report.files)} files to {args.output}")
    return 0
