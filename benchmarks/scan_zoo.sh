#!/usr/bin/env bash
# Throughput of `pdfast scan`: scan zoo models with 2 local workers (detect's default settings) and report models per
# hour, then screenshot the report (benchmarks/scan_screenshot.sh) where a Chromium is installed.
#
#   bash benchmarks/scan_zoo.sh                                   # the whole zoo v1 (research/zoo/models/*): hours
#   bash benchmarks/scan_zoo.sh research/zoo/models/bd16-heart-hat research/zoo/models/c16-s0   # a partial measure
#
# Environment: OUT (scan folder, made anew; default /tmp/pdfast-scan-zoo), WORKERS (default 2), SHOT (the screenshot
# PNG; default $OUT/report.png), SCAN_FLAGS (more `pdfast scan` options, e.g. "--steps 5"). Runs nice'd with one
# thread per worker (OMP_NUM_THREADS=1): the CPU is shared. Prints one Markdown line with the command and the number.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pdfast-scan-zoo}
WORKERS=${WORKERS:-2}
SHOT=${SHOT:-$OUT/report.png}
if [ "$#" -eq 0 ]; then set -- research/zoo/models/*/; fi
rm -rf "$OUT"
cmd=(pdfast scan "$@" --out "$OUT" --workers "$WORKERS" --device cpu --no-progress --json ${SCAN_FLAGS:-})
t0=$(date +%s.%N)
rc=0
OMP_NUM_THREADS=1 nice -n 5 "${cmd[@]}" > "$OUT.json" || rc=$?
t1=$(date +%s.%N)
python - "$OUT.json" "$t0" "$t1" "$rc" "$*" "$WORKERS" <<'PY'
import json, os, platform, sys
res, t0, t1, rc, models, workers = json.load(open(sys.argv[1])), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
secs = t1 - t0
tot = res["totals"]
print(f"| {res['ran']} models ({tot['backdoored']} backdoored, {tot['clean']} clean, {tot['failed']} failed), "
      f"{workers} workers, {platform.processor() or platform.machine()} {os.cpu_count()} cores | {secs:.0f} s wall "
      f"(process start included) | **{res['ran'] / secs * 3600:.0f} models/hour** | exit code {rc} |")
print("per model (s):", ", ".join(f"{r['name']} {r['seconds']:.0f}" for r in res["rows"]))
PY
if bash benchmarks/scan_screenshot.sh "$OUT/report.html" "$SHOT"; then echo "screenshot: $SHOT"; fi
