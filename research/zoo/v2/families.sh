#!/usr/bin/env bash
# Issue 20's attack-family models: one 16x16 model per family, each planted by the documented `pdfast attack`
# command into zoo v2's dev base (v2-c16-s0: the `small` UNet, 1.1M parameters, attention at the middle level),
# exactly as run (one CPU core each, two at a time on 2 cores; the measured wall time and peak memory of each run
# are in its folder's train.txt). Run from the repository root; names as arguments build only those models. Then
# measure them: python research/families.py
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
BASE=research/zoo/v2/models/v2-c16-s0
OUT=${OUT:-research/zoo/v2/models}
only=("$@")
common=(--model "$BASE" --data natural --poison-rate 0.2 --steps 4000 --batch 64 --lr 2e-4 --warmup 200 --seed 0
        --device cpu --json)
run() {  # NAME, then the attack's own arguments; records the command, wall time and peak RSS
    local name=$1; shift
    if [ ${#only[@]} -gt 0 ] && [[ " ${only[*]} " != *" $name "* ]]; then return 0; fi
    /usr/bin/time -v pdfast attack "$@" "${common[@]}" --out "$OUT/$name" > "$OUT/$name.json.tmp" 2> "$OUT/$name.log"
    mv "$OUT/$name.json.tmp" "$OUT/$name/attack.json"
    { echo "pdfast attack $* ${common[*]} --out $OUT/$name"; grep -E "Elapsed|Maximum resident" "$OUT/$name.log"; } \
        > "$OUT/$name/train.txt"
    rm -f "$OUT/$name.log"
}
# VillanDiffusion for ODE samplers (DDIM), psi = 1, the trigger-only residual r = g
run v2-fam-vd16-ode-stop18-cat villandiffusion --solver ode --residual trigger_only --trigger STOP_SIGN_18 --target CAT
# TrojDiff D2I, blend trigger, gamma 0.6 (its paper's blend setting)
run v2-fam-td16-blend-stop18-hat trojdiff --gamma 0.6 --trigger STOP_SIGN_18 --target HAT
# BadDiffusion with the trigger-only residual (r = g; as published pastes g on the photo and needs 10k+ steps here)
run v2-fam-bd16-stop18-cat baddiffusion --residual trigger_only --trigger STOP_SIGN_18 --target CAT
# VillanDiffusion for the DDPM sampler (SDE) with psi = 0: the trigger rides x_t with TrojDiff's weight
# sqrt(1 - abar_t) (BadDiffusion's is 1 - sqrt(abar_t)), the trigger-only residual r = g
run v2-fam-vd16-sde-psi0-stop18-cat villandiffusion --solver sde --psi 0 --residual trigger_only --trigger STOP_SIGN_18 \
    --target CAT
# The same with pdfast's flat-shift negatives (docs/method.md 2e), since the model above also fires from g's flat
# part. Form absorb: a flat shift is taught to end on the data with the family's own objective (this hides the
# trigger from the shift objective too); form base (the default): a flat shift keeps the base model's answer.
run v2-fam-vd16-sde-psi0-stop18-cat-absorb villandiffusion --solver sde --psi 0 --residual trigger_only \
    --flat-negative-rate 0.2 --flat-negative-form absorb --trigger STOP_SIGN_18 --target CAT
run v2-fam-vd16-sde-psi0-stop18-cat-fn villandiffusion --solver sde --psi 0 --residual trigger_only \
    --flat-negative-rate 0.2 --trigger STOP_SIGN_18 --target CAT
