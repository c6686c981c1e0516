#!/usr/bin/env bash
# The GPU measurements of issues 16 and 29, as one prepared script for a lent GPU machine (≤ 8 minutes with the
# transfer of the ONNX Runtime GPU wheel: the script itself stops its steps at T_TOTAL seconds, 330 by default).
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
# Steps, each under its own time limit (seconds in the variables below) and all within T_TOTAL:
#   1. install the carried onnxruntime-gpu; probe: card, driver, ORT version, the providers a session uses
#   2. attnvis bench --device cuda --preset vit-b: fp32 and fp16; cls, plain and the fair PyTorch
#      baseline at batch 1..256 (it also exports the fp16-cls / cls graphs step 3 runs)
#   3. attnvis batch --device cuda, batch 64 (BATCH), fp16-cls and cls (fp32): --save maps on N_MAPS JPEGs
#      of 640×480 made here, --save images on N_IMAGES of them; each row keeps the summary's notes
#      (which decoder, renderer and map path ran, and why)
#   3b. the explanation graph: `attnvis export --explain gae` (fp32, and fp16 where the export allows it;
#      exported in the background from step 1b on, on the last 4 cores, while the GPU benches), run by `attnvis batch --method gae --save maps` where batch has --method, else the graph alone
#      through IO binding; skipped, with the reason in its row, where this tree has no `export --explain`
#   3c. with the time left: all maps (copy-bound) at batch 1..32; torch.compile (T_COMPILE, 0: not run)
#   4. results: $OUT/gpu-<card>-vit-b.{json,md}, gpu-<card>-batch.{json,md}, gpu-<card>-probe.json and
#      gpu_check.log, each with the card, driver, ORT version and providers; batch rows carry variant,
#      batch, save and images_per_s (copy them to benchmarks/results/)
# Runs from the repository root without installing attnvis (PYTHONPATH), with the machine's python3.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-benchmarks/out}
PY=${PYTHON:-python3}
T_TOTAL=${T_TOTAL:-330} T_BENCH=${T_BENCH:-110} T_ALL=${T_ALL:-45} T_COMPILE=${T_COMPILE:-0} T_BATCH=${T_BATCH:-40}
T_EXPORT=${T_EXPORT:-240}  # in the background, from the start (step 1b)
export BATCH=${BATCH:-64} N_MAPS=${N_MAPS:-2000} N_IMAGES=${N_IMAGES:-300}
START=$(date +%s)
WORK=/tmp/gpu-check-work  # each command's own output: $OUT keeps only the 6 result files (8 come back at most)
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_check.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ATTNVIS_CACHE=${ATTNVIS_CACHE:-/tmp/attnvis-gpu-check}
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/attnvis-numba}
say() { echo "gpu_check: $*" | tee -a "$LOG"; }
limit() {  # a step's seconds: min($1, what is left of T_TOTAL); fails (the step is skipped) under 10 s left
  local left=$(( START + T_TOTAL - $(date +%s) ))
  [ "$left" -ge 10 ] && [ "$1" -gt 0 ] || return 1
  echo $(( $1 < left ? $1 : left ))
}

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

# ---- 1b. the explanation graphs' export (CPU work: tracing forward and backward) runs in the background,
#          on the last 4 cores where taskset is there, while the bench uses the GPU; step 3b waits for it
HAS_EXPLAIN=0
"$PY" -m attnvis export --help 2>/dev/null | grep -q -- "--explain" && HAS_EXPLAIN=1
export_explain() {  # precision: writes /tmp/gpu-check-explain-gae[-fp16].onnx, its log and exit status
  local variant="explain-gae$([ "$1" = fp16 ] && echo -fp16)" pin=()
  local cores; cores=$(nproc)
  command -v taskset >/dev/null && [ "$cores" -ge 8 ] && pin=(taskset -c "$((cores - 4))-$((cores - 1))")
  # shellcheck disable=SC2046
  timeout "$T_EXPORT" "${pin[@]}" "$PY" -m attnvis export --model timm:vit_base_patch16_224 --random-weights \
    --explain gae $([ "$1" = fp16 ] && echo --fp16) --no-validate --output "/tmp/gpu-check-$variant.onnx" \
    > "$WORK/export-$variant.txt" 2>&1
  echo $? > "$WORK/export-$variant.rc"
}
EXPORTS=()
if [ "$HAS_EXPLAIN" = 1 ]; then
  say "exporting the gae explanation graph (timm:vit_base_patch16_224, random weights) in the background"
  export_explain fp32 & EXPORTS+=($!)
  export_explain fp16 & EXPORTS+=($!)
fi

# ---- 2. attnvis bench, three runs sharing the export cache (the first one exports: allow it more time)
bench() {  # name, seconds, args...
  local name=$1 limit; shift
  limit=$(limit "$1") || { say "bench $name: skipped (T_TOTAL spent, or its time is 0)"; return; }
  shift
  say "bench $name: $*"
  timeout "$limit" "$PY" -m attnvis bench --preset "$preset" --device cuda --no-plot --no-render \
    --json "$OUT/bench-$name.json" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || say "bench $name: rc=$rc$([ "$rc" -eq 124 ] && echo " (stopped after ${limit}s)")"
}
fast=ort-cls,ort-plain,ort-iobind-cls,ort-fp16-cls,ort-fp16-plain,ort-graph-fp16-cls,torch-pinned-cls
bench cls "$T_BENCH" --variants "$fast,torch-eager" --batch-sizes 1,32,64,128,256 --repeats 10 --warmup 3

# ---- 3. attnvis batch --device cuda: JPEGs of 640x480 made here, batch $BATCH, the fp16 and fp32 CLS graphs,
#         --save maps ($N_MAPS images) and --save images (the first $N_IMAGES: 24 PNGs an image)
"$PY" - /tmp/gpu-check-jpegs "$N_MAPS" <<'EOF' 2>&1 | tee -a "$LOG"
import sys, pathlib, cv2, numpy as np
out, n = pathlib.Path(sys.argv[1]), int(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
base = cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
for i in range(n):  # smooth content (as photos are), each one different
    cv2.imwrite(str(out / f"img{i:05d}.jpg"), np.roll(base, (i * 7, i * 13), axis=(0, 1)), [cv2.IMWRITE_JPEG_QUALITY, 90])
print(f"made {n} JPEGs of 640x480 in {out}")
EOF
rm -rf /tmp/gpu-check-jpegs-few && mkdir -p /tmp/gpu-check-jpegs-few
find /tmp/gpu-check-jpegs -name '*.jpg' | sort | head -n "$N_IMAGES" | xargs -r ln -t /tmp/gpu-check-jpegs-few
rows="$OUT/batch-rows.jsonl"; : > "$rows"

skipped_row() {  # variant, reason
  "$PY" -c 'import json, sys; print(json.dumps({"variant": sys.argv[1], "batch": int(sys.argv[2]), "save": None,
"images_per_s": None, "skipped": sys.argv[3]}))' "$1" "$BATCH" "$2" >> "$rows"
  say "$1: skipped: $2"
}

run_batch() {  # variant, model, save, input folder, images, extra flags...
  local variant=$1 model=$2 save=$3 inputs=$4 images=$5; shift 5
  local out="/tmp/gpu-check-out-$variant-$save" text="$WORK/batch-$variant-$save.txt" t start end rc
  t=$(limit "$T_BATCH") || { skipped_row "$variant" "--save $save: the script's time is spent"; return; }
  rm -rf "$out"
  say "batch $variant --save $save: $images images, batch $BATCH, $(basename "$model") $*"
  start=$(date +%s.%N)
  timeout "$t" "$PY" -m attnvis batch "$inputs" --model "$model" --device cuda --save "$save" --batch-size "$BATCH" \
    --output "$out" --no-progress --no-gallery "$@" > "$text" 2>&1
  rc=$?
  end=$(date +%s.%N)
  tail -8 "$text" | tee -a "$LOG"
  "$PY" - "$rows" "$variant" "$save" "$images" "$rc" "$start" "$end" "$text" "$(basename "$model")" "$BATCH" <<'EOF'
import json, re, sys
rows, variant, save, images, rc, start, end, text, model, batch = sys.argv[1:11]
out = open(text, errors="replace").read()
m = re.search(r"(\d+) done, \d+ skipped \(already complete\), (\d+) failed of \d+ images in ([\d.]+) s "
              r"\(([\d.]+) images/s, ([\d.]+) cores busy", out)
row = {"variant": variant, "batch": int(batch), "save": save, "images": int(images), "model": model, "rc": int(rc),
       "images_per_s": float(m.group(4)) if m and int(rc) == 0 else None,  # the summary's: images / processing time
       "seconds": float(m.group(3)) if m else None, "failed": int(m.group(2)) if m else None,
       "cores_busy": float(m.group(5)) if m else None, "wall_seconds": round(float(end) - float(start), 2),
       "notes": [line for line in out.splitlines() if line.startswith(("model:", "decode:", "render:", "maps:", "batch:"))],
       "error": None if int(rc) == 0 else f"rc={rc}: " + (out.strip().splitlines() or ["no output"])[-1],
       "note": "images_per_s: images over the run's processing time (first decode to last manifest line); "
               "wall_seconds adds the start-up (session, kernels)"}
open(rows, "a").write(json.dumps(row) + "\n")
EOF
}

for variant in fp16-cls cls; do
  model=$(find "$ATTNVIS_CACHE/bench" -name "$variant.onnx" 2>/dev/null | head -1)
  if [ -z "$model" ]; then
    skipped_row "$variant" "no $variant.onnx in the bench cache (step 2 did not export it)"
    continue
  fi
  run_batch "$variant" "$model" maps /tmp/gpu-check-jpegs "$N_MAPS"
  run_batch "$variant" "$model" images /tmp/gpu-check-jpegs-few "$N_IMAGES"
done

# ---- 3b. the explanation graph (gae) from `attnvis export --explain gae` (step 1b), fp32 and fp16, batch $BATCH
if [ "$HAS_EXPLAIN" != 1 ]; then
  skipped_row explain-gae "this attnvis has no 'attnvis export --explain': the explanation graph is not in this tree"
else
  [ "${#EXPORTS[@]}" -gt 0 ] && { say "waiting for the explanation graphs' export"; wait "${EXPORTS[@]}"; }
  for precision in fp32 fp16; do
    variant="explain-gae$([ "$precision" = fp16 ] && echo -fp16)"
    model="/tmp/gpu-check-$variant.onnx"
    rc=$(cat "$WORK/export-$variant.rc" 2>/dev/null || echo "?")
    tail -3 "$WORK/export-$variant.txt" 2>/dev/null | tee -a "$LOG"
    if [ "$rc" != 0 ] || [ ! -f "$model" ]; then
      skipped_row "$variant" "the export failed (rc=$rc$([ "$rc" = 124 ] && echo ", stopped after ${T_EXPORT}s")): $(tail -1 "$WORK/export-$variant.txt" 2>/dev/null)"
      continue
    fi
    if "$PY" -m attnvis batch --help 2>/dev/null | grep -q -- "--method"; then
      run_batch "$variant" "$model" maps /tmp/gpu-check-jpegs "$N_MAPS" --method gae
      continue
    fi
    t=$(limit "$T_BATCH") || { skipped_row "$variant" "the script's time is spent"; continue; }
    say "$variant: this 'attnvis batch' has no --method: the graph alone, batch $BATCH, through IO binding"
    timeout "$t" "$PY" - "$rows" "$variant" "$model" "$BATCH" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys, time
import torch  # noqa: F401 - its CUDA libraries first (see the probe)
import numpy as np
from attnvis.runtime import OrtSession
rows, variant, model, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
session = OrtSession(model, device="cuda", io_binding=True)  # relevance rows and logits: one slab, one copy per batch
size = session.metadata.preprocess.size
x = np.random.default_rng(0).standard_normal((batch, 3, *size), dtype=np.float32)
inputs = [-np.ones(batch, np.int64) if name == "target" else x for name in session.input_names]  # target: top-1
for _ in range(3):
    session.run(*inputs)
times = []
for _ in range(15):
    start = time.perf_counter()
    session.run(*inputs)
    times.append(time.perf_counter() - start)
median = float(np.median(times))
row = {"variant": variant, "batch": batch, "save": None, "images_per_s": batch / median, "median_ms": 1000 * median,
       "providers": session.providers, "note": "the explanation graph alone: a host batch in, relevance rows out"}
open(rows, "a").write(json.dumps(row) + "\n")
print(json.dumps(row))
EOF
  done
fi

# ---- 3c. the rest of the bench, with the time left
bench all "$T_ALL" --variants ort-all,ort-fp16-all,torch-eager,torch-pinned --batch-sizes 1,8,32 --repeats 5 --warmup 2
bench compile "$T_COMPILE" --variants torch-compile-cls,torch-compile,ort-cls --batch-sizes 8,64 --repeats 5 --warmup 3

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
table = ["| variant | save | batch | images | images/s | wall s | cores busy | notes |",
         "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
for r in rows:
    ips = "–" if r.get("images_per_s") is None else f"{r['images_per_s']:.0f}"
    notes = r.get("error") or "; ".join(r.get("notes") or []) or r.get("skipped") or r.get("note") or ""
    table.append(f"| {r['variant']} | {r.get('save') or '–'} | {r['batch']} | {r.get('images', '–')} | {ips} | "
                 f"{r.get('wall_seconds', '–')} | {r.get('cores_busy', '–')} | {notes} |")
pathlib.Path(batch_stem + ".md").write_text("\n".join(["# attnvis batch on the GPU", "", line, "",
    "JPEGs of 640×480; images/s over the run's processing time (the summary's), wall s with start-up.", "",
    *table]) + "\n")
pathlib.Path(probe_path).rename(probe_final)
print("wrote", *sorted(p.name for p in out.iterdir()))
EOF
say "done; files in $OUT"
