"""Options every ``napari-medsam`` subcommand that runs a model shares."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from napari_medsam.base.jobs import Progress, run_to_end
from napari_medsam.base.windows import WINDOW_PRESETS, WindowChoice, training_window
from napari_medsam.models import BACKENDS

#: ``--preset`` value that asks for each slice's own min..max.
MIN_MAX = "min-max"


def add_model_options(sub: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype`` and ``--backend``; the command calls :func:`fetch_model`
    after its own checks, before the model loads."""
    sub.add_argument(
        "--model",
        default="lite-medsam",
        help="lite-medsam (default; offline once its weights are here: installed, or downloaded on "
        "first use), medsam, sam-vit-base/-large/-huge, "
        "a hub id, a Hugging Face folder or a .pth file",
    )
    sub.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    sub.add_argument("--dtype", default="auto", help="auto (default), float32, bfloat16 or float16")
    sub.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="what runs the image encoder: auto (default: ONNX Runtime on the CPU for the families where "
        "it was measured faithful and faster, today none, so PyTorch), torch, onnxruntime (float32, CPU; "
        "exported once and cached; pip install 'napari-medsam[onnx]')",
    )


def add_window_options(sub: argparse.ArgumentParser) -> None:
    """``--window LOW HIGH`` or ``--preset``; neither: MedSAM's training window for the modality."""
    choice = sub.add_mutually_exclusive_group()
    choice.add_argument(
        "--window",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="intensity window, e.g. -160 240 (default: MedSAM's training window: CT soft tissue, "
        "MR and others 0.5-99.5 percentiles of voxels > 0, 8-bit/RGB as they are)",
    )
    choice.add_argument(
        "--preset",
        choices=[*WINDOW_PRESETS, MIN_MAX],
        help="a CT window preset, or min-max for each slice's own range",
    )


def window_for(
    args: argparse.Namespace, volume: np.ndarray, geometry: Any | None, rgb: bool = False
) -> WindowChoice:
    """The window the options ask for, else :func:`~napari_medsam.base.windows.training_window`."""
    if args.window is not None and args.preset is not None:
        raise ValueError("give either --window or --preset, not both")
    if args.preset == MIN_MAX:
        return WindowChoice(None, "each slice's min..max (--preset min-max)")
    if args.preset is not None:
        return WindowChoice(WINDOW_PRESETS[args.preset], f"preset {args.preset}")
    if args.window is not None:
        return WindowChoice((args.window[0], args.window[1]), "--window")
    return training_window(volume, getattr(geometry, "modality", None), rgb=rgb)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_cluster_options(sub: argparse.ArgumentParser) -> None:
    """``--workers N`` (a local cluster of processes) or ``--scheduler ADDRESS`` (an existing one)."""
    where = sub.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=positive_int,
        help="worker processes of a local dask cluster, one task thread each (default: the core count)",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="use an existing dask.distributed cluster, e.g. tcp://10.0.0.5:8786 (its workers need "
        "napari-medsam and the data at the same paths)",
    )


def add_cohort_options(sub: argparse.ArgumentParser) -> None:
    """What ``embed`` and ``batch`` share: the window, the model and where the tasks run."""
    add_window_options(sub)
    add_model_options(sub)
    add_cluster_options(sub)


def window_options(args: argparse.Namespace) -> argparse.Namespace:
    """The window options alone, for :func:`window_for` on a worker."""
    return argparse.Namespace(window=args.window, preset=args.preset)


def fetch_model(args: argparse.Namespace) -> None:
    """Download what ``--model`` needs (LiteMedSAM's checkpoint on first use), with progress on
    stderr. Commands call it once their arguments, inputs and outputs are checked: a bad argument
    never waits for a download."""
    from napari_medsam.models.loading import fetch_steps

    run_to_end(fetch_steps(args.model), _show_progress)


def _show_progress(progress: Progress) -> None:
    """A download's progress on stderr: one line, rewritten in place on a terminal."""
    done, total, message = progress
    if sys.stderr.isatty():
        print(f"\r\033[K{message}", end="\n" if done >= total else "", file=sys.stderr, flush=True)
    else:
        print(message, file=sys.stderr, flush=True)
