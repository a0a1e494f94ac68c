#!/usr/bin/env bash
# Every CPU measurement behind the issue-3 results, on the embedded demo model, in two lanes (2 cores):
#   lane 1: the README job `pdfast invert --steps 50` timed from a cold cache, PureDiffusion vs Elijah,
#           and a K = 1000 iteration (peak RSS) to show it does not run out of memory;
#   lane 2: the inversion choices the paper leaves open, then the detection threshold on clean models.
# Clean models: `pdfast train --out $CLEAN_DIR/clean-sN --size 16 --arch demo --steps 3000 --batch 64 --seed N`
# (N = 0, folder `clean`, is the demo's own clean base, see pdfast/demo/make_demo.sh). Seeds 0 and 1 calibrate the
# threshold; seed 2 is held out and only verified.
set -euo pipefail
cd "$(dirname "$0")/.."
CLEAN_DIR=${CLEAN_DIR:-build/demo}
LOGS=${LOGS:-bench/results/logs}
mkdir -p "$LOGS"
export OMP_NUM_THREADS=1 PDFAST_CACHE_DIR=${PDFAST_CACHE_DIR:-$(mktemp -d)}

lane1() {
  /usr/bin/time -v pdfast invert --steps 50 --out "$LOGS/invert50" --json --no-progress \
      > "$LOGS/invert50.json" 2> "$LOGS/invert50.log"
  python bench/compare_methods.py --ks 10,50 > "$LOGS/compare_methods.log" 2>&1
  /usr/bin/time -v pdfast invert --steps 1000 --epochs 1 --refine-epochs 0 --scales analytic --out "$LOGS/invert1000" --json \
      --no-progress > "$LOGS/invert1000.json" 2> "$LOGS/invert1000.log"
}
lane2() {
  python bench/inversion_choices.py --steps 10 > "$LOGS/choices.log" 2>&1
  python bench/calibrate_detection.py --clean "$CLEAN_DIR/clean" "$CLEAN_DIR/clean-s1" \
      --backdoored pdfast/demo/model --write pdfast/detection_calibration.json > "$LOGS/calibrate.log" 2>&1
  python bench/calibrate_detection.py --verify "$CLEAN_DIR/clean-s2" pdfast/demo/model > "$LOGS/verify.log" 2>&1
  python bench/flat_shift.py --clean "$CLEAN_DIR/clean,$CLEAN_DIR/clean-s1" > "$LOGS/flat_shift.log" 2>&1
}
lane1 & p1=$!
lane2 & p2=$!
wait $p1; wait $p2
echo "done: logs in $LOGS"
