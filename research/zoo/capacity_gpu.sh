#!/usr/bin/env bash
# The capacity pilot of issue 8 on a GPU, in one device call of at most 9 minutes: does a wider UNet learn to fire
# from eps + g? Trains the arms of research/zoo/pilot/capacity-recipe.json in the recipe's order (each a clean base,
# then its TREE-CAT backdoor), measures each backdoor's ground truth over 64 samples, and writes the report.
#
#   bash benchmarks/device_wheels.sh                 # here, once: diffusers' wheels into .whl/ (the device image lacks it)
#   bash research/zoo/capacity_gpu.sh              # there: device run, carry [".whl"], timeout_s 600
#
# Arms already built in research/zoo/pilot/capacity/models (committed, e.g. the CPU-trained x1) are not trained again.
# Results in $OUT (default research/results/capacity-gpu): capacity.md and capacity.json (build.py --report), the
# training log, and each new arm's model folder as a tar.gz when it is under the device tool's 16 MB per file (the
# 16x16 x1 and x2 arms; x4's 20 MB and the cifar10 arm's 71 MB of fp16 weights do not come back). Copy capacity.md
# and capacity.json to research/results/zoo-capacity-gpu.{md,json} and commit them. An arm cut by the deadline leaves
# nothing; the report lists the arms that finished.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-research/results/capacity-gpu}"
mkdir -p "$OUT"
DEADLINE="${DEADLINE:-530}"          # seconds, under the device tool's 10-minute call with a margin for the report
RECIPE="${RECIPE:-research/zoo/pilot/capacity-recipe.json}"
MODELS="${MODELS:-research/zoo/pilot/capacity/models}"
DEVICE="${DEVICE:-cuda}"             # DEVICE=cpu with a small RECIPE: a dry run of this script here
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8
source benchmarks/device_env.sh >"$OUT/env-setup.log" 2>&1 || { cat "$OUT/env-setup.log"; exit 1; }
cat "$OUT/env-setup.log"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
before=$(ls "$MODELS" 2>/dev/null)
# the recipe's backdoors in its order (each builds its clean base first)
arms=$(python -c "import json, sys; print(' '.join(m['name'] for m in json.load(open(sys.argv[1]))['models'] if m['kind'] == 'baddiffusion'))" "$RECIPE")
for arm in $arms; do
  left=$(( DEADLINE - SECONDS - 20 ))
  if (( left < 60 )); then echo "== $arm: skipped (${left}s left)"; continue; fi
  echo "== $arm (timeout ${left}s)"
  timeout --signal=INT --kill-after=10 "$left" python research/zoo/build.py --recipe "$RECIPE" --models "$MODELS" \
    --device "$DEVICE" --only "$arm" >>"$OUT/train.log" 2>&1
  echo "== $arm: rc=$? at ${SECONDS}s"; grep "^\[zoo\]" "$OUT/train.log" | tail -n 4
done
python research/zoo/build.py --recipe "$RECIPE" --models "$MODELS" --report "$OUT/capacity.md"
for d in "$MODELS"/*; do
  name=$(basename "$d")
  if ! grep -qx "$name" <<<"$before" && [[ -f "$d/zoo.json" ]] && (( $(du -sm "$d" | cut -f1) < 15 )); then
    tar -czf "$OUT/$name.tar.gz" -C "$MODELS" "$name"
  fi
done
ls -la "$OUT"
