#!/usr/bin/env bash
# Set up .venv if needed, then open napari on the shipped abdominal CT with the MedSAM widget docked
# and its box and click layers ready. Without a display, run the headless demo instead: segment the
# liver offline with the bundled LiteMedSAM and print Dice against the reference label and timings
# (arguments go to `napari-medsam demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    exec .venv/bin/python scripts/demo_viewer.py
fi
echo "demo.sh: no display, running the headless demo (napari-medsam demo)" >&2
exec .venv/bin/napari-medsam demo "$@"
