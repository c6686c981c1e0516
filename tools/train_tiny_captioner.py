"""Train the tiny AoANet captioner shipped in attnvis/models/assets.

Scenes come from ``attnvis.models.aoanet.make_caption_scene`` (seeds below
``TINY_HELD_OUT_SEED``); the backbone and the captioner are trained jointly
with cross-entropy (teacher forcing), as the original's first stage. Writes
``tiny_aoanet.pth`` (an AoANet state dict, loadable by ``load_aoanet``),
``tiny_aoanet_infos.pkl`` (``opt`` + ``vocab`` as the original writes them) and
``tiny_aoanet_backbone.pth``, then reports the held-out caption accuracy and how
often each shape word's attention peaks inside its box.

Usage: ``python tools/train_tiny_captioner.py [--steps 800] [--output DIR]``
(about 0.3 CPU-seconds a step on one thread, ~5 minutes; reproducible: fixed seeds, one thread).
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
import torch

from attnvis.captioning import captioner, model as aoa, tiny


LABEL_WORDS = 11  # the longest caption: three "a <colour> <shape>" joined by "and"


def tiny_config() -> aoa.AoAConfig:
    """Small AoANet: refiner with AoA, no feed-forward (keeps the file < 1 MB)."""
    return aoa.AoAConfig(vocab_size=len(tiny.TINY_WORDS), input_encoding_size=64, rnn_size=64, att_hid_size=64,
                       fc_feat_size=64, att_feat_size=64, drop_prob_lm=0.1, num_heads=4, multi_head_scale=1,
                       use_multi_head=2, refine=1, refine_aoa=1, use_ff=0, dropout_aoa=0.1, max_length=16)


def vocab() -> dict[str, str]:
    """id string → word, ids from 1 (0 is BOS/EOS/pad); UNK last, as prepro_labels."""
    return {str(i): w for i, w in enumerate(tiny.TINY_WORDS, 1)}


def encode(caption: str, word_to_ix: dict[str, int], length: int) -> np.ndarray:
    """``[0, w1, ..., wn, 0, ...]`` of ``length + 2`` (BOS, words, EOS/pad)."""
    ids = [word_to_ix[w] for w in caption.split()]
    out = np.zeros(length + 2, np.int64)
    out[1:1 + len(ids)] = ids
    return out


def dataset(seeds: range, length: int) -> tuple[np.ndarray, np.ndarray]:
    w2i = {w: int(i) for i, w in vocab().items()}
    scenes = [tiny.make_caption_scene(s) for s in seeds]
    return np.stack([s.image for s in scenes]), np.stack([encode(s.caption, w2i, length) for s in scenes])


def train(steps: int, batch: int, seed: int, log_every: int = 100):
    torch.manual_seed(seed)
    cfg = tiny_config()
    model, backbone = aoa.AoAModel(cfg, vocab()), tiny.TinyBackbone(cfg.att_feat_size)
    images, labels = dataset(range(3000), LABEL_WORDS)
    params = list(model.parameters()) + list(backbone.parameters())
    optim = torch.optim.Adam(params, lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    gen = np.random.default_rng(seed)
    model.train(), backbone.train()
    start = time.perf_counter()
    for step in range(steps):
        idx = gen.choice(len(images), batch, replace=False)
        grid = backbone(tiny.tiny_pixels(images[idx]))
        att = grid.reshape(batch, -1, grid.size(-1))
        seq = torch.from_numpy(labels[idx])
        logprobs = model(att.mean(1), att, seq)  # (B, T-1, V+1)
        target, mask = seq[:, 1:], _word_mask(seq)
        loss = -(logprobs.gather(2, target.unsqueeze(2)).squeeze(2) * mask).sum() / mask.sum()
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f}s", flush=True)
    return model.eval(), backbone.eval()


def _word_mask(seq: torch.Tensor) -> torch.Tensor:
    """Loss mask over targets: every word and the first EOS (as the original's masks)."""
    words = (seq[:, 1:] > 0).float()
    first_eos = torch.cat([torch.ones_like(words[:, :1]), words[:, :-1]], 1)
    return torch.maximum(words, first_eos)


def evaluate(captioner, backbone, seeds: range) -> tuple[float, float]:
    """Held-out exact-caption accuracy and the share of shape words whose attention peaks in their box."""
    scenes = [tiny.make_caption_scene(s) for s in seeds]
    fc, att = tiny.tiny_features(backbone, np.stack([s.image for s in scenes]))
    result = captioner.caption(fc, att)
    exact = hits = total = 0
    for b, scene in enumerate(scenes):
        exact += result.sentences[b] == scene.caption
        words = result.words(b)
        for t in range(len(words)):
            obj = scene.object_of(words, t)
            if obj is not None:
                total += 1
                hits += peak_in_box(result.decoder_attention[b, t], scene.boxes[obj])
    return exact / len(scenes), hits / max(total, 1)


def peak_in_box(attn: np.ndarray, box) -> bool:
    """Whether the centre of the highest cell (mean over heads) lies inside ``box``."""
    side = tiny.TINY_IMAGE // tiny.TINY_CELL
    cell = int(np.argmax(attn.mean(0)))
    cx, cy = (cell % side + 0.5) * tiny.TINY_CELL, (cell // side + 0.5) * tiny.TINY_CELL
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def save(model, backbone, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), output / tiny.TINY_MODEL)
    torch.save(backbone.state_dict(), output / tiny.TINY_BACKBONE)
    opt = model.cfg.to_opt(id="tiny", seq_per_img=1, grid=[tiny.TINY_IMAGE // tiny.TINY_CELL] * 2, image_size=tiny.TINY_IMAGE)
    with (output / tiny.TINY_INFOS).open("wb") as f:
        pickle.dump({"opt": opt, "vocab": model.vocab}, f, protocol=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=tiny.ASSETS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # ops this small run slower with threads (spin waits)
    model, backbone = train(args.steps, args.batch, args.seed)
    save(model, backbone, args.output)
    captioner = captioner.load_aoanet(args.output / tiny.TINY_INFOS, args.output / tiny.TINY_MODEL)
    acc, peak = evaluate(captioner, backbone, range(tiny.TINY_HELD_OUT_SEED, tiny.TINY_HELD_OUT_SEED + 200))
    print(f"held-out: exact captions {acc:.1%}, shape-word attention peak in box {peak:.1%}")


if __name__ == "__main__":
    main()
