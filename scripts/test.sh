#!/usr/bin/env bash
# Set up .venv if needed, lint, and run the whole test suite (real LiteMedSAM weights included); the
# slowest tests are listed at the end.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/test_predictor.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/python -m pytest --durations=15 "$@"
