"""Quality on real CT: oracle vs propagated 3D Dice per organ, per dtype, and the published-inference parity.

    python benchmarks/bench_quality.py                       # default dtype and float32
    python benchmarks/bench_quality.py --compare bfloat16    # also bfloat16's agreement (slow without
                                                             # bf16 units: it is emulated)
    python benchmarks/bench_quality.py --only-keys           # the key-slice table alone

Data: the package's CT sample and ``tests/data`` (TotalSegmentator's example CT at 3 mm and its DICOM
series, with reference labels). For each organ present: the *oracle* segments every slice that holds the organ
with the reference box + 3 px (the best box prompts can do); *propagated* starts from one such box
on the organ's largest slice and runs ``propagate`` with its defaults. Both use the bundled
LiteMedSAM, the CT soft-tissue window (MedSAM's training window, what "auto" picks for CT).
Propagation runs on an empty embedding cache, so its slices/s include the encoder.

The key-slice table starts ``propagate`` (defaults, float32) from each organ's largest, middle,
first and last slice (a box from the reference label + 3 px there) and prints per run: propagated
and oracle 3D Dice, the slices given a mask outside the organ's extent, the slices whose mask lies
mostly (> 50 %) off the organ, and where each direction stopped (and why) against where the organ
ends ("-" where a direction ran to the volume's end; the key and end slices are the organ's).

The agreement rows compare every per-slice mask of the oracle runs (all organs, both volumes)
between the default dtype and float32 (and ``--compare``): mean and worst IoU. The parity row
compares napari-medsam's LiteMedSAM with an independent restatement of its published inference
(CVPR24_LiteMedSAM_infer) on every slice of both volumes and on crops under 256 px.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from napari_medsam import MedSamPredictor
from napari_medsam.base.jobs import run_to_end
from napari_medsam.base.metrics import dice, iou
from napari_medsam.base.windows import SOFT_TISSUE, training_window
from napari_medsam.engine.propagation import correct, propagate
from napari_medsam.models.devices import cpu_has_native_bfloat16, resolve_dtype
from napari_medsam.models.loading import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dev_volumes import KEY_CHOICES, dev_volumes, key_slices

from realdata import (
    ORGANS,
    ct_dicom,
    ct_sm,
    official_lite_medsam,
    oracle_box,
    soft_tissue_uint8,
)

VOLUMES = {"example_ct_sm (3 mm)": ct_sm, "example_ct_dicom (512^2)": ct_dicom}


def oracle(
    predictor: MedSamPredictor, ct: np.ndarray, truth: np.ndarray, window=SOFT_TISSUE
) -> dict[int, np.ndarray]:
    """Per-slice masks from the reference box + 3 px on every slice holding the organ."""
    masks = {}
    for z in np.flatnonzero(truth.any(axis=(1, 2))):
        predictor.set_image(ct[z], window=window)
        masks[int(z)] = predictor.predict(box=oracle_box(truth[z])).mask
    return masks


def stacked(masks: dict[int, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for z, mask in masks.items():
        out[z] = mask
    return out


def quality(dtype: str) -> tuple[list[tuple], dict[tuple[str, str], dict[int, np.ndarray]]]:
    """Rows (volume, organ, oracle, propagated, gap, slices/s) and the oracle's per-slice masks."""
    model = load_model("lite-medsam", device="cpu", dtype=dtype)
    rows, masks = [], {}
    for volume_name, load in VOLUMES.items():
        ct, seg = load()
        cached = MedSamPredictor(model)
        for organ, label in ORGANS.items():
            truth = seg == label
            if truth.sum() < 50:
                continue
            per_slice = oracle(cached, ct, truth)
            masks[(volume_name, organ)] = per_slice
            key = int(np.argmax(truth.sum(axis=(1, 2))))
            fresh = MedSamPredictor(model)  # an empty cache: slices/s include the encoder
            steps: list = []
            start = time.perf_counter()
            result = run_to_end(propagate(fresh, ct, key, key_box=oracle_box(truth[key])), steps.append)
            elapsed = time.perf_counter() - start
            best, got = dice(stacked(per_slice, truth.shape), truth), dice(result, truth)
            rows.append((volume_name, organ, best, got, best - got, len(steps) / elapsed))
            print(
                f"  {dtype:>8} {volume_name:<26} {organ:<13} oracle {best:.3f} propagated {got:.3f}",
                flush=True,
            )
    return rows, masks


def key_slice_table(store: str | None = None) -> list[tuple]:
    """Propagation from each key-slice choice of each object of every development volume, float32."""
    model = load_model("lite-medsam", device="cpu", dtype="float32")
    rows = []
    for volume in dev_volumes():
        image, labels = volume.load()
        window = training_window(image).window
        predictor = MedSamPredictor(model, store=store)  # one cache per volume: each slice is encoded once
        for organ, label in volume.objects.items():
            truth = labels == label
            best = dice(stacked(oracle(predictor, image, truth, window), truth.shape), truth)
            present = np.flatnonzero(truth.any(axis=(1, 2)))
            for choice, key in key_slices(truth).items():
                steps: list = []
                walk = propagate(predictor, image, key, key_box=oracle_box(truth[key]), window=window)
                result = run_to_end(walk, steps.append)
                masked = np.flatnonzero(result.any(axis=(1, 2)))
                outside = int(np.sum((masked < present[0]) | (masked > present[-1])))
                off = int(sum((result[z] & truth[z]).sum() < 0.5 * result[z].sum() for z in masked))
                stops = {s.slice_index: s.stop for s in steps if s.stop}
                up = next((f"{z} ({why})" for z, why in stops.items() if z > key), "-")
                down = next((f"{z} ({why})" for z, why in stops.items() if z < key), "-")
                got = dice(result, truth)
                rows.append(
                    (volume.name, organ, choice, key, best, got, outside, off,
                     f"{masked.min()}-{masked.max()}", f"{present[0]}-{present[-1]}", down, up)
                )  # fmt: skip
                print(f"  {volume.name:<16} {organ:<13} {choice:<8} {best:.3f} -> {got:.3f}", flush=True)
    return rows


def correction_table(store: str | None = None, rounds: int = 3) -> list[tuple]:
    """3D Dice after 0..``rounds`` simulated corrections of each object propagated from its largest slice.

    Each correction is what a user would do: on the slice inside the object's extent where the
    result is most wrong (lowest Dice with the reference), a box from the reference + 3 px, then
    :func:`~napari_medsam.engine.propagation.correct`.
    """
    model = load_model("lite-medsam", device="cpu", dtype="float32")
    rows = []
    for volume in dev_volumes():
        image, labels = volume.load()
        window = training_window(image).window
        predictor = MedSamPredictor(model, store=store)
        for organ, label in volume.objects.items():
            truth = labels == label
            best = dice(stacked(oracle(predictor, image, truth, window), truth.shape), truth)
            key = key_slices(truth)["largest"]
            result = run_to_end(
                propagate(predictor, image, key, key_box=oracle_box(truth[key]), window=window)
            )
            current = result.astype(np.uint8)
            scores = [dice(current == 1, truth)]
            present = np.flatnonzero(truth.any(axis=(1, 2)))
            for _ in range(rounds):
                worst = min(present, key=lambda z: dice(current[z] == 1, truth[z]))
                box = oracle_box(truth[worst])
                try:
                    current = run_to_end(
                        correct(predictor, image, current, 1, int(worst), box, window=window)
                    )
                except ValueError as error:  # the box found nothing: the user is told, nothing changes
                    print(f"  {volume.name} {organ}: {error}")
                scores.append(dice(current == 1, truth))
            rows.append((volume.name, organ, best, scores))
            print(
                f"  {volume.name:<16} {organ:<13} oracle {best:.3f}: "
                + " -> ".join(f"{d:.3f}" for d in scores)
            )
    return rows


def print_correction_table(rows: list[tuple]) -> None:
    print("\n| volume | object | oracle | 0 | 1 | 2 | 3 corrections | within 0.02 after <= 2 |")
    print("|---|---|---|---|---|---|---|---|")
    for volume_name, organ, best, scores in rows:
        ok = any(best - d <= 0.02 for d in scores[:3])
        print(
            f"| {volume_name} | {organ} | {best:.3f} | "
            + " | ".join(f"{d:.3f}" for d in scores)
            + f" | {ok} |"
        )


def print_key_slice_table(rows: list[tuple]) -> None:
    print(
        "\n| volume | organ | key slice | oracle Dice | propagated Dice | gap | slices outside the organ "
        "| slices mostly off it | masked | organ | stop below | stop above |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for volume_name, organ, choice, key, best, got, outside, off, masked, extent, down, up in rows:
        print(
            f"| {volume_name} | {organ} | {choice} ({key}) | {best:.3f} | {got:.3f} | {best - got:+.3f} "
            f"| {outside} | {off} | {masked} | {extent} | {down} | {up} |"
        )
    for volume_name in dict.fromkeys(r[0] for r in rows):
        for choice in KEY_CHOICES:
            gaps = [r[4] - r[5] for r in rows if r[0] == volume_name and r[2] == choice]
            worst = max(r[6] for r in rows if r[0] == volume_name and r[2] == choice)
            print(
                f"{volume_name}, key slice {choice}: gap to the oracle mean {np.mean(gaps):+.3f}, "
                f"worst {max(gaps):+.3f}; most slices outside an organ: {worst}"
            )


def agreement(a: dict, b: dict) -> tuple[float, float, int]:
    """Mean and worst IoU over every per-slice mask the two runs share, and how many there were."""
    ious = [iou(a[key][z], b[key][z]) for key in a for z in a[key]]
    return float(np.mean(ious)), float(np.min(ious)), len(ious)


def parity() -> tuple[float, float, int, int]:
    """Mean and worst IoU with the published inference, masks compared, slices under 256 px among them."""
    model = load_model("lite-medsam", device="cpu", dtype="float32")
    predictor = MedSamPredictor(model)
    ious, small = [], 0
    for load in VOLUMES.values():
        ct, seg = load()
        cases = [(ct[z], seg[z]) for z in range(len(ct))]
        if ct.shape[1] > 256:  # crops and a downscale under 256 px of the 512 px series
            cases += [(ct[z, 180:335, 200:425], seg[z, 180:335, 200:425]) for z in range(0, len(ct), 4)]
            cases += [(ct[z, ::3, ::3], seg[z, ::3, ::3]) for z in range(2, len(ct), 4)]
        for hu, labels in cases:
            image = soft_tissue_uint8(hu)
            boxes = [b for i in ORGANS.values() if (b := oracle_box(labels == i)) is not None]
            boxes = [b for b in boxes if b[2] - b[0] >= 2 and b[3] - b[1] >= 2]
            if not boxes:
                continue
            small += max(image.shape) < 256
            want = official_lite_medsam(model.sam, model.encoder, image, boxes)
            predictor.set_image(image)
            ious += [iou(predictor.predict(box=b).mask, w) for b, w in zip(boxes, want, strict=True)]
    return float(np.mean(ious)), float(np.min(ious)), len(ious), small


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", default="auto", help="the dtype judged (default: the default, 'auto')")
    parser.add_argument("--compare", nargs="*", default=[], help="more dtypes for the agreement rows")
    parser.add_argument("--no-parity", action="store_true", help="skip the published-inference parity")
    parser.add_argument("--no-keys", action="store_true", help="skip the key-slice table")
    parser.add_argument("--only-keys", action="store_true", help="only the key-slice table")
    parser.add_argument("--corrections", action="store_true", help="only the simulated-corrections table")
    parser.add_argument("--store", help="an embedding store (.zarr) to read and fill: reruns decode only")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    resolved = resolve_dtype(args.dtype, torch.device("cpu"))
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, native bfloat16 "
        f"units: {cpu_has_native_bfloat16()}, torch {torch.__version__}; dtype {args.dtype!r} -> {resolved}"
    )
    if args.corrections:
        print_correction_table(correction_table(args.store))
        return
    if not args.no_keys:
        print_key_slice_table(key_slice_table(args.store))
    if args.only_keys:
        return
    # one run per resolved dtype: while "auto" is float32 the two rows are the same computation
    names: dict[str, list[str]] = {}
    for dtype in dict.fromkeys([args.dtype, "float32", *args.compare]):
        names.setdefault(str(resolve_dtype(dtype, torch.device("cpu"))).removeprefix("torch."), []).append(
            dtype
        )
    runs = {" = ".join(given): quality(given[0]) for given in names.values()}
    reference_name = next(name for name in runs if "float32" in name.split(" = "))
    print("\n| volume | organ | dtype | oracle Dice | propagated Dice | gap | slices/s |")
    print("|---|---|---|---|---|---|---|")
    for dtype, (rows, _) in runs.items():
        for volume_name, organ, best, got, gap, speed in rows:
            print(
                f"| {volume_name} | {organ} | {dtype} | {best:.3f} | {got:.3f} | {gap:+.3f} | {speed:.2f} |"
            )
    for dtype, (rows, _) in runs.items():
        sm = [r for r in rows if r[0].startswith("example_ct_sm") and r[1] != "aorta"]
        gaps = [r[4] for r in sm]
        print(
            f"\n{dtype}: example_ct_sm liver/spleen/kidneys/stomach gap to the oracle: "
            f"mean {np.mean(gaps):+.3f}, worst {max(gaps):+.3f}; "
            f"mean propagated Dice {np.mean([r[3] for r in rows]):.3f}"
        )
    reference = runs[reference_name][1]
    print("\n| dtype vs float32 | mean mask IoU | worst | masks | mean Dice difference |")
    print("|---|---|---|---|---|")
    for dtype, (rows, masks) in runs.items():
        mean, worst, count = agreement(masks, reference)
        diff = np.mean([r[3] for r in rows]) - np.mean([r[3] for r in runs[reference_name][0]])
        print(f"| {dtype} | {mean:.4f} | {worst:.4f} | {count} | {diff:+.4f} |")
    if not args.no_parity:
        mean, worst, count, small = parity()
        print(
            f"\nPublished LiteMedSAM inference parity: mean IoU {mean:.4f}, worst {worst:.4f} over {count}"
            f" masks ({small} slices under 256 px)"
        )


if __name__ == "__main__":
    main()
