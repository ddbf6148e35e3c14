"""The per-slice propagation study: which signals tell a slice inside an object from one past its end.

    python benchmarks/propagation_study.py --store /tmp/study.zarr      # encode once, then walk

For every development volume (``dev_volumes``), object and key slice (largest, middle, first, last)
a *free walk* starts from the reference box + 3 px on the key slice and goes to the volume's end in
both directions with ``propagate``'s prompt rules (previous mask's box + margin, connected pieces
touching the previous mask, grow-only refinement) and **no stop**. Each visited slice records the
candidate signals, whether the slice holds the object (inside its extent) and the mask's Dice with
the reference there. Because the prompt of a slice depends only on the slice before, a stop rule
applied to a free walk gives exactly the masks ``propagate`` gives with that rule: every rule variant
is judged on the recorded walks at no model cost. The walks are written to ``--walks`` (a pickle).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_volumes import KEY_CHOICES, dev_volumes, key_slices

from napari_medsam import MedSamPredictor
from napari_medsam.base.boxes import mask_box
from napari_medsam.base.metrics import dice, iou
from napari_medsam.base.windows import training_window
from napari_medsam.engine.propagation import PropagationRules, box_mask, overlap, prompt_candidates

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from realdata import oracle_box


@dataclass
class Visit:
    """One slice of a free walk: its mask, the signals and the truth there."""

    z: int
    mask: np.ndarray
    score: float
    inside: bool
    dice: float
    signals: dict[str, float] = field(default_factory=dict)


@dataclass
class Walk:
    """A free walk from one key slice of one object: the key visit and each direction's visits."""

    volume: str
    obj: str
    choice: str
    key: int
    extent: tuple[int, int]
    key_visit: Visit
    up: list[Visit]
    down: list[Visit]


def cells(mask: np.ndarray, geometry) -> np.ndarray:
    """The fraction of each 64 x 64 embedding cell that ``mask`` covers (LiteMedSAM's placement)."""
    import torch
    import torch.nn.functional as F

    new_h, new_w = geometry.resized
    size = geometry.input_size
    resized = F.interpolate(
        torch.from_numpy(mask.astype(np.float32))[None, None], size=(new_h, new_w), mode="area"
    )
    padded = F.pad(resized, (0, size - new_w, 0, size - new_h))
    return F.avg_pool2d(padded, size // 64)[0, 0].numpy()


def features(predictor: MedSamPredictor, mask: np.ndarray) -> np.ndarray | None:
    """The mean embedding (256,) over the cells the mask covers at least half of (None if none)."""
    embedding = predictor._embedding[0].float().numpy()  # (256, 64, 64)
    inside = cells(mask, predictor._geometry) >= 0.5
    if not inside.any():
        inside = cells(mask, predictor._geometry) > 0
        if not inside.any():
            return None
    return embedding[:, inside].mean(axis=1)


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return float("nan")
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def histogram(values: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values, bins=32, range=(0, 255))
    return counts / max(counts.sum(), 1)


def windowed(image: np.ndarray, window) -> np.ndarray:
    low, high = window
    return (np.clip(image.astype(np.float64), low, high) - low) / (high - low) * 255.0


def free_walk(predictor, image, truth, key, window, margin=0.05, max_refine=4, beyond=2) -> Walk:
    """Walk from ``key`` to ``beyond`` slices past the object's ends with propagate's prompt rules."""
    depth = image.shape[0]
    plane = image.shape[1:]
    rules = PropagationRules(margin=margin, max_refine=max_refine)
    grown = rules.grower(plane)

    predictor.set_image(image[key], window)
    key_box = oracle_box(truth[key])
    prediction = predictor.predict(box=key_box)
    first = np.asarray(prediction.mask, bool)
    key_feat = features(predictor, first)
    key_bg = features(predictor, box_mask(grown(first), plane) & ~first)
    key_hist = histogram(windowed(image[key], window)[first])
    key_area = int(first.sum())
    key_visit = Visit(key, first, float(prediction.score), bool(truth[key].any()), dice(first, truth[key]))
    present = np.flatnonzero(truth.any(axis=(1, 2)))
    walks = {}
    for direction in (1, -1):
        visits = []
        mask, best, prev_area, prev_score = first, float(prediction.score), key_area, float(prediction.score)
        z = key + direction
        while 0 <= z < depth and mask.any() and present[0] - beyond <= z <= present[-1] + beyond:
            predictor.set_image(image[z], window)
            new, box, score, _, raw_any = prompt_candidates(predictor, mask, grown, rules, None)[0]
            area = int(new.sum())
            s: dict[str, float] = {
                "score": score,
                "score_rel_best": score / best,
                "score_rel_prev": score / prev_score,
            }
            s["area_rel_key"] = area / key_area
            s["area_rel_prev"] = area / max(prev_area, 1)
            s["raw_any"] = float(raw_any)
            if area:
                s["iou_prev"] = iou(new, mask)
                s["overlap_prev"] = overlap(new, mask)
                c_new, c_old = np.argwhere(new).mean(0), np.argwhere(mask).mean(0)
                s["centroid_shift"] = float(np.linalg.norm(c_new - c_old) / np.sqrt(max(mask.sum(), 1)))
                b = mask_box(new)
                s["fill"] = area / max((b[2] - b[0] + 1) * (b[3] - b[1] + 1), 1)
                pb = box
                s["fill_prompt"] = area / max((pb[2] - pb[0] + 1) * (pb[3] - pb[1] + 1), 1)
                f = features(predictor, new)
                bg = features(predictor, box_mask(box, plane) & ~new)
                s["emb_key"] = cosine(f, key_feat)
                s["emb_key_bg"] = cosine(f, key_bg)
                s["emb_margin"] = s["emb_key"] - s["emb_key_bg"]
                s["emb_own_bg"] = cosine(f, bg)
                s["hist_key"] = float(np.minimum(histogram(windowed(image[z], window)[new]), key_hist).sum())
                # backward check: the previous slice predicted from this mask's box
                predictor.set_image(image[z - direction], window)
                back = np.asarray(predictor.predict(box=grown(new)).mask, bool)
                s["back_iou"] = iou(back, mask)
                predictor.set_image(image[z], window)
            inside = bool(present[0] <= z <= present[-1])
            visits.append(
                Visit(z, new, score, inside, dice(new, truth[z]) if area or truth[z].any() else 1.0, s)
            )
            if area:
                best = max(best, score)
                prev_area, prev_score = area, score
            mask = new
            z += direction
        walks[direction] = visits
    return key_visit, walks, (int(present[0]), int(present[-1]))


def oracle_masks(predictor, image, truth, window) -> np.ndarray:
    out = np.zeros(truth.shape, bool)
    for z in np.flatnonzero(truth.any(axis=(1, 2))):
        predictor.set_image(image[z], window)
        out[z] = predictor.predict(box=oracle_box(truth[z])).mask
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", help="embedding store (.zarr) to read and fill")
    parser.add_argument("--walks", default="walks.pkl", help="where to write the walks (pickle)")
    parser.add_argument(
        "--keys", nargs="*", default=["largest"], choices=KEY_CHOICES, help="key slices walked from"
    )
    parser.add_argument("--volumes", nargs="*", help="only these development volumes")
    args = parser.parse_args()
    from napari_medsam.models.loading import load_model

    model = load_model("lite-medsam", device="cpu", dtype="float32")
    predictor = MedSamPredictor(model, store=args.store)
    out = {"walks": [], "oracle": {}, "truth": {}}
    for volume in dev_volumes():
        if args.volumes and volume.name not in args.volumes:
            continue
        image, labels = volume.load()
        window = training_window(image).window
        for name, value in volume.objects.items():
            truth = labels == value
            oracle = oracle_masks(predictor, image, truth, window)
            out["oracle"][(volume.name, name)] = dice(oracle, truth)
            out["truth"][(volume.name, name)] = truth
            for choice, key in key_slices(truth).items():
                if choice not in args.keys:
                    continue
                key_visit, walks, extent = free_walk(predictor, image, truth, key, window)
                out["walks"].append(
                    Walk(volume.name, name, choice, key, extent, key_visit, walks[1], walks[-1])
                )
                print(
                    volume.name,
                    name,
                    choice,
                    key,
                    extent,
                    "oracle",
                    round(out["oracle"][(volume.name, name)], 3),
                    flush=True,
                )
    with open(args.walks, "wb") as f:
        pickle.dump(out, f)


if __name__ == "__main__":
    main()
