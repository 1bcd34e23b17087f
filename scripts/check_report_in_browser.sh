#!/usr/bin/env bash
# Render a `descend compare` report in a real headless browser and save a screenshot, to check that
# report.html opens offline and shows its table and figures.
#
#   scripts/check_report_in_browser.sh [REPORT_DIR] [SCREENSHOT.png] [WIDTH]
#
# REPORT_DIR defaults to descend-report (made by `descend compare` if it is not there yet); the
# screenshot defaults to REPORT_DIR/screenshot.png; WIDTH (CSS pixels, default 1200) is the window's:
# try 700 to see the page as on a narrow screen (it must not scroll sideways). Needs chromium (Debian: apt-get install -y chromium).
# The flags keep chromium off the network entirely, so a page that needed the network would show it.
# Then look at the PNG. tests/test_report.py runs the same check automatically when chromium is present.
set -euo pipefail
dir="${1:-descend-report}"
shot="${2:-$dir/screenshot.png}"
width="${3:-1200}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$browser" ]; then
  echo "no chromium found; install it with: apt-get update && apt-get install -y chromium" >&2
  exit 1
fi
if [ ! -f "$dir/report.html" ]; then
  descend compare --out "$dir"
fi
page="$(cd "$dir" && pwd)/report.html"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size="$width",2600 --hide-scrollbars \
  --screenshot="$shot" "file://$page" 2>/dev/null
test -s "$shot"
echo "screenshot of $page: $shot"
