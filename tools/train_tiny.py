"""Train the embedded default model (``attnvis.models.tiny.TinyViT``) on synthetic scenes.

Reproducible: fixed seeds everywhere, one torch thread by default; the data
are ``make_scene(seed)`` for seeds ``0 .. --train-scenes - 1`` (all below
``HELD_OUT_SEED`` = 1,000,000); evaluation uses seeds from 1,000,000 up,
which training never sees.

Loss: cross-entropy on the class label plus, with ``--attn-weight W`` (the
shipped weights use W = 0.5; W = 0 gives plain classification), an auxiliary
attention term ``W * -log(mass)``: ``mass`` is the last layer's head-averaged
CLS attention on the patch cells whose centre lies inside the training
scene's object box (the box comes from ``make_scene`` like the label). It
teaches where to look on training scenes only; at evaluation the model sees
nothing but the image. Each scene is resized to the model input with bilinear
or area interpolation (by seed parity), so the model does not depend on one
resampling filter; batches are flipped left-right at random.

Writes ``attnvis/models/assets/tiny_vit.pt`` (fp32 state dict; also a
snapshot every 100 steps) and the sample image ``sample_scene.png``, then
prints held-out accuracy and the rate at which the last layer's head-averaged
CLS attention peaks inside the object's box. On an idle 2-core machine it
takes a few minutes (rendering ~1 min, training ~2-3 min).

Usage:
    python tools/train_tiny.py [--data-cache /tmp/tiny_data.pt]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import pathlib
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from attnvis.models import tiny

ASSETS = pathlib.Path(tiny.__file__).resolve().parent / "assets"


def _render(seed: int) -> tuple[np.ndarray, int, np.ndarray]:
    """One example: the scene resized to the model input (uint8 (96, 96, 3)), its label, its box cells."""
    scene = tiny.make_scene_with_label(seed)
    height, width = tiny.DEFAULT_PREPROCESS.size
    interpolation = cv2.INTER_AREA if seed % 2 else cv2.INTER_LINEAR
    image = cv2.resize(scene.image, (width, height), interpolation=interpolation)
    return image, scene.label, box_cells(scene.bbox, scene.image.shape[:2])


def box_cells(bbox: tuple[int, int, int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Patch cells whose centre lies inside ``bbox``, bool (h, w); used only by ``--attn-weight``."""
    grid_h, grid_w = tiny.DEFAULT_TOKENS.grid
    centres_y = (np.arange(grid_h) + 0.5) * image_hw[0] / grid_h
    centres_x = (np.arange(grid_w) + 0.5) * image_hw[1] / grid_w
    x0, y0, x1, y1 = bbox
    inside_y = (centres_y >= y0) & (centres_y < y1)
    inside_x = (centres_x >= x0) & (centres_x < x1)
    return inside_y[:, None] & inside_x[None, :]


def build_dataset(seeds: range, workers: int) -> dict[str, torch.Tensor]:
    """Render ``seeds`` in ``workers`` processes → images (N, 96, 96, 3) uint8, labels (N,), cells (N, h, w)."""
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        rendered = pool.map(_render, seeds, chunksize=256)
    return {
        "images": torch.from_numpy(np.stack([item[0] for item in rendered])),
        "labels": torch.tensor([item[1] for item in rendered], dtype=torch.int64),
        "cells": torch.from_numpy(np.stack([item[2] for item in rendered])),
    }


def load_or_build(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The training set, from ``--data-cache`` when it holds the same seeds, else rendered (and cached)."""
    seeds = range(args.train_scenes)
    cache = args.data_cache
    if cache is not None and cache.is_file():
        data = torch.load(cache, weights_only=True)
        if data.get("seeds") == [seeds.start, seeds.stop] and "cells" in data:
            return data
    data = build_dataset(seeds, workers=args.workers)
    if cache is not None:
        torch.save({"seeds": [seeds.start, seeds.stop], **data}, cache)
    return data


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) normalised as ``DEFAULT_PREPROCESS`` says."""
    pre = tiny.DEFAULT_PREPROCESS
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float() * pre.scale - mean) / std


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


class LastAttentionInput:
    """Forward hook keeping the input of the last block's attention (for ``--attn-weight``)."""

    def __init__(self, model: tiny.TinyViT) -> None:
        self.tokens: torch.Tensor | None = None
        model.blocks[-1].attn.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.tokens = inputs[0]


def attention_loss(model: tiny.TinyViT, tokens: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """-log of the last layer's head-averaged CLS attention mass on the object's cells, batch mean."""
    q, k, _ = model.blocks[-1].attn.split_heads(tokens)
    weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)  # (B, heads, N, N)
    cls_row = weights.mean(1)[:, 0, tiny.DEFAULT_TOKENS.prefix_tokens :]  # (B, h * w)
    mass = (cls_row * cells.flatten(1).float()).sum(1)
    return -torch.log(mass + 1e-6).mean()


def train(model: tiny.TinyViT, data: dict[str, torch.Tensor], args: argparse.Namespace) -> None:
    """AdamW on cross-entropy (+ optional attention term) with random batches and horizontal flips."""
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    hook = LastAttentionInput(model)
    model.train()
    start = time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, warmup=args.steps // 20)
        index = torch.randint(len(data["labels"]), (args.batch,), generator=generator)
        batch, cells = normalise(data["images"][index]), data["cells"][index]
        flip = torch.rand(args.batch, generator=generator) < 0.5
        batch[flip], cells[flip] = batch[flip].flip(-1), cells[flip].flip(-1)
        loss = F.cross_entropy(model(batch), data["labels"][index], label_smoothing=0.05)
        if args.attn_weight > 0:
            loss = loss + args.attn_weight * attention_loss(model, hook.tokens, cells)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.1f}s", flush=True)
            torch.save(model.state_dict(), args.output)  # a usable snapshot if the run is cut short
    model.eval()


@torch.no_grad()
def evaluate(model: tiny.TinyViT, seeds: range) -> tuple[float, float]:
    """Held-out accuracy and last-layer CLS peak-in-box rate on ``seeds`` (full-size scenes)."""
    correct = inside = 0
    for seed in seeds:
        scene = tiny.make_scene_with_label(seed)
        x = tiny.preprocess(scene.image)
        correct += int(model(x).argmax(1).item() == scene.label)
        px, py = tiny.cls_peak(tiny.explicit_attention(model, x)[-1][0], scene.image.shape[:2])
        x0, y0, x1, y1 = scene.bbox
        inside += int(x0 <= px < x1 and y0 <= py < y1)
    return correct / len(seeds), inside / len(seeds)


def write_sample() -> pathlib.Path:
    """Save the held-out scene ``SAMPLE_SEED`` as the bundled sample PNG."""
    image, _ = tiny.make_scene(tiny.SAMPLE_SEED)
    path = ASSETS / tiny.SAMPLE_NAME
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-scenes", type=int, default=12000)
    parser.add_argument("--eval-scenes", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is fastest on a busy 2-core machine")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering the scenes")
    parser.add_argument("--attn-weight", type=float, default=0.5,
                        help="weight of the attention term (0: plain classification)")
    parser.add_argument("--output", type=pathlib.Path, default=ASSETS / tiny.WEIGHTS_NAME)
    parser.add_argument("--data-cache", type=pathlib.Path, default=None,
                        help="reuse the rendered training scenes from this file (written on first use)")
    args = parser.parse_args()
    if args.train_scenes > tiny.HELD_OUT_SEED:
        parser.error(f"--train-scenes must be at most {tiny.HELD_OUT_SEED} (seeds above are held out)")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.time()
    data = load_or_build(args)
    print(f"rendered {len(data['labels'])} training scenes in {time.time() - start:.1f}s", flush=True)
    model = tiny.TinyViT()
    print(f"TinyViT {tiny.TinyViTConfig()}  params {sum(p.numel() for p in model.parameters())}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    train(model, data, args)
    torch.save(model.state_dict(), args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB); sample {write_sample()}")
    held_out = range(tiny.HELD_OUT_SEED, tiny.HELD_OUT_SEED + args.eval_scenes)
    accuracy, peak_rate = evaluate(model, held_out)
    print(f"held-out seeds {held_out.start}..{held_out.stop - 1}: accuracy {accuracy:.3f}  "
          f"last-layer CLS peak in box {peak_rate:.3f}  total {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
