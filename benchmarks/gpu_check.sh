#!/usr/bin/env bash
# One prepared GPU benchmark: ViT-B/16-sized model (random weights, no download), every CUDA variant.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh        # on the GPU machine (the device tool sets OUT)
#
# What it does, by what the machine has (written to $OUT/probe.json first):
#   torch sees a GPU and ORT's CUDA provider really runs  -> all 7 variants on CUDA, vit-b, batches 1..128
#   torch sees a GPU, ORT has no CUDA provider            -> torch-eager + torchscript on CUDA only, and says
#                                                            that onnxruntime-gpu is needed for the ORT rows
#   no GPU                                                -> CPU fallback: vit-micro, batches 1,4, says so
# Results: $OUT/bench.json, bench.md (table), bench.png (plot), probe.json, bench.log.
# Runs from the repository root without installing attnvis (PYTHONPATH), with the machine's python3.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out}
PY=${PYTHON:-python3}
LIMIT_S=${LIMIT_S:-480}   # leave room inside a 10-minute device call
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ATTNVIS_CACHE=${ATTNVIS_CACHE:-/tmp/attnvis-gpu-check}

# ---- probe: what is usable here (ORT listing CUDA proves nothing: run a one-node graph on it)
"$PY" - >"$OUT/probe.json" <<'EOF'
import json, platform
import numpy as np, onnx, onnxruntime as ort, torch
from onnx import TensorProto, helper
info = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
        "ort_available": ort.get_available_providers(), "torch_cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
try:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    s.run(None, {"x": np.ones(1, np.float32)})
    info["ort_cuda"] = "CUDAExecutionProvider" in s.get_providers()
except Exception as err:
    info["ort_cuda"], info["ort_cuda_error"] = False, str(err).splitlines()[0]
print(json.dumps(info, indent=2))
EOF
cat "$OUT/probe.json"
mode=$("$PY" -c "import json,sys; p=json.load(open(sys.argv[1])); print('cuda' if p['torch_cuda'] and p['ort_cuda'] else 'torch-cuda' if p['torch_cuda'] else 'cpu')" "$OUT/probe.json") || mode=cpu
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$OUT/bench.log" 2>&1

case "$mode" in
  cuda)
    echo "gpu_check: CUDA in PyTorch and ONNX Runtime: every variant, vit-b" | tee -a "$OUT/bench.log"
    args=(--preset vit-b --device cuda --batch-sizes 1,8,32,128 --repeats 20 --warmup 3) ;;
  torch-cuda)
    echo "gpu_check: this onnxruntime has no usable CUDA provider (needs onnxruntime-gpu, too large to carry):" \
         "PyTorch variants only on CUDA, vit-b; the ORT rows are missing" | tee -a "$OUT/bench.log"
    args=(--preset vit-b --device cuda --batch-sizes 1,8,32,128 --repeats 20 --warmup 3 --variants torch-eager,torchscript) ;;
  *)
    echo "gpu_check: no CUDA device: falling back to CPU with a small config (vit-micro, batches 1,4);" \
         "these numbers say nothing about a GPU" | tee -a "$OUT/bench.log"
    args=(--preset vit-micro --device cpu --batch-sizes 1,4 --repeats 3 --warmup 1) ;;
esac

timeout "$LIMIT_S" "$PY" -m attnvis bench "${args[@]}" --json "$OUT/bench.json" 2>&1 | tee -a "$OUT/bench.log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 124 ] && echo "gpu_check: stopped after ${LIMIT_S}s; partial log in $OUT/bench.log" | tee -a "$OUT/bench.log"
echo "gpu_check: mode=$mode rc=$rc, files in $OUT" | tee -a "$OUT/bench.log"
exit "$rc"
