#!/usr/bin/env bash
# Screenshot a scan's report.html in headless Chromium (the page is self-contained: no network needed).
#
#   bash benchmarks/scan_screenshot.sh SCAN_DIR/report.html OUT.png [WIDTH] [HEIGHT]
#
# Uses the first of chromium, chromium-browser, google-chrome on PATH (Debian: apt-get install chromium; Playwright's
# own download of a browser needs its CDN). Exit code 1 with one line when none is found.
set -euo pipefail
html=$(realpath "$1")
png=$(realpath -m "$2")
width=${3:-1500}
height=${4:-1000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "no Chromium found: install one (Debian: apt-get install chromium) to screenshot $html" >&2
  exit 1
fi
mkdir -p "$(dirname "$png")"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --window-size="$width,$height" --screenshot="$png" "file://$html" 2>/dev/null
test -s "$png"
