#!/usr/bin/env bash
# Set up .venv if needed, lint, and run the whole test suite (real LiteMedSAM weights included) in
# parallel: one pytest worker per core (at most 4: each holds models of its own), the cores shared
# out as PyTorch threads (more workers than cores measured slower: the suite is CPU-bound). The
# slowest tests are listed at the end.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow and not gui"` (the fast
# part, README) or `bash scripts/test.sh tests/test_predictor.py -x -n 0` (one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
cores=$(nproc)
workers=$(( cores < 4 ? cores : 4 ))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores / workers ))}"
.venv/bin/ruff check .
.venv/bin/python -m pytest -n "$workers" --dist worksteal --durations=15 "$@"
