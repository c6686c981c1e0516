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

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from attnvis.captioning.model import AoAConfig
from attnvis.errors import InputError

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


