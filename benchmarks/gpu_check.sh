#!/usr/bin/env bash
# One prepared GPU check, at most 9 minutes: kernel + engine tests on the real GPU, the native build's CUDA backend
# and its op tests, the engine with and without its fused ops, the engine sweep, and the README job end to end
# (`pdfast invert --steps 50` on the GPU). Logs and result files go to ${OUT:-benchmarks/results}.
#
#   bash benchmarks/device_wheels.sh        # here, once: the wheels the device image lacks (diffusers), into .whl/
#   bash benchmarks/gpu_check.sh            # there, with carry [".whl"]; OUT=benchmarks/results
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# Every stage runs under `timeout` inside one overall deadline, and a failed stage does not stop the next one: the
# exit status is that of the first failed stage. The sweep writes its table after every K, so a sweep cut short by
# its timeout still leaves the rows it finished.
set -euo pipefail

OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
DEADLINE=540          # seconds for the whole script (9 minutes: under the device tool's 10-minute call, with a margin)
START=$SECONDS
STATUS=0
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
# tests/conftest.py does os.environ.setdefault("TRITON_INTERPRET", "1"): an unset variable would turn the
# interpreter on. "0" keeps it off (the real GPU compiles the kernels) and is what triton reads as unset.
export TRITON_INTERPRET=0

# stage NAME MAX_SECONDS RESERVE_SECONDS CMD...: run CMD with a timeout of MAX_SECONDS, cut so that RESERVE_SECONDS
# stay for the stages after it; log to $OUT/NAME.log.
stage() {
  local name=$1 max=$2 reserve=$3
  shift 3
  local left=$(( DEADLINE - (SECONDS - START) - reserve ))
  local limit=$(( max < left ? max : left ))
  if (( limit < 10 )); then
    echo "== $name: skipped (no time left)" | tee "$OUT/$name.log"
    if (( STATUS == 0 )); then STATUS=124; fi
    return 0
  fi
  echo "== $name (timeout ${limit}s): $*" | tee "$OUT/$name.log"
  local t0=$SECONDS rc=0
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1 || rc=$?
  echo "== $name: rc=$rc in $(( SECONDS - t0 ))s" | tee -a "$OUT/$name.log"
  tail -n 25 "$OUT/$name.log"
  if (( rc != 0 && STATUS == 0 )); then STATUS=$rc; fi
  return 0
}

# the device image lacks diffusers: its wheels travel in .whl (bash benchmarks/device_wheels.sh here, carry [".whl"])
source benchmarks/device_env.sh >"$OUT/env-setup.log" 2>&1 || { cat "$OUT/env-setup.log"; exit 1; }
cat "$OUT/env-setup.log"
# Stage budgets (seconds): each stage's timeout, and what it leaves for the stages after it. Not yet timed on a GPU:
# the sums of the timeouts pass the deadline, so the reserves decide when a stage overruns.
stage nvidia-smi 15 480 nvidia-smi
stage env 20 470 python -c "import json, pdfast.envinfo as e; print(json.dumps(e.environment(), indent=1))"

stage tests 90 380 python -m pytest tests/test_kernels.py tests/test_engine.py -m "(gpu or not gpu) and not slow" -q -ra

# the optional native build with its CUDA backend (nvcc and a CUDA torch there), then the op tests on every backend
stage native 70 320 bash -c 'python -m pdfast.kernels.native_build --if-possible && python -m pytest tests/test_native.py -q -ra'

# the engine (compiled bf16, CUDA graphs) with its fused ops (Triton: the chain steps and, in the captured backward
# step, their row forms) and with PDFAST_KERNELS=torch, side by side in one process at K = 10, 50, 1000 on the
# google/ddpm-cifar10-32 architecture (35.7M parameters, 32x32), batch 40, budget 1 GiB as the sweep (so the steps are
# recomputed through the captured step); K = 1000 gets as many rounds as fit 40 s (at least one).
stage fused 130 200 python benchmarks/fused_engine.py --device cuda --arch cifar10 --ks 10,50,1000 --batch 40 \
  --budget-gib 1 --repeats 5 --max-seconds-per-k 40 --out-dir "$OUT"

# the sweep: reference vs engine, K = 10, 50, 1000 at batch 40 on the same architecture. Budget 1 GiB for states +
# kept activations, so the peak stays near the 3 GiB target at every K (the engine default would keep every step of
# a short chain: about 0.9 GiB of bf16 activations per step).
stage sweep 110 150 python benchmarks/sweep.py --device cuda --arch cifar10 --ks 10,50,1000 --batch 40 \
  --repeats 3 --adam-iters 2 --budget-gib 1 --out-dir "$OUT"

# the trigger the engine (compiled bf16) finds on the demo model against the reference's: L2 within 2%, same ASR
stage engines 60 80 python benchmarks/compare_engines.py --device cuda --steps 10

stage invert50 90 0 pdfast invert --steps 50 --device cuda --engine fast --out "$OUT/invert50" --json

# results written elsewhere by default (pytest-benchmark data, a sweep run with another --out-dir) are copied in
if [[ "$OUT" != "benchmarks/results" && -d benchmarks/results ]]; then
  cp -n benchmarks/results/*-"$(date +%F)"*.json benchmarks/results/*-"$(date +%F)"*.md "$OUT"/ 2>/dev/null || true
fi
echo "== gpu_check done in $(( SECONDS - START ))s, status $STATUS; results in $OUT"
ls -la "$OUT"
exit "$STATUS"
