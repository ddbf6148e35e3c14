"""Options every ``napari-medsam`` subcommand that runs a model shares."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from napari_medsam.core.windows import WINDOW_PRESETS, WindowChoice, training_window

#: ``--preset`` value that asks for each slice's own min..max.
MIN_MAX = "min-max"


def add_model_options(sub: argparse.ArgumentParser) -> None:
    """``--model``, ``--device`` and ``--dtype``."""
    sub.add_argument(
        "--model",
        default="lite-medsam",
        help="lite-medsam (bundled, offline; default), medsam, sam-vit-base/-large/-huge, "
        "a hub id, a Hugging Face folder or a .pth file",
    )
    sub.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    sub.add_argument("--dtype", default="auto", help="auto (default), float32, bfloat16 or float16")


def add_window_options(sub: argparse.ArgumentParser) -> None:
    """``--window LOW HIGH`` and ``--preset``; neither: MedSAM's training window for the modality."""
    sub.add_argument(
        "--window",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="intensity window, e.g. -160 240 (default: MedSAM's training window: CT soft tissue, "
        "MR and others 0.5-99.5 percentiles of non-zero voxels, 8-bit/RGB as they are)",
    )
    sub.add_argument(
        "--preset",
        choices=[*WINDOW_PRESETS, MIN_MAX],
        help="a CT window preset, or min-max for each slice's own range",
    )


def window_for(
    args: argparse.Namespace, volume: np.ndarray, geometry: Any | None, rgb: bool = False
) -> WindowChoice:
    """The window the options ask for, else :func:`~napari_medsam.core.windows.training_window`."""
    if args.window is not None and args.preset is not None:
        raise ValueError("give either --window or --preset, not both")
    if args.preset == MIN_MAX:
        return WindowChoice(None, "each slice's min..max (--preset min-max)")
    if args.preset is not None:
        return WindowChoice(WINDOW_PRESETS[args.preset], f"preset {args.preset}")
    if args.window is not None:
        return WindowChoice((args.window[0], args.window[1]), "--window")
    return training_window(volume, getattr(geometry, "modality", None), rgb=rgb)
