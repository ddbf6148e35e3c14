#!/usr/bin/env bash
# Set up .venv if needed, then segment a CT phantom offline with the bundled LiteMedSAM
# (prints Dice and timings, writes the mask). Arguments go to `napari-medsam demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/napari-medsam demo "$@"
