"""3D editing as a user does it, on every labelled object of every development volume.

    python benchmarks/bench_interactive.py --store /tmp/dev.zarr          # everything
    python benchmarks/bench_interactive.py --store /tmp/dev.zarr --volumes ct_sm --no-edits

For each object (``dev_volumes``; LiteMedSAM float32, MedSAM's training window, defaults):

- **oracle**: the reference box + 3 px on every slice that holds the object (the best box prompts
  can do), with the predictor's defaults (the zoom of small objects included), and the official
  whole-slice procedure (``zoom=False``) beside it;
- **one box**: the reference box + 3 px on the object's largest slice, propagated with the defaults
  (``--keys`` adds the middle, first and last slice): 3D Dice, its gap to the oracle, slices given
  a mask beyond the object's extent, and whether the walk's review list names every slice with
  Dice < 0.7 or beyond the object (and holds at most a quarter of the object's slices);
- **editing**: up to three edits from the one-box result, each the one that fixes most wrong
  voxels: End here at the object's end where the mask runs past it (the end with more voxels past
  it), else a box (reference + 3 px) on the slice inside the object where the Dice is lowest among
  those the box's own mask would improve (none: the user is done); 3D Dice after each, and whether
  an edit lowered it;
- **single corrections**: from the one-box result, one box (reference + 3 px) on the object's
  first, last and middle slice: the change in 3D Dice, and the most any other slice with Dice
  >= 0.9 lost.

Edits go through :class:`~napari_medsam.engine.edits.ObjectEditor`, what the widget and the CLI
use. An embedding store (``--store``) makes reruns decoder-only.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dev_volumes import KEY_CHOICES, dev_volumes, key_slices

from napari_medsam import MedSamPredictor
from napari_medsam.base.jobs import run_to_end
from napari_medsam.base.label_policy import AFTER, BEFORE
from napari_medsam.base.metrics import dice
from napari_medsam.base.windows import training_window
from napari_medsam.engine.edits import ObjectEditor
from napari_medsam.models.loading import load_model
from realdata import oracle_box

#: A slice the review list must name: its Dice is below this (or it lies beyond the object).
REVIEW_DICE = 0.7
#: A slice counted as good before a single correction (it must not lose more than LOSS_BOUND).
GOOD_DICE = 0.9
LOSS_BOUND = 0.02


@dataclass
class Row:
    volume: str
    obj: str
    oracle: float
    official: float
    one_box: dict[str, tuple[float, int]] = field(default_factory=dict)  # key choice -> (Dice, beyond)
    review: tuple[int, int, int] = (0, 0, 0)  # (must be listed, listed of those, list length)
    slices: int = 0
    edits: list[tuple[str, float]] = field(default_factory=list)  # (what, 3D Dice after)
    singles: dict[str, tuple[float, float, int]] = field(
        default_factory=dict
    )  # where -> (dDice, loss, changed)


def oracle(predictor: MedSamPredictor, image, truth, window, zoom: bool | None) -> np.ndarray:
    """The 3D mask of the reference box + 3 px on every slice holding the object."""
    out = np.zeros(truth.shape, dtype=bool)
    for z in np.flatnonzero(truth.any(axis=(1, 2))):
        predictor.set_image(image[z], window)
        out[z] = predictor.predict(box=oracle_box(truth[z]), zoom=zoom).mask
    return out


def beyond(mask: np.ndarray, truth: np.ndarray) -> int:
    """Slices given a mask outside the object's extent."""
    present = np.flatnonzero(truth.any(axis=(1, 2)))
    masked = np.flatnonzero(mask.any(axis=(1, 2)))
    return int(np.sum((masked < present[0]) | (masked > present[-1])))


def slice_dice(mask: np.ndarray, truth: np.ndarray, z: int) -> float:
    return dice(mask[z], truth[z])


def next_edit(
    current: np.ndarray, truth: np.ndarray, boxed: np.ndarray
) -> tuple[str, int, str | None] | None:
    """The edit that fixes most wrong voxels: ("end", z, side), ("box", z, None), or None when no edit
    would: End here where the mask runs past an end (the end with more voxels past it), else a box on
    the slice with the lowest Dice among those where the box's own mask (``boxed``) is better."""
    present = np.flatnonzero(truth.any(axis=(1, 2)))
    below = int(current[: present[0]].sum())
    above = int(current[present[-1] + 1 :].sum())
    if below or above:
        return ("end", int(present[0]), BEFORE) if below >= above else ("end", int(present[-1]), AFTER)
    fixable = [z for z in present if slice_dice(boxed, truth, z) > slice_dice(current, truth, z) + 0.01]
    if not fixable:
        return None
    return "box", int(min(fixable, key=lambda z: slice_dice(current, truth, z))), None


def measure(volume, predictor: MedSamPredictor, args) -> list[Row]:
    image, labels = volume.load()
    window = training_window(image).window
    rows = []
    for obj, label in volume.objects.items():
        if args.objects and obj not in args.objects:
            continue
        truth = labels == label
        present = np.flatnonzero(truth.any(axis=(1, 2)))
        boxed = oracle(predictor, image, truth, window, None)
        row = Row(volume.name, obj, dice(boxed, truth), float("nan"))
        if args.official:
            row.official = dice(oracle(predictor, image, truth, window, False), truth)
        row.slices = len(present)
        keys = key_slices(truth)
        start = None
        for choice in KEY_CHOICES if args.keys else ("largest",):
            editor = ObjectEditor(predictor, image, window=window)
            key = keys[choice]
            walk = run_to_end(
                editor.propagate(np.zeros(truth.shape, np.uint8), 1, key, oracle_box(truth[key]))
            )
            result = walk.labels == 1
            row.one_box[choice] = (dice(result, truth), beyond(result, truth))
            if choice == "largest":
                start = (editor, walk)
                must = {int(z) for z in np.flatnonzero(result.any(axis=(1, 2)) | truth.any(axis=(1, 2)))
                        if dice(result[z], truth[z]) < REVIEW_DICE or not truth[z].any()}  # fmt: skip
                listed = set(walk.review)
                row.review = (len(must), len(must & listed), len(listed))
        editor, walk = start
        if not args.no_edits:
            current, state = walk.labels, walk.edits
            for _ in range(3):
                edit = next_edit(current == 1, truth, boxed)
                if edit is None:  # every slice is as good as a box makes it: the user is done
                    break
                what, z, side = edit
                if what == "end":
                    current, state = editor.end_here(current, 1, z, side, state)
                else:
                    try:
                        done = run_to_end(editor.correct(current, 1, z, oracle_box(truth[z]), state))
                    except ValueError as error:  # the box found nothing: nothing changes
                        print(f"  {volume.name} {obj}: {error}")
                        row.edits.append((f"box {z} (nothing)", dice(current == 1, truth)))
                        continue
                    current, state = done.labels, done.edits
                row.edits.append(
                    (f"{what} {z}{'' if side is None else ' ' + side}", dice(current == 1, truth))
                )
            for where in ("first", "last", "middle"):
                z = keys[where]
                before = walk.labels == 1
                done = run_to_end(editor.correct(walk.labels, 1, z, oracle_box(truth[z]), walk.edits))
                after = done.labels == 1
                losses = [
                    slice_dice(before, truth, s) - slice_dice(after, truth, s)
                    for s in present
                    if s != z and slice_dice(before, truth, s) >= GOOD_DICE
                ]
                row.singles[where] = (
                    dice(after, truth) - dice(before, truth),
                    max(losses, default=0.0),
                    len(done.changed),
                )
        rows.append(row)
        print(report_line(row), flush=True)
    return rows


def report_line(row: Row) -> str:
    one = " ".join(f"{c} {d:.3f}/{b}" for c, (d, b) in row.one_box.items())
    edits = " -> ".join(f"{d:.3f} ({w})" for w, d in row.edits)
    singles = " ".join(f"{w} {dd:+.3f}/{loss:.3f}/{n}" for w, (dd, loss, n) in row.singles.items())
    return (
        f"  {row.volume:<18} {row.obj:<12} oracle {row.oracle:.3f} official {row.official:.3f} | {one} | "
        f"review {row.review[1]}/{row.review[0]} in {row.review[2]} of {row.slices} | {edits} | {singles}"
    )


def print_tables(rows: list[Row]) -> None:
    print(
        "\n| volume | object | oracle | official | one box (largest) | gap | beyond "
        "| review: needed / listed / length |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        d, b = r.one_box["largest"]
        print(
            f"| {r.volume} | {r.obj} | {r.oracle:.3f} | {r.official:.3f} | {d:.3f} | {r.oracle - d:+.3f} "
            f"| {b} | {r.review[0]} / {r.review[1]} / {r.review[2]} of {r.slices} |"
        )
    for name in dict.fromkeys(r.volume for r in rows):
        gaps = [r.oracle - r.one_box["largest"][0] for r in rows if r.volume == name]
        worst_beyond = max(r.one_box["largest"][1] for r in rows if r.volume == name)
        print(f"{name}: mean gap {np.mean(gaps):+.3f}, worst {max(gaps):+.3f}, most beyond {worst_beyond}")
    if any(len(r.one_box) > 1 for r in rows):
        print("\n| volume | object | " + " | ".join(KEY_CHOICES) + " |")
        print("|---|---|" + "---|" * len(KEY_CHOICES))
        for r in rows:
            print(f"| {r.volume} | {r.obj} | " + " | ".join(
                f"{r.one_box[c][0]:.3f} ({r.oracle - r.one_box[c][0]:+.3f}, {r.one_box[c][1]} beyond)"
                for c in KEY_CHOICES) + " |")  # fmt: skip
    if any(r.edits for r in rows):
        print("\n| volume | object | oracle | 0 | edit 1 | edit 2 | edit 3 | <= 0.02 by edit 2 | lowered |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            scores = [r.one_box["largest"][0]] + [d for _, d in r.edits]
            ok = any(r.oracle - d <= 0.02 for d in scores[:3])
            lowered = any(b < a - 1e-4 for a, b in itertools.pairwise(scores))
            cells = " | ".join(f"{d:.3f} ({w})" for w, d in r.edits)
            row = f"| {r.volume} | {r.obj} | {r.oracle:.3f} | {scores[0]:.3f} | {cells} | {ok} | {lowered} |"
            print(row)
        print(
            "\n| volume | object | box on first slice: dDice / worst loss / slices changed | last | middle |"
        )
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r.volume} | {r.obj} | " + " | ".join(
                f"{dd:+.3f} / {loss:.3f} / {n}" for dd, loss, n in r.singles.values()) + " |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", help="an embedding store (.zarr) to read and fill: reruns decode only")
    parser.add_argument("--volumes", nargs="*", help="only these development volumes")
    parser.add_argument("--objects", nargs="*", help="only these objects")
    parser.add_argument("--keys", action="store_true", help="one box on the middle, first and last slice too")
    parser.add_argument("--no-edits", action="store_true", help="skip the editing protocol")
    parser.add_argument("--official", action="store_true", help="also the official whole-slice oracle")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads (1 on a machine shared with other work: oversubscribed threads spin)",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    model = load_model("lite-medsam", device="cpu", dtype="float32")
    start, rows = time.perf_counter(), []
    for volume in dev_volumes(set(args.volumes) if args.volumes else None):
        rows += measure(volume, MedSamPredictor(model, store=args.store), args)
    print_tables(rows)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
