#!/usr/bin/env bash
# Render a store's report in headless Chromium and check that it renders, figures included.
#
#   scripts/check_report_chromium.sh STORE [SCREENSHOT.png]
#
# STORE/report/report.html must exist (make it with: conetool report --store STORE). The page is
# opened from a file:// URL with Chromium's networking features off, so it must render offline.
# Checks: the screenshot (default STORE/report/report-chromium.png, 1200 x 3000) is a PNG of the
# window's size and not blank; when the page has figures, it is also rendered once with its
# <img> tags removed, and the real screenshot must hold clearly more colours than that one (a
# figure that failed to decode shows as a small broken-image icon, adding almost none).
# Exit 0 on success, 1 when a check fails, 2 when Chromium or the report is missing.
#
# Chromium on Debian/Ubuntu: apt-get install -y chromium (about 115 packages, ~350 MB).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 STORE [SCREENSHOT.png]" >&2
    exit 2
fi
store=$1
html="$store/report/report.html"
shot=${2:-"$store/report/report-chromium.png"}
width=1200
height=3000

if [[ ! -f "$html" ]]; then
    echo "error: $html does not exist. Make it first: conetool report --store $store" >&2
    exit 2
fi
browser=""
for candidate in chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null 2>&1; then
        browser=$candidate
        break
    fi
done
if [[ -z "$browser" ]]; then
    echo "error: no chromium on PATH. Install it (Debian: apt-get install -y chromium) and rerun." >&2
    exit 2
fi
python=python3
[[ -x .venv/bin/python ]] && python=.venv/bin/python

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

render() {  # render HTML_FILE SCREENSHOT
    local url
    url="file://$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    rm -f "$2"
    if ! timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic \
        --no-first-run --disable-background-networking --disable-component-update --disable-sync \
        --hide-scrollbars --user-data-dir="$work/profile" --window-size="$width,$height" \
        --screenshot="$2" "$url" >"$work/log" 2>&1 || [[ ! -s "$2" ]]; then
        echo "error: $browser wrote no screenshot of $url:" >&2
        grep -v -e 'dbus' -e 'DBus' "$work/log" >&2 || true
        exit 1
    fi
}

started=$(date +%s)
render "$html" "$shot"
figures=$({ grep -o '<img ' "$html" || true; } | wc -l)
baseline=""
if [[ "$figures" -gt 0 ]]; then
    "$python" -c 'import re, sys; t = open(sys.argv[1], encoding="utf-8").read(); open(sys.argv[2], "w", encoding="utf-8").write(re.sub(r"<img [^>]*>", "", t))' \
        "$html" "$work/no-figures.html"
    baseline="$work/no-figures.png"
    render "$work/no-figures.html" "$baseline"
fi

"$python" - "$shot" "$width" "$height" "$figures" "$baseline" <<'PY'
import struct
import sys
import zlib

path, width, height, figures, baseline = sys.argv[1:6]


def colours(png: str) -> int:
    data = open(png, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"error: {png} is not a PNG")
    size = struct.unpack(">II", data[16:24])
    if size != (int(width), int(height)):
        sys.exit(f"error: {png} is {size[0]} x {size[1]}, expected {width} x {height}")
    try:
        from PIL import Image

        return len(Image.open(png).convert("RGB").getcolors(maxcolors=1 << 24) or [])
    except ImportError:  # no Pillow: the compressed size tells the same story, more roughly
        return len(zlib.compress(data)) // 100


count = colours(path)
if count < 200:
    sys.exit(f"error: {path} looks blank ({count} colours)")
line = f"ok: {path} ({width} x {height}, {count} colours"
if int(figures):
    plain = colours(baseline)
    if count < 1.5 * plain + 500:
        sys.exit(
            f"error: {path} has {count} colours, the page without its {figures} figures "
            f"{plain}: the figures did not render"
        )
    line += f"; {plain} without its {figures} figures"
print(line + ")")
PY
echo "rendered $html in $(( $(date +%s) - started )) s with $("$browser" --version 2>/dev/null | head -1)"
