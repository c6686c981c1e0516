"""Batched captioning through ONNX Runtime against a loop of Hugging Face ``generate(..., output_attentions=True)``.

    python benchmarks/bench_caption.py                       # ViT-S + GPT-2-small shapes, batch 16, 20 tokens
    python benchmarks/bench_caption.py --images 32 --rounds 3

The model is a ``VisionEncoderDecoderModel`` with random weights: a ViT-S/16
encoder (384 wide, 12 layers, 6 heads, 224²) and a GPT-2-small-shaped decoder
(768 wide, 12 layers, 12 heads, 50,257 tokens) with cross-attention, and a
word-level tokenizer, saved to a temporary folder (nothing is downloaded).
Both sides caption the same images in batches of ``--batch`` with greedy
search and exactly ``--tokens`` new tokens (``min_new_tokens`` is not used:
random weights do not end early), image preprocessing included:

- baseline: per batch, the image processor, then ``model.generate(pixel_values,
  do_sample=False, num_beams=1, max_new_tokens=N, output_attentions=True,
  return_dict_in_generate=True)`` on the eager model;
- attnvis: ``load_captioner(DIR, backend="onnx").caption(batch)`` (per-word
  cross-attention maps included).

The export (and its validation) runs before timing and is reported apart. One
warm-up batch each, then ``--rounds`` alternating timed passes over all
images; the median is the result. Tokens of the two sides are compared.
Results are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_model(path: Path, vocab: int = 50257, seed: int = 0) -> Path:
    """The random ViT-S + GPT-2-small captioner, tokenizer and image processor in ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (GPT2Config, PreTrainedTokenizerFast, ViTConfig, ViTImageProcessor,
                              VisionEncoderDecoderConfig, VisionEncoderDecoderModel)

    words = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")
    enc = ViTConfig(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                    intermediate_size=1536)
    dec = GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=768, n_layer=12, n_head=12, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 1, 0, 2
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(cfg).eval()
    gen = model.generation_config
    gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id = 1, 2, 0
    model.save_pretrained(path)
    fast.save_pretrained(path)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(path)
    return path


def baseline(model, processor, images: list[np.ndarray], batch: int, tokens: int) -> list[list[int]]:
    """The Hugging Face loop: per batch, preprocess and ``generate(..., output_attentions=True)``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            pixels = processor(images=images[i:i + batch], return_tensors="pt")["pixel_values"]
            res = model.generate(pixel_values=pixels, do_sample=False, num_beams=1, max_new_tokens=tokens,
                                 output_attentions=True, return_dict_in_generate=True)
            out += [row[1:] for row in res.sequences.tolist()]
    return out


def ours(captioner, images: list[np.ndarray], batch: int, tokens: int) -> list[list[int]]:
    out = []
    for i in range(0, len(images), batch):
        out += [c.token_ids.tolist() for c in captioner.caption(images[i:i + batch], max_new_tokens=tokens)]
    return out


def timed(fn, *args) -> tuple[float, list]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16, help="images per timed pass")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--output", default="benchmarks/results/bench_caption.json")
    args = p.parse_args(argv)

    from attnvis.captioning.load import load_captioner

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(args.images)]
    with tempfile.TemporaryDirectory(prefix="attnvis-bench-caption-") as tmp:
        os.environ.setdefault("ATTNVIS_CACHE", str(Path(tmp) / "cache"))
        path = make_model(Path(tmp) / "vit-gpt2")
        hf_cap = load_captioner(path, backend="torch", device="cpu")
        export_s, onnx_cap = timed(load_captioner, path, "onnx", "cpu")
        model, processor = hf_cap.model.model, hf_cap.model.processor
        warm = images[:args.batch]
        base_warm, _ = timed(baseline, model, processor, warm, args.batch, args.tokens)
        ours_warm, _ = timed(ours, onnx_cap, warm, args.batch, args.tokens)
        base_t, ours_t = [], []
        for _ in range(args.rounds):
            t, base_ids = timed(baseline, model, processor, images, args.batch, args.tokens)
            base_t.append(t)
            t, our_ids = timed(ours, onnx_cap, images, args.batch, args.tokens)
            ours_t.append(t)
    same = sum(a == b for a, b in zip(base_ids, our_ids))
    result = {
        "model": "VisionEncoderDecoder ViT-S/16 (384x12, 6 heads, 224) + GPT-2-small shape (768x12, 12 heads, 50257), random",
        "images": args.images, "batch": args.batch, "tokens": args.tokens, "rounds": args.rounds,
        "export_and_validate_s": round(export_s, 2), "warmup_s": {"hf": round(base_warm, 2), "onnx": round(ours_warm, 2)},
        "hf_generate_s": [round(t, 3) for t in base_t], "onnx_s": [round(t, 3) for t in ours_t],
        "hf_images_per_s": round(args.images / statistics.median(base_t), 3),
        "onnx_images_per_s": round(args.images / statistics.median(ours_t), 3),
        "same_tokens": f"{same}/{len(base_ids)}", "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    result["speedup"] = round(result["onnx_images_per_s"] / result["hf_images_per_s"], 3)
    print(json.dumps(result, indent=2))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
