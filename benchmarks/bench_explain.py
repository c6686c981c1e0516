"""Explanations: the exported forward+backward graph on ONNX Runtime against the PyTorch ways, in one run.

    python benchmarks/bench_explain.py --json benchmarks/results/cpu-explain.json

Models: timm ``VisionTransformer`` of ViT-Ti/16, ViT-S/16, ViT-B/16 shape at 224 px (1000 classes,
seeded random weights) and a DINOv2-S/14-shaped one with a head at 518 px (N = 1 + 37² = 1,370).
Method: ``gae`` (forward, backward to every attention map, the row chain). Every variant computes
the same map for the same images (checked: ORT equals eager within 1e-4 of the map's maximum).

- ``ort-explain``: the ``attnvis export --explain gae`` graph, batch 16.
- ``torch-batched``: :func:`attnvis.explain.explain_pass` eagerly (autograd to the maps only), batch 16.
- ``originals``: the way the authors' code runs (Transformer-MM-Explainability's ``generate_relevance``):
  one image per call, hooks saving each map and its gradient, ``one_hot · logits`` ``.backward()``
  (weight gradients included), the N×N relevance product ``R += Ā·R``.
- ``ort-forward``: the model's plain forward graph (its own attention, no maps), batch 16.

Variants alternate within each round (A B C A B C …), after an untimed warm-up; each figure is the
median over the rounds. Peak RSS (at N = 1,370, batch 8) is measured in a fresh process per graph
(``VmHWM``): the explanation graph against the all-maps export (``attnvis export``, every
``attn_i`` as output) and the plain forward graph.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = {  # name: (embed_dim, heads, patch, image size)
    "vit-ti": (192, 3, 16, 224),
    "vit-s": (384, 6, 16, 224),
    "vit-b": (768, 12, 16, 224),
    "dinov2-s-518": (384, 6, 14, 518),
}
METHOD = "gae"


def build(shape: str):
    import torch
    from timm.models.vision_transformer import VisionTransformer

    dim, heads, patch, size = SHAPES[shape]
    torch.manual_seed(0)
    return VisionTransformer(img_size=size, patch_size=patch, embed_dim=dim, depth=12, num_heads=heads,
                             num_classes=1000).eval()


def source_of(shape: str):
    from attnvis.sources import module_source

    return module_source(build(shape))


def export_all(shape: str, folder: Path, with_maps: bool = False) -> dict[str, Path]:
    """The explanation graph, the plain forward graph (and the all-maps export), cached in ``folder``."""
    import torch

    from attnvis.export.explain import export_explain
    from attnvis.export.onnx import export_onnx, quiet_export

    source = source_of(shape)
    paths = {"explain": folder / f"{shape}-explain-{METHOD}.onnx", "forward": folder / f"{shape}-forward.onnx"}
    if with_maps:
        paths["maps"] = folder / f"{shape}-maps.onnx"
    if not paths["explain"].exists():
        export_explain(source, paths["explain"], [METHOD], validate=False)
    if not paths["forward"].exists():
        batch = torch.export.Dim("batch")
        with quiet_export():
            program = torch.onnx.export(source.model, source.example_inputs, dynamo=True, opset_version=20,
                                        input_names=["pixel_values"], output_names=["output"],
                                        dynamic_shapes=({0: batch},), external_data=False, verbose=False)
        program.save(str(paths["forward"]))
    if with_maps and not paths["maps"].exists():
        export_onnx(source, paths["maps"], validate=False)
    return paths


def originals_way(model, image, index: int | None = None):
    """One image, the authors' way: hooks save maps and gradients, backward of one_hot · logits, R += Ā·R."""
    import torch

    attns, grads, handles = [], [], []
    for block in model.blocks:
        block.attn.fused_attn = False

        def save(_m, _args, out):
            attns.append(out)
            out.register_hook(grads.append)

        handles.append(block.attn.attn_drop.register_forward_hook(save))
    try:
        output = model(image)
        if index is None:
            index = int(output.argmax(dim=-1))
        one_hot = torch.zeros_like(output)
        one_hot[0, index] = 1
        model.zero_grad()
        (one_hot * output).sum().backward(retain_graph=True)
    finally:
        for h in handles:
            h.remove()
    grads = grads[::-1]  # hooks fire in backward order
    n = attns[0].shape[-1]
    relevance = torch.eye(n)
    with torch.no_grad():
        for cam, grad in zip(attns, grads):
            cam = (grad[0] * cam[0]).clamp(min=0).mean(dim=0)
            relevance = relevance + cam @ relevance
    return relevance[0, 1:]


def _ort(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_shape(shape: str, folder: Path, batch: int, rounds: int, threads: int, originals: bool) -> dict:
    """Median seconds per call of each variant on ``shape``, interleaved."""
    import torch

    from attnvis.explain.trace import explain_pass

    torch.set_num_threads(threads)
    paths = export_all(shape, folder)
    source = source_of(shape)
    model = source.model
    x = torch.randn(batch, 3, *source.preprocess.size, generator=torch.Generator().manual_seed(1))
    target = torch.full((batch,), -1, dtype=torch.int64)
    explain, forward = _ort(paths["explain"], threads), _ort(paths["forward"], threads)
    feeds = {"pixel_values": x.numpy(), "target": target.numpy()}
    variants = {
        "ort-explain": lambda: explain.run(None, feeds),
        "torch-batched": lambda: explain_pass(model, (x,), target, [METHOD], source.tokens),
        "ort-forward": lambda: forward.run(None, {"pixel_values": x.numpy()}),
    }
    if originals:
        variants["originals"] = lambda: [originals_way(model, x[b:b + 1]) for b in range(batch)]
    got = explain.run(None, feeds)[1]
    want = explain_pass(model, (x,), target, [METHOD], source.tokens)[1][METHOD].numpy()
    check = float(np.abs(got - want).max() / np.abs(want).max())
    if originals:
        ref = originals_way(model, x[:1]).detach().numpy()
        check = max(check, float(np.abs(got[0] - ref).max() / np.abs(ref).max()))
    for call in variants.values():  # warm-up
        call()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            time.sleep(0.01)
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"shape": shape, "batch": batch, "max_rel_diff_vs_torch": check, "seconds_per_call": med,
            "images_per_s": {name: batch / s for name, s in med.items()}, "all_seconds": times}


def _rss_child(path: str, batch: int, explain: bool, threads: int) -> None:
    session = _ort(Path(path), threads)
    size = 518
    feeds = {"pixel_values": np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)}
    if explain:
        feeds["target"] = np.full(batch, -1, np.int64)
    session.run(None, feeds)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child would report its parent's peak
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mib": int(hwm.split()[1]) / 1024}))


def peak_rss(folder: Path, batch: int, threads: int) -> dict:
    """Peak RSS of one batch at N = 1,370 per graph, each in a fresh process."""
    paths = export_all("dinov2-s-518", folder, with_maps=True)
    out = {}
    for name, path in paths.items():
        cmd = [sys.executable, __file__, "--rss-child", str(path), "--batch", str(batch), "--threads", str(threads)]
        if name == "explain":
            cmd.append("--explain-child")
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mib"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "attnvis-bench-explain"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--shapes", default="vit-ti,vit-s,vit-b")
    parser.add_argument("--no-rss", action="store_true", help="skip the N = 1,370 memory comparison")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--explain-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return _rss_child(args.rss_child, args.batch, args.explain_child, args.threads)
    folder = Path(args.cache)
    folder.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "threads": args.threads, "load_avg": os.getloadavg()},
               "method": METHOD, "timings": [], "cuda": "not measured: no GPU on this machine"}
    for shape in args.shapes.split(","):
        row = time_shape(shape, folder, args.batch, args.rounds, args.threads, originals=True)
        ips, sec = row["images_per_s"], row["seconds_per_call"]
        row["ratios"] = {
            "ort_explain_vs_torch_batched": ips["ort-explain"] / ips["torch-batched"],
            "ort_explain_vs_originals": ips["ort-explain"] / ips["originals"],
            "explain_cost_vs_forward": sec["ort-explain"] / sec["ort-forward"],
        }
        results["timings"].append(row)
        print(shape, json.dumps({k: round(v, 2) for k, v in row["ratios"].items()}),
              json.dumps({k: round(v, 2) for k, v in ips.items()}), flush=True)
    if not args.no_rss:
        results["peak_rss_mib_n1370_batch8"] = peak_rss(folder, 8, args.threads)
        print("peak RSS MiB, N=1370, batch 8:", results["peak_rss_mib_n1370_batch8"], flush=True)
    results["machine"]["load_avg_after"] = os.getloadavg()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
