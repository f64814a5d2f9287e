#!/usr/bin/env bash
# GPU placement check (a few minutes on a machine with a GPU): the quickstart, and a
# LoRA run with more ranks than GPUs (gloo with CPU staging: compute on the shared
# GPUs, tensors through host memory), each compared with the same run on the CPU.
# Loss, test loss, accuracy, bytes, FLOPs and emulated time must agree within 1e-4
# relative; the last line is the verdict.
#
#   bench/gpu_check.sh [OUT_DIR]            # exit 0: PASS (or SKIP: no GPU), 1: FAIL
#
# Knobs: PYTHON, GPU_CHECK_CONFIG (default configs/quickstart.yaml), GPU_CHECK_ROUNDS
# (default: the config's), GPU_CHECK_TOL (1e-4), GPU_CHECK_FORCE=1 (run without a GPU:
# the "GPU" legs then run on the CPU too; only to test this script).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-$(mktemp -d /tmp/fedmpi-gpu-check.XXXXXX)}
CONFIG=${GPU_CHECK_CONFIG:-configs/quickstart.yaml}
TOL=${GPU_CHECK_TOL:-1e-4}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

ngpu=$($PY -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
gpu=cuda
if [ "$ngpu" -lt 1 ]; then
  if [ "${GPU_CHECK_FORCE:-0}" != 1 ]; then echo "gpu_check: SKIP: no GPU visible"; exit 0; fi
  gpu=cpu ngpu=1
fi
lora_ranks=$((ngpu + 2))  # more ranks than GPUs: two share one, so NCCL is impossible
rounds=()
[ -n "${GPU_CHECK_ROUNDS:-}" ] && rounds=(--set "federation.rounds=$GPU_CHECK_ROUNDS")

run() {  # run NAME RANKS DEVICE [--set ...]
  local name=$1 n=$2 dev=$3; shift 3
  local t0=$SECONDS
  if ! $PY -m fedmpi launch -n "$n" "$CONFIG" --set "output.dir=$OUT" --set "name=$name" \
       --set output.progress=false --set output.checkpoint=false --set "runtime.device=$dev" \
       "${rounds[@]}" "$@" >"$OUT/$name.log" 2>&1; then
    echo "gpu_check: FAIL: run $name exited non-zero; last lines of $OUT/$name.log:"; tail -n 15 "$OUT/$name.log"
    echo "gpu_check: FAIL ($name did not finish)"; exit 1
  fi
  echo "gpu_check: $name: $n ranks on $dev, $((SECONDS - t0)) s; $(grep -m1 'placement:' "$OUT/$name.log" | sed 's/^fedmpi: //')"
}

run quick-cpu 3 cpu
run quick-gpu 3 "$gpu"
run lora-cpu "$lora_ranks" cpu --set method.name=lora
run lora-gpu "$lora_ranks" "$gpu" --set method.name=lora

$PY - "$OUT" "$TOL" "$gpu" <<'EOF'
import json, math, sys
from pathlib import Path

out, tol, gpu = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
KEYS = ("loss", "test_loss", "accuracy", "bytes_up", "bytes_down", "client_flops", "server_flops",
        "emulated_seconds")
worst, problems = 0.0, []
for pair in ("quick", "lora"):
    rows = {d: [json.loads(x) for x in (out / f"{pair}-{d}" / "metrics.jsonl").read_text().splitlines()]
            for d in ("cpu", "gpu")}
    if len(rows["cpu"]) != len(rows["gpu"]):
        problems.append(f"{pair}: {len(rows['cpu'])} vs {len(rows['gpu'])} rounds")
        continue
    for a, b in zip(rows["cpu"], rows["gpu"]):
        for k in KEYS:
            x, y = a.get(k), b.get(k)
            if x is None and y is None:
                continue
            if x is None or y is None:
                problems.append(f"{pair} round {a['round']} {k}: {x} vs {y}")
                continue
            rel = abs(x - y) / max(abs(x), abs(y), 1e-12)
            worst = max(worst, rel)
            if rel > tol or math.isnan(rel):
                problems.append(f"{pair} round {a['round']} {k}: cpu {x!r} vs {gpu} {y!r} (rel {rel:.2e})")
    peaks = json.loads((out / f"{pair}-gpu" / "summary.json").read_text())["peak_memory_bytes"]
    log = (out / f"{pair}-gpu.log").read_text()
    if gpu == "cuda" and ("cuda:" not in log or min(peaks) <= 0):
        problems.append(f"{pair}: not every rank computed on a GPU (CUDA peak bytes per rank: {peaks})")
    if pair == "lora" and gpu == "cuda" and "CPU staging" not in log:
        problems.append("lora: more ranks than GPUs but no CPU staging in the placement")
for p in problems[:10]:
    print(f"gpu_check:   {p}")
verdict = "PASS" if not problems else f"FAIL ({len(problems)} mismatches)"
print(f"gpu_check: {verdict}: quickstart and LoRA with more ranks than GPUs on {gpu} match the CPU runs "
      f"(max relative difference {worst:.1e}, tolerance {tol:g}); runs in {out}")
sys.exit(0 if not problems else 1)
EOF
