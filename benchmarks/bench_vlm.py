"""Vision-language models: attnvis's rows against Hugging Face's ``generate(output_attentions=True)``.

    python benchmarks/bench_vlm.py memory               # peak memory, 2,304 image tokens (336 px / 7-px patches)
    python benchmarks/bench_vlm.py memory --image 448   # 4,096 image tokens
    python benchmarks/bench_vlm.py speed                # images/s: ONNX Runtime batched vs the HF loop

**memory.** The model is a LLaVA of tiny width (hidden 64, 8 heads, 4
layers, random weights) with a long prompt: ``(image / 7)²`` image tokens
plus the chat template's text. Each side runs in a fresh process of its own,
one image, ``--new`` tokens, no warm-up (nothing is run before the measured call):

- attnvis: ``load_captioner(dir, backend="torch").caption(...)``: the model's
  own ``sdpa`` attention (fused), plus each generated token's rows;
- Hugging Face: the model loaded with ``attn_implementation="eager"`` and
  ``generate(do_sample=False, output_attentions=True,
  return_dict_in_generate=True)``, what users run to get the same rows.

Peak memory is the process's peak RSS (``ru_maxrss``) less its RSS just
before the timed call (model loaded, warm-up done), and on CUDA
``torch.cuda.max_memory_allocated`` over the call. Both sides' tokens are
compared.

**speed.** A small-shaped LLaVA (56-px images: 64 image tokens; hidden 64,
8 heads, 4 layers): ``--images`` images, ``--new`` tokens each. attnvis's
``backend="onnx"`` captions them in one batched call; Hugging Face runs the
loop users write, ``generate(..., output_attentions=True,
return_dict_in_generate=True)`` per image (eager attention), keeping the
rows of the image tokens. One warm-up pass each (ONNX export and first-call
costs apart), then ``--rounds`` alternating timed passes; the median round's
ratio is the result. Tokens are compared. Results are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Describe the image."


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _image(size: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def worker(side: str, model_dir: str, size: int, new: int, device: str) -> dict:
    """One side, in this process: the warm-up call, then the measured one."""
    import torch

    image = _image(size)
    if side == "attnvis":
        from attnvis.captioning.load import load_captioner

        cap = load_captioner(model_dir, backend="torch", device=device)
        run = lambda n: cap.caption([image], prompt=PROMPT, max_new_tokens=n)  # noqa: E731
        tokens = lambda out: out[0].token_ids.tolist()  # noqa: E731
        prompt_len = None
    else:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager").eval().to(device)
        proc = AutoProcessor.from_pretrained(model_dir)
        message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
        text = proc.apply_chat_template(message, add_generation_prompt=True)
        inputs = proc(images=[[image]], text=[text], return_tensors="pt").to(device)
        prompt_len = inputs["input_ids"].shape[1]

        def run(n):
            with torch.no_grad():
                return model.generate(**inputs, do_sample=False, max_new_tokens=n, output_attentions=True,
                                      return_dict_in_generate=True)

        eos = model.generation_config.eos_token_id
        tokens = lambda out: _cut(out.sequences[0, prompt_len:].tolist(), eos)  # noqa: E731
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_mb()
    began = time.perf_counter()
    out = run(new)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"side": side, "seconds": round(seconds, 3), "rss_before_mb": round(before, 1),
              "peak_rss_mb": round(peak, 1), "peak_rss_delta_mb": round(peak - before, 1), "tokens": tokens(out),
              "prompt_tokens": prompt_len}
    if device == "cuda":
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _cut(ids: list[int], eos) -> list[int]:
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i + 1]
    return ids


def _spawn(side: str, model_dir: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--model-dir", model_dir, "--image", str(args.image),
           "--new", str(args.new), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(args) -> dict:
    """ONNX Runtime batched against the Hugging Face per-image loop, alternating rounds."""
    import numpy as np
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from attnvis.captioning.load import load_captioner
    from tests.captioning.tiny_vlms import make_llava

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48 + 4 * (i % 5), 56, 3), dtype=np.uint8) for i in range(args.images)]
    with tempfile.TemporaryDirectory(prefix="attnvis-bench-vlm-") as tmp:
        model_dir = str(make_llava(Path(tmp) / "llava", image=56, patch=7, hidden=64, layers=4, heads=8))
        began = time.perf_counter()
        cap = load_captioner(model_dir, backend="onnx", device="cpu")
        export_s = time.perf_counter() - began
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager").eval()
        proc = AutoProcessor.from_pretrained(model_dir)
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = proc.apply_chat_template(message, add_generation_prompt=True)
    eos = model.generation_config.eos_token_id

    def ours():
        return [c.token_ids.tolist() for c in cap.caption(images, prompt=PROMPT, max_new_tokens=args.new)]

    def theirs():
        out = []
        for image in images:
            inputs = proc(images=[[image]], text=[text], return_tensors="pt")
            with torch.no_grad():
                res = model.generate(**inputs, do_sample=False, max_new_tokens=args.new, output_attentions=True,
                                     return_dict_in_generate=True)
            n = inputs["input_ids"].shape[1]
            is_image = (inputs["input_ids"][0] == model.config.image_token_index).numpy()
            [np.stack([a[0, :, -1, :n][..., is_image].numpy() for a in step]) for step in res.attentions]
            out.append(_cut(res.sequences[0, n:].tolist(), eos))
        return out

    same = ours() == theirs()  # the warm-up pass of each
    rounds = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        theirs()
        t2 = time.perf_counter()
        rounds.append({"onnx_images_per_s": args.images / (t1 - t0), "hf_images_per_s": args.images / (t2 - t1)})
    for r in rounds:
        r["ratio"] = r["onnx_images_per_s"] / r["hf_images_per_s"]
    median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    return {"mode": "speed", "images": args.images, "new": args.new, "image_tokens": 64, "same_tokens": same,
            "model": "LLaVA 56-px images (64 image tokens), hidden 64, 8 heads (4 kv), 4 layers, random weights",
            "export_s": round(export_s, 1), "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "median_round": {k: round(v, 3) for k, v in median.items()},
            "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="memory", choices=["memory", "speed"])
    parser.add_argument("--image", type=int, default=336, help="memory: image side in pixels (7-px patches)")
    parser.add_argument("--new", type=int, default=8, help="tokens generated")
    parser.add_argument("--images", type=int, default=16, help="speed: images per pass")
    parser.add_argument("--rounds", type=int, default=3, help="speed: timed rounds")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--output", default=None, help="JSON file (default: benchmarks/results/vlm_{mode}.json)")
    parser.add_argument("--worker", default=None, choices=["attnvis", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model_dir, args.image, args.new, args.device)))
        return
    sys.path.insert(0, str(ROOT))
    output = Path(args.output or ROOT / "benchmarks" / "results" / f"vlm_{args.mode}.json")
    if args.mode == "speed":
        result = speed(args)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1))
        print(json.dumps(result["median_round"]), "same tokens:", result["same_tokens"])
        return
    from tests.captioning.tiny_vlms import make_llava

    with tempfile.TemporaryDirectory(prefix="attnvis-bench-vlm-") as tmp:
        model_dir = str(make_llava(Path(tmp) / "llava", image=args.image, patch=7, hidden=64, layers=4, heads=8))
        ours, theirs = _spawn("attnvis", model_dir, args), _spawn("hf", model_dir, args)
    result = {"mode": "memory", "image_tokens": (args.image // 7) ** 2, "prompt_tokens": theirs["prompt_tokens"], "new": args.new,
              "model": "LLaVA hidden 64, 8 heads (4 kv), 4 layers, random weights", "device": args.device,
              "machine": platform.processor() or platform.machine(), "attnvis": ours, "hf_output_attentions": theirs,
              "same_tokens": ours["tokens"] == theirs["tokens"],
              "peak_rss_ratio": round(ours["peak_rss_delta_mb"] / max(theirs["peak_rss_delta_mb"], 1e-9), 4)}
    if args.device == "cuda":
        result["cuda_peak_ratio"] = round(ours["cuda_peak_mb"] / theirs["cuda_peak_mb"], 4)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("attnvis", "hf_output_attentions")}))
    print(f"attnvis: +{ours['peak_rss_delta_mb']} MB peak RSS, {ours['seconds']} s; HF output_attentions: "
          f"+{theirs['peak_rss_delta_mb']} MB, {theirs['seconds']} s")


if __name__ == "__main__":
    main()
