#!/usr/bin/env bash
# How the embedded demo model was made: pdfast's own train and attack commands, with their seeds.
# Run from the repository root; takes about an hour on 2 CPU cores (minutes on a GPU with --device cuda).
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
B=${BUILD:-build/demo}
# 1. a clean 16x16 DDPM (637k parameters) on pdfast's procedural data set
pdfast train --out "$B/clean" --size 16 --arch demo --steps 3000 --batch 64 --seed 0 --device cpu --json
# 2. the BadDiffusion backdoor STOP_SIGN_18 -> HAT (METHOD.md section 2)
pdfast attack baddiffusion --model "$B/clean" --trigger STOP_SIGN_18 --target HAT --poison-rate 0.2 \
    --steps 3000 --batch 64 --lr 3e-4 --warmup 200 --seed 0 --out "$B/backdoored" --device cpu --json
# 3. ship it and measure it (ASR and uniformity of the ground-truth trigger, clean uniformity)
rm -rf pdfast/demo/model && cp -r "$B/backdoored" pdfast/demo/model
pdfast evaluate --model pdfast/demo/model --n 16 --seed 0 --json > pdfast/demo/RESULTS.json
