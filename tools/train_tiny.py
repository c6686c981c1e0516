"""Train the embedded default model (``attnvis.models.tiny.TinyViT``) on synthetic scenes.

Reproducible: fixed seeds everywhere; the data are ``make_scene(seed)`` for
seeds ``0 .. --train-scenes - 1`` (all below ``HELD_OUT_SEED`` = 1,000,000);
evaluation uses seeds from 1,000,000 up, which training never sees. The loss
is plain cross-entropy on the class label: no attention supervision, no box
information. Each scene is resized to the model input with bilinear or area
interpolation (chosen per scene from its seed), so the model does not depend on
one resampling filter; batches are flipped left-right at random.

Runs on 2 CPU cores in about 6-9 minutes and writes
``attnvis/models/assets/tiny_vit.pt`` (fp32 state dict) and the sample image
``attnvis/models/assets/sample_scene.png``. Prints held-out accuracy and the
rate at which the last layer's head-averaged CLS attention peaks inside the
object's box.

Usage:
    python tools/train_tiny.py [--steps 1200] [--train-scenes 24000] [--threads 2]
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


def _render(seed: int) -> tuple[np.ndarray, int]:
    """One training example: the scene resized to the model input (uint8 (96, 96, 3)) and its label."""
    scene = tiny.make_scene_with_label(seed)
    height, width = tiny.DEFAULT_PREPROCESS.size
    interpolation = cv2.INTER_AREA if seed % 2 else cv2.INTER_LINEAR
    return cv2.resize(scene.image, (width, height), interpolation=interpolation), scene.label


def build_dataset(seeds: range, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``seeds`` in ``workers`` processes → images (N, 96, 96, 3) uint8, labels (N,) int64."""
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        rendered = pool.map(_render, seeds, chunksize=256)
    images = torch.from_numpy(np.stack([image for image, _ in rendered]))
    labels = torch.tensor([label for _, label in rendered], dtype=torch.int64)
    return images, labels


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


def train(model: tiny.TinyViT, images: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace) -> None:
    """AdamW on cross-entropy with random batches and random horizontal flips."""
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    model.train()
    start = time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, warmup=args.steps // 20)
        index = torch.randint(len(labels), (args.batch,), generator=generator)
        batch = normalise(images[index])
        flip = torch.rand(args.batch, generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-1)
        loss = F.cross_entropy(model(batch), labels[index], label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.1f}s", flush=True)
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
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-scenes", type=int, default=24000)
    parser.add_argument("--eval-scenes", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=pathlib.Path, default=ASSETS / tiny.WEIGHTS_NAME)
    args = parser.parse_args()
    if args.train_scenes > tiny.HELD_OUT_SEED:
        parser.error(f"--train-scenes must be at most {tiny.HELD_OUT_SEED} (seeds above are held out)")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.time()
    images, labels = build_dataset(range(args.train_scenes), workers=args.threads)
    print(f"rendered {len(labels)} training scenes in {time.time() - start:.1f}s", flush=True)
    model = tiny.TinyViT()
    print(f"TinyViT {tiny.TinyViTConfig()}  params {sum(p.numel() for p in model.parameters())}")
    train(model, images, labels, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.2f} MB); sample {write_sample()}")
    held_out = range(tiny.HELD_OUT_SEED, tiny.HELD_OUT_SEED + args.eval_scenes)
    accuracy, peak_rate = evaluate(model, held_out)
    print(f"held-out seeds {held_out.start}..{held_out.stop - 1}: accuracy {accuracy:.3f}  "
          f"last-layer CLS peak in box {peak_rate:.3f}  total {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
