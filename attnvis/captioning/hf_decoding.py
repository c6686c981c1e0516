"""Greedy and beam search for Hugging Face captioners, token for token as ``generate(do_sample=False)``.

Two ways to the same tokens and maps:

- PyTorch: ``generate`` itself picks the tokens, then one teacher-forced eager
  pass over the chosen sequence with ``output_attentions=True`` gives the
  cross-attention (for a causal decoder, position ``t`` of that pass is step
  ``t`` of generation).
- A step backend (:class:`~attnvis.captioning.hf_onnx.OnnxStepBackend`):
  :func:`greedy_search` and :func:`beam_search` below port ``generate``'s
  loops (``_sample`` without sampling, the vectorized ``_beam_search``) and
  call one decoder step per token for the whole batch; beam search replays
  the winning sequences once to read their maps.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from attnvis.captioning.hf import GenerationSettings, HFCaptionModel


class StepBackend(Protocol):
    """One decoder step for many rows at once, with its own key/value cache."""

    def init_state(self, encoded: Any, rows: torch.Tensor) -> Any:
        """Empty caches for ``rows`` (indices into the encoded batch)."""

    def step(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, np.ndarray, Any]:
        """``ids (N,)`` → ``logits (N, V)`` float32, ``cross (N, layers, heads, K)``, the new state."""

    def reorder(self, state: Any, index: torch.Tensor) -> Any:
        """Keep rows ``index`` of the caches (beam search)."""


def cut(row: list[int], eos: list[int]) -> list[int]:
    """The ids up to and including the first end token."""
    for i, tok in enumerate(row):
        if tok in eos:
            return row[:i + 1]
    return row


# --- PyTorch: generate, then teacher forcing -------------------------------------------------------


@torch.no_grad()
def torch_generate(m: HFCaptionModel, pixel_values: torch.Tensor, beam_size: int,
                   max_new_tokens: int) -> list[list[int]]:
    """``generate(do_sample=False, num_beams=beam_size, max_new_tokens=...)``, each row after its start token."""
    out = m.model.generate(pixel_values=pixel_values, do_sample=False, num_beams=beam_size,
                           max_new_tokens=max_new_tokens)
    return [cut(row[1:], m.generation.eos) for row in out.tolist()]


@torch.no_grad()
def teacher_forced_cross_attention(m: HFCaptionModel, pixel_values: torch.Tensor,
                                   rows: list[list[int]]) -> list[np.ndarray]:
    """Per row ``(T, layers, heads, K)``: the eager cross-attention of a forward pass over ``start + row[:-1]``."""
    longest = max((len(r) for r in rows), default=0)
    if longest == 0:
        return [np.zeros((0, 0, 0, 0), np.float32) for _ in rows]
    ids = torch.full((len(rows), longest), m.generation.pad, dtype=torch.long)
    ids[:, 0] = m.generation.start
    for b, row in enumerate(rows):
        ids[b, 1:len(row)] = torch.tensor(row[:-1], dtype=torch.long)
    ids = ids.to(m.device)
    cross = _cross_attentions(m, pixel_values, ids)  # layers × (B, heads, T, K)
    maps = torch.stack(cross, 1).permute(0, 3, 1, 2, 4).float().cpu().numpy()  # (B, T, layers, heads, K)
    return [np.ascontiguousarray(maps[b, :len(row)]) for b, row in enumerate(rows)]


def _cross_attentions(m: HFCaptionModel, pixel_values: torch.Tensor, ids: torch.Tensor):
    mask = torch.ones_like(ids)
    if m.kind == "blip":
        states = m.encode(pixel_values)
        out = m.decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=states, output_attentions=True)
        return out.cross_attentions
    out = m.model(pixel_values=pixel_values, decoder_input_ids=ids, decoder_attention_mask=mask,
                  output_attentions=True)
    return out.cross_attentions


# --- a step backend: greedy and beam search as generate runs them ----------------------------------


def greedy_search(backend: StepBackend, encoded: Any, batch: int, gen: GenerationSettings,
                  max_new_tokens: int) -> tuple[list[list[int]], list[np.ndarray]]:
    """Greedy search for the whole batch; rows stop at their end token. Returns ids and maps per row."""
    state = backend.init_state(encoded, torch.arange(batch))
    ids = torch.full((batch,), gen.start, dtype=torch.long)
    eos = torch.tensor(gen.eos or [-1], dtype=torch.long)
    unfinished = torch.ones(batch, dtype=torch.bool)
    tokens, maps = [], []
    for _ in range(max_new_tokens):
        logits, cross, state = backend.step(ids, state)
        nxt = torch.argmax(logits, dim=-1)
        nxt = torch.where(unfinished, nxt, torch.full_like(nxt, gen.pad))
        tokens.append(nxt)
        maps.append(cross)
        unfinished &= ~torch.isin(nxt, eos)
        if not bool(unfinished.any()):
            break
        ids = nxt
    rows = [cut(r, gen.eos) for r in torch.stack(tokens, 1).tolist()] if tokens else [[] for _ in range(batch)]
    stacked = np.stack(maps, 1) if maps else None  # (B, T, layers, heads, K)
    return rows, [np.ascontiguousarray(stacked[b, :len(r)]) if stacked is not None else np.zeros((0, 0, 0, 0), np.float32)
                  for b, r in enumerate(rows)]


def replay(backend: StepBackend, encoded: Any, gen: GenerationSettings, rows: list[list[int]]) -> list[np.ndarray]:
    """Teacher-force ``rows`` through the step backend and return each row's maps ``(T, layers, heads, K)``."""
    batch, longest = len(rows), max((len(r) for r in rows), default=0)
    state = backend.init_state(encoded, torch.arange(batch))
    ids = torch.full((batch,), gen.start, dtype=torch.long)
    maps = []
    for t in range(longest):
        _, cross, state = backend.step(ids, state)
        maps.append(cross)
        ids = torch.tensor([r[t] if t < len(r) else gen.pad for r in rows], dtype=torch.long)
    stacked = np.stack(maps, 1) if maps else None
    return [np.ascontiguousarray(stacked[b, :len(r)]) if len(r) else np.zeros((0, 0, 0, 0), np.float32)
            for b, r in enumerate(rows)]


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``generate``'s ``_gather_beams``: rows of dim 1 picked per batch item."""
    return torch.take_along_dim(t, index.view(*index.shape, *([1] * (t.dim() - 2))), dim=1)


class _Beams:
    """The state of ``generate``'s vectorized beam search (names as there)."""

    def __init__(self, batch: int, beams: int, gen: GenerationSettings, max_length: int) -> None:
        self.batch, self.beams, self.max_length = batch, beams, max_length
        self.eos = torch.tensor(gen.eos or [-1], dtype=torch.long)
        self.keep = max(2, 1 + len(gen.eos)) * beams
        self.top_mask = torch.cat((torch.ones(beams, dtype=torch.bool), torch.zeros(self.keep - beams, dtype=torch.bool)))
        fill = gen.eos[0] if gen.eos else -1
        self.running = torch.full((batch, beams, max_length), fill, dtype=torch.long)
        self.running[:, :, 0] = gen.start
        self.sequences = self.running.clone()
        self.running_scores = torch.zeros((batch, beams))
        self.running_scores[:, 1:] = -1e9
        self.scores = torch.full((batch, beams), -1e9)
        self.finished = torch.zeros((batch, beams), dtype=torch.bool)
        self.heuristic = torch.ones((batch, 1), dtype=torch.bool)
        self.hits = torch.zeros((batch, beams), dtype=torch.bool)
        self.running_bi = torch.full((batch, beams, max_length - 1), -1, dtype=torch.int32)
        self.beam_indices = self.running_bi.clone()


def beam_search(backend: StepBackend, encoded: Any, batch: int, beams: int, gen: GenerationSettings,
                max_new_tokens: int) -> list[list[int]]:
    """``generate(num_beams=beams, do_sample=False)`` for the whole batch; the best beam's ids per row."""
    s = _Beams(batch, beams, gen, 1 + max_new_tokens)
    state = backend.init_state(encoded, torch.arange(batch).repeat_interleave(beams))
    cur = 1
    while True:
        logits, _, state = backend.step(s.running[:, :, cur - 1].reshape(-1), state)
        log_probs = torch.nn.functional.log_softmax(logits.float(), dim=-1)
        vocab = log_probs.shape[-1]
        log_probs = (log_probs.view(batch, beams, vocab) + s.running_scores[:, :, None]).reshape(batch, -1)
        topk_lp, topk_seq, topk_bi = _top_k(s, log_probs, vocab, cur)
        s.hits = torch.isin(topk_seq[:, :, cur], s.eos) | (cur + 1 >= s.max_length)
        _next_running(s, topk_lp, topk_seq, topk_bi)
        _update_finished(s, topk_lp, topk_seq, topk_bi, cur, gen)
        state = backend.reorder(state, s.running_bi[:, :, cur - 1].reshape(-1).long())
        cur += 1
        _early_stop_heuristic(s, cur, gen)
        done_all = bool(s.finished.all()) and gen.early_stopping is True
        if not bool(s.heuristic.any()) or done_all or bool(s.hits.all()):
            break
    best = s.sequences[:, 0, :]
    length = int((s.beam_indices[:, 0, :] + 1).bool().sum(dim=1).max()) if batch else 0
    return [cut(row[1:1 + length], gen.eos) for row in best.tolist()]


def _top_k(s: _Beams, log_probs: torch.Tensor, vocab: int, cur: int):
    topk_lp, topk_idx = torch.topk(log_probs, k=s.keep)
    beam = topk_idx // vocab
    topk_bi = _gather(s.running_bi, beam)
    topk_seq = _gather(s.running, beam)
    topk_seq[:, :, cur] = topk_idx % vocab
    topk_bi[:, :, cur - 1] = (beam + torch.arange(s.batch).view(-1, 1) * s.beams).to(topk_bi.dtype)
    return topk_lp, topk_seq, topk_bi


def _next_running(s: _Beams, topk_lp, topk_seq, topk_bi) -> None:
    lp = topk_lp + s.hits.to(torch.float32) * -1.0e9
    idx = torch.topk(lp, k=s.beams)[1]
    s.running, s.running_scores, s.running_bi = _gather(topk_seq, idx), _gather(lp, idx), _gather(topk_bi, idx)


def _update_finished(s: _Beams, topk_lp, topk_seq, topk_bi, cur: int, gen: GenerationSettings) -> None:
    just = s.hits & s.top_mask[None, :]
    lp = topk_lp / ((cur + 1 - 1) ** gen.length_penalty)
    full = torch.all(s.finished, dim=-1, keepdim=True) & (gen.early_stopping is True)
    lp = lp + full.to(torch.float32) * -1.0e9
    lp = lp + (~s.heuristic).to(torch.float32) * -1.0e9
    lp = lp + (~just) * -1.0e9
    merged_scores = torch.cat((s.scores, lp), dim=1)
    idx = torch.topk(merged_scores, k=s.beams)[1]
    s.sequences = _gather(torch.cat((s.sequences, topk_seq), dim=1), idx)
    s.scores = _gather(merged_scores, idx)
    s.beam_indices = _gather(torch.cat((s.beam_indices, topk_bi), dim=1), idx)
    s.finished = _gather(torch.cat((s.finished, just), dim=1), idx)


def _early_stop_heuristic(s: _Beams, cur: int, gen: GenerationSettings) -> None:
    if gen.early_stopping == "never" and gen.length_penalty > 0.0:
        best_length = s.max_length - 1
    else:
        best_length = cur - 1
    best_running = s.running_scores[:, :1] / (best_length ** gen.length_penalty)
    worst = torch.where(s.finished, torch.min(s.scores, dim=1, keepdim=True)[0], -1.0e9)
    s.heuristic = s.heuristic & torch.any(best_running > worst, dim=-1, keepdim=True)
