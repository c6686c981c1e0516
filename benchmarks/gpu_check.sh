#!/usr/bin/env bash
# The GPU measurements of issue 16, as one prepared script for a lent GPU machine (≤ 8 minutes).
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh        # on the GPU machine (the device tool sets OUT)
#
# Before it: the machine's image has only the CPU onnxruntime and cannot download. Here, run
# ../shared/tools/ort-gpu-parts (it splits the onnxruntime-gpu wheel into .ortgpu/ort.part-NN),
# then carry ONE part per device call, in consecutive calls while the machine stays warm
# (`ls -la .ortgpu` is enough for all but the last); the last call carries the last part and runs
# this script, which reassembles and installs the wheel into /tmp/ortsite. Wheels in .whl/ (carried)
# are installed too (e.g. isal; without it PNGs are deflated by zlib, slower).
#
# Steps, each under its own time limit (seconds in the variables below):
#   1. install the carried onnxruntime-gpu; probe: card, driver, ORT version, the providers a session uses
#   2. attnvis bench --device cuda --preset vit-b: fp32 and fp16; cls, plain and the fair PyTorch
#      baseline at batch 1..256; all maps (copy-bound) at batch 1..32; torch.compile apart (it may fail)
#   3. attnvis batch on the GPU: 800 JPEGs of 640×480 made here, --save maps and --save images
#   4. results: $OUT/gpu-<card>-vit-b.{json,md}, gpu-<card>-batch.{json,md}, gpu-<card>-probe.json and
#      gpu_check.log, each with the card, driver, ORT version and providers (copy them to benchmarks/results/)
# Runs from the repository root without installing attnvis (PYTHONPATH), with the machine's python3.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-benchmarks/out}
PY=${PYTHON:-python3}
T_BENCH=${T_BENCH:-200} T_ALL=${T_ALL:-80} T_COMPILE=${T_COMPILE:-60} T_BATCH=${T_BATCH:-45}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ATTNVIS_CACHE=${ATTNVIS_CACHE:-/tmp/attnvis-gpu-check}
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/attnvis-numba}
say() { echo "gpu_check: $*" | tee -a "$LOG"; }

# ---- 1. onnxruntime-gpu from the carried parts, other carried wheels, then the probe
if compgen -G ".ortgpu/ort.part-*" >/dev/null && [ -f .ortgpu/NAME ]; then
  wheel="/tmp/$(cat .ortgpu/NAME)"
  if cat .ortgpu/ort.part-* > "$wheel" \
     && "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/ortsite "$wheel" >>"$LOG" 2>&1; then
    export PYTHONPATH="/tmp/ortsite:$PYTHONPATH"
    say "installed $(basename "$wheel") into /tmp/ortsite"
  else
    say "could not install the carried onnxruntime-gpu wheel (parts: $(echo .ortgpu/*))"
  fi
else
  say "no .ortgpu parts here: ONNX Runtime is the machine's own (CPU only?)"
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/whlsite .whl/*.whl >>"$LOG" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:/tmp/whlsite"
    say "installed carried wheels: $(echo .whl/*.whl)"
  fi
fi

"$PY" - "$OUT/probe.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, platform, subprocess, sys
import torch  # first: its CUDA 13 / cuDNN libraries are the ones ORT's CUDA provider loads
import numpy as np, onnxruntime as ort
from onnx import TensorProto, helper
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip().splitlines()[0].split(", ")
except (OSError, IndexError):
    smi = []
info = {"card": smi[0] if smi and smi[0] else (torch.cuda.get_device_name() if torch.cuda.is_available() else None),
        "driver": smi[1] if len(smi) > 1 else None, "memory": smi[2] if len(smi) > 2 else None,
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.cuda.is_available(),
        "onnxruntime": ort.__version__, "ort_package": ort.__file__, "ort_available": ort.get_available_providers()}
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
try:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    s.run(None, {"x": np.ones(1, np.float32)})
    info["ort_providers_used"] = s.get_providers()
except Exception as err:
    info["ort_providers_used"], info["ort_cuda_error"] = [], str(err).splitlines()[0]
try:
    import numba_cuda  # noqa: F401
    from numba import cuda
    info["numba_cuda"] = bool(cuda.is_available())
except Exception as err:
    info["numba_cuda"] = f"not usable: {err}"
info["ort_cuda"] = "CUDAExecutionProvider" in info["ort_providers_used"]
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
EOF
read -r card ort_cuda < <("$PY" -c "import json,re,sys; p=json.load(open(sys.argv[1])); \
print(re.sub(r'[^a-z0-9]+','-',(p['card'] or 'nogpu').lower().replace('nvidia','')).strip('-'), int(p['ort_cuda']))" \
  "$OUT/probe.json") || { card=unknown; ort_cuda=0; }
say "card=$card, ORT CUDA provider used: $ort_cuda"
[ "$ort_cuda" = 1 ] || say "WARNING: ORT runs no CUDA provider here; the ort-* variants will refuse --device cuda"
preset=${PRESET:-vit-b}
stem="$OUT/gpu-$card-$preset"

# ---- 2. attnvis bench, three runs sharing the export cache (the first one exports: allow it more time)
bench() {  # name, seconds, args...
  local name=$1 limit=$2; shift 2
  say "bench $name: $*"
  timeout "$limit" "$PY" -m attnvis bench --preset "$preset" --device cuda --no-plot --no-render \
    --json "$OUT/bench-$name.json" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || say "bench $name: rc=$rc$([ "$rc" -eq 124 ] && echo " (stopped after ${limit}s)")"
}
fast=ort-cls,ort-plain,ort-iobind-cls,ort-fp16-cls,ort-fp16-plain,ort-graph-fp16-cls,torch-pinned-cls
bench cls "$T_BENCH" --variants "$fast,torch-eager" --batch-sizes 1,8,32,64,128,256 --repeats 10 --warmup 3
bench all "$T_ALL" --variants ort-all,ort-fp16-all,torch-eager,torch-pinned --batch-sizes 1,8,32 --repeats 5 --warmup 2
bench compile "$T_COMPILE" --variants torch-compile-cls,torch-compile,ort-cls --batch-sizes 8,64 --repeats 5 --warmup 3

# ---- 3. the batch command on the GPU: 800 JPEGs of 640x480, --save maps then --save images
"$PY" - /tmp/gpu-check-jpegs <<'EOF' 2>&1 | tee -a "$LOG"
import sys, pathlib, cv2, numpy as np
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
base = cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
for i in range(800):  # smooth content (as photos are), each one different
    cv2.imwrite(str(out / f"img{i:04d}.jpg"), np.roll(base, (i * 7, i * 13), axis=(0, 1)), [cv2.IMWRITE_JPEG_QUALITY, 90])
print(f"made 800 JPEGs of 640x480 in {out}")
EOF
model=$(find "$ATTNVIS_CACHE/bench" -name fp16-cls.onnx 2>/dev/null | head -1)
[ -n "$model" ] || model=$(find "$ATTNVIS_CACHE/bench" -name cls.onnx 2>/dev/null | head -1)
rows="$OUT/batch-rows.jsonl"; : > "$rows"
for save in maps images; do
  [ -n "$model" ] || { say "no exported model in the bench cache: batch benchmark skipped"; break; }
  rm -rf "/tmp/gpu-check-out-$save"
  say "batch --save $save with $(basename "$model")"
  start=$(date +%s.%N)
  timeout "$T_BATCH" "$PY" -m attnvis batch /tmp/gpu-check-jpegs --model "$model" --device cuda --save "$save" \
    --batch-size 256 --output "/tmp/gpu-check-out-$save" --no-progress --no-gallery 2>&1 | tail -5 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  end=$(date +%s.%N)
  "$PY" -c "import json,sys; s=float(sys.argv[2])-float(sys.argv[1]); \
print(json.dumps({'save': sys.argv[3], 'images': 800, 'image_size': [480, 640], 'batch_size': 256, 'model': sys.argv[4], \
'seconds': s, 'images_per_s': 800 / s if int(sys.argv[5]) == 0 else None, 'rc': int(sys.argv[5]), \
'note': 'wall time of the whole command: start-up, session creation and numba compile included'}))" \
    "$start" "$end" "$save" "$(basename "$model")" "$rc" >> "$rows"
done

# ---- 4. results: card, driver, ORT version and providers in every file
"$PY" - "$OUT" "$stem" "$OUT/gpu-$card-batch" "$OUT/probe.json" "$OUT/gpu-$card-probe.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, pathlib, sys
out, stem, batch_stem, probe_path, probe_final = pathlib.Path(sys.argv[1]), *sys.argv[2:6]
probe = json.load(open(probe_path))
head = {k: probe.get(k) for k in ("card", "driver", "onnxruntime", "ort_providers_used", "torch", "numba_cuda")}
line = (f"card {head['card']}, driver {head['driver']}, onnxruntime {head['onnxruntime']}, "
        f"providers {', '.join(head['ort_providers_used']) or 'none'}, torch {head['torch']}")
runs, md = {}, [f"# attnvis GPU check: {stem.rsplit('/', 1)[-1]}", "", line, ""]
for name in ("cls", "all", "compile"):
    path = out / f"bench-{name}.json"
    if path.exists():
        runs[name] = json.loads(path.read_text())
        md += [f"## bench {name}", "", (out / f"bench-{name}.md").read_text(), ""]
        (out / f"bench-{name}.md").unlink(missing_ok=True)
        path.unlink()
    else:
        md += [f"## bench {name}", "", "no result (see gpu_check.log)", ""]
pathlib.Path(stem + ".json").write_text(json.dumps({"gpu_check": head, "runs": runs}, indent=2) + "\n")
pathlib.Path(stem + ".md").write_text("\n".join(md) + "\n")
rows = [json.loads(l) for l in (out / "batch-rows.jsonl").read_text().splitlines() if l.strip()]
(out / "batch-rows.jsonl").unlink()
pathlib.Path(batch_stem + ".json").write_text(json.dumps({"gpu_check": head, "rows": rows}, indent=2) + "\n")
table = ["| save | images | seconds | images/s | rc |", "| --- | ---: | ---: | ---: | ---: |"]
for r in rows:
    ips = "–" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}"
    table.append(f"| {r['save']} | {r['images']} | {r['seconds']:.1f} | {ips} | {r['rc']} |")
pathlib.Path(batch_stem + ".md").write_text("\n".join(["# attnvis batch on the GPU", "", line, "",
    "800 JPEGs of 640×480, batch 256; wall time of the whole command.", "", *table]) + "\n")
pathlib.Path(probe_path).rename(probe_final)
print("wrote", *sorted(p.name for p in out.iterdir()))
EOF
say "done; files in $OUT"
