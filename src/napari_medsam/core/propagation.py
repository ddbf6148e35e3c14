"""From one segmented slice to a 3D object: propagation, and segmenting given boxes slice by slice.

Qt-free. :func:`propagate` and :func:`segment_boxes` are generators in the stardist-napari style:
they yield a :class:`SliceStep` per slice (progress, cancellable by not iterating further) and
*return* the 3D boolean mask; :func:`~napari_medsam.core.jobs.run_to_end` drives one synchronously.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_medsam.core.boxes import BoxXYXY, box_union, expand_box, mask_box, normalise_box
from napari_medsam.core.jobs import relay, run_to_end
from napari_medsam.core.metrics import iou
from napari_medsam.core.predictor import SlicePredictor
from napari_medsam.core.prefetch import Lookahead
from napari_medsam.core.slicing import check_axis, take_slice
from napari_medsam.core.windows import AUTO, WindowArg, resolve_window

logger = logging.getLogger(__name__)

#: Whether propagation feeds the previous slice's low-resolution logits back (``mask_input``) by
#: family. MedSAM and LiteMedSAM were trained on boxes only. SAM is untested here (no SAM weights
#: offline), so it stays off until measured.
PREVIOUS_LOGITS_DEFAULT: dict[str, bool] = {"medsam": False, "lite-medsam": False, "sam": False}
#: The default pixel margin of a propagated box, as a fraction of the slice's longer side.
MARGIN_OF_LONGER_SIDE = 0.025


@dataclass(frozen=True)
class SliceStep:
    """Progress after one slice: ``done`` of at most ``total`` slices visited.

    ``mask`` is the slice's mask (None when the slice ended a direction), ``box`` the prompt used,
    ``stop`` why a direction ended there ("empty", "small", "low score", "moved", "agrees"), else None, and
    ``score`` the model's predicted IoU (None for a key mask given as such).
    """

    slice_index: int
    done: int
    total: int
    area: int
    mask: np.ndarray | None
    box: BoxXYXY | None
    stop: str | None = None
    score: float | None = None

    @property
    def message(self) -> str:
        """One line for a status bar."""
        if self.stop == "empty":
            return f"slice {self.slice_index}: nothing found, stopping this direction"
        if self.stop == "small":
            return f"slice {self.slice_index}: mask too small ({self.area} px), stopping"
        if self.stop == "low score":
            return f"slice {self.slice_index}: low predicted IoU, stopping"
        if self.stop == "moved":
            return f"slice {self.slice_index}: the mask left the object of the slice before, stopping"
        if self.stop == "agrees":
            return f"slice {self.slice_index}: agrees with the object as it was, stopping"
        return f"slice {self.slice_index}: {self.area} px"


def interpolate_boxes(key_boxes: Mapping[int, Sequence[float]]) -> dict[int, BoxXYXY]:
    """Boxes for every slice from the first to the last key slice, linear between key slices.

    Key slices keep their own box (normalised so that x0 <= x1 and y0 <= y1).
    """
    if not key_boxes:
        raise ValueError("interpolate_boxes needs at least one key box")
    keys = sorted(int(k) for k in key_boxes)
    boxes = {k: normalise_box(key_boxes[k]) for k in keys}
    out: dict[int, BoxXYXY] = {keys[0]: boxes[keys[0]]}
    for a, b in itertools.pairwise(keys):
        start, stop = np.asarray(boxes[a]), np.asarray(boxes[b])
        for z in range(a + 1, b + 1):
            t = (z - a) / (b - a)
            out[z] = tuple(float(v) for v in (1.0 - t) * start + t * stop)  # type: ignore[assignment]
    return out


def propagate(
    predictor: SlicePredictor,
    volume: Any,
    key_slice: int,
    key_box: Sequence[float] | None = None,
    key_mask: np.ndarray | None = None,
    *,
    key_score: float | None = None,
    axis: int = 0,
    window: WindowArg = AUTO,
    margin: float = 0.05,
    margin_pixels: float | None = None,
    max_refine: int = 4,
    min_area_fraction: float = 0.1,
    min_score: float | None = None,
    score_drop: float | None = 0.8,
    min_overlap: float | None = 0.5,
    max_slices: int | None = None,
    use_previous_logits: bool | None = None,
    agree_with: np.ndarray | None = None,
    agree: float = 0.9,
) -> Generator[SliceStep, None, np.ndarray]:
    """Segment one object through a volume, starting from a key slice.

    The key slice is segmented with ``key_box`` (or taken from ``key_mask``, whose predicted IoU
    may come as ``key_score``). Then, walking away from it in both directions, each slice is
    segmented by these rules, each judged by what the model and the image say on that slice
    (measured on the shared real CT with LiteMedSAM, key slice = each organ's largest, middle,
    first and last slice, both directions; ``benchmarks/bench_quality.py`` prints the outcome):

    1. **Prompt: the previous mask's box plus a margin** of ``max(margin * side, margin_pixels)``
       per side (:func:`~napari_medsam.core.boxes.expand_box`). ``margin_pixels`` defaults to
       2.5 % of the slice's longer side: the +3 px of MedSAM's training boxes on a 122 px slice,
       the same distance in the model's input on any grid. The larger of the two, not their sum:
       a sum grows the box faster than the organ and the model fills it (leaks into neighbours).
    2. **Only what the previous slice touched**: of the new mask, only the connected pieces that
       overlap the previous mask are kept. A piece that does not touch it is another structure
       that came into the box; keeping it would widen the next box onto it. With rule 4's trim,
       this cut the CT's slices whose mask lay mostly off the organ from 17 to 5 (24 runs, ~600
       slices; the liver's lowest 3 slices had been mostly off the liver).
    3. **Grow-only refinement**: the new mask's box plus the margin is joined to the prompt; if
       that changed the box, the slice is predicted again, at most ``max_refine`` times. The box
       grows where the organ continues past it, but never shrinks within a slice: the models
       under-segment slightly from a box, and re-prompting with the mask's own box feeds that
       back. Shrinking happens from one slice to the next (rule 1), so the prompt follows an
       organ that ends. Measured and not done: also trying the shrunk box and keeping whichever
       mask the model scores higher changed 3D Dice by less than 0.004 on every run; also trying
       a wider box (+10 %, at least twice the margin) that way took the spleen from its 27 px
       first slice to Dice 0.95 (0.03 without), but the stomach from its first slice then went
       onto a neighbouring structure for 19 slices, predicted IoUs 0.86-0.93 (also with a 0.02 score
       gain required): a drift no stop rule saw.
    4. **Stops**: a direction ends at

       - an empty mask ("empty"), or one that no longer overlaps the previous mask ("moved":
         overlap ``|new & previous| / min(|new|, |previous|)`` below ``min_overlap``; two
         cross-sections of one organ a slice apart overlap: on the CT >= 0.59, median 0.97; the
         masks that had jumped to another structure: 0.14-0.56);
       - a mask smaller than ``min_area_fraction`` of the key mask ("small");
       - a predicted IoU below ``min_score`` (if given) or below ``score_drop`` times the best
         the object has had so far, both directions together ("low score"). Past an organ's
         end the model still outlines something, with a lower predicted IoU: on the CT 0.60-0.71
         past the kidneys' ends against 0.89-0.95 on them (ratio 0.64-0.75); inside organs the
         ratio stayed >= 0.81 but for the scan's edge and a stomach mask leaking into bowel;
         on a CT phantom 0.93-0.97 on the organ, 0.69-0.79 past it;
       - the volume's end, or ``max_slices`` slices;
       - with ``agree_with`` (a boolean mask of the volume's shape: the object as it was), the
         first slice whose new mask has IoU >= ``agree`` with it ("agrees"; :func:`correct`).

       The slice that stopped a direction is left out. When both directions are done, slices at
       the far end of the first one that score below ``score_drop`` times the best of the whole
       object are dropped too: a key slice at an organ's tip scores low itself, so the first
       direction's reference was too lenient (the left kidney's last slice as key: 3 slices past
       the organ without this, none with it).

    Dropped after measuring (they separated no better than the predicted IoU, or stopped inside
    organs): the intensity distribution inside the mask (of the model's input) against the key
    object's or the previous slice's (histogram overlap down to 0.43 inside organs: small and
    textured masks, stomach contents; 0.49-0.60 on the first slice past an organ; the mask's
    median outside the previous mask's 5-95 % range fired on the first slice past each kidney,
    where the rules above already stop, and on 4 slices inside organs); consecutive
    masks' IoU and centroid shift relative to size (inside organs down to 0.37 and up to 0.48);
    the area ratio between slices (0.52-1.94 inside, 0.45-1.72 past the end).

    With ``use_previous_logits`` the previous low-resolution logits go in as ``mask_input``
    (default per family, :data:`PREVIOUS_LOGITS_DEFAULT`). ``window`` is passed to ``set_image``
    for every slice: ``"auto"`` is MedSAM's training window for the volume
    (:func:`~napari_medsam.core.windows.training_window`), None each slice's own min..max.
    Yields a :class:`SliceStep` per slice; returns a boolean mask of the volume's shape.
    """
    shape = tuple(np.shape(volume))
    if len(shape) != 3:
        raise ValueError(f"volume must be 3D, got shape {shape}")
    axis = check_axis(axis, 3)
    depth = shape[axis]
    key_slice = int(key_slice)
    if not 0 <= key_slice < depth:
        raise ValueError(f"key_slice {key_slice} is outside 0..{depth - 1} along axis {axis}")
    if (key_box is None) == (key_mask is None):
        raise ValueError("give exactly one of key_box and key_mask")
    if not 0.0 <= min_area_fraction <= 1.0:
        raise ValueError(f"min_area_fraction must be in [0, 1], got {min_area_fraction}")
    if min_overlap is not None and not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in [0, 1] or None, got {min_overlap}")
    if agree_with is not None and np.shape(agree_with) != shape:
        raise ValueError(f"agree_with has shape {np.shape(agree_with)}, the volume {shape}")
    old = None if agree_with is None else np.moveaxis(np.asarray(agree_with, dtype=bool), axis, 0)
    if max_slices is not None and max_slices < 0:
        raise ValueError(f"max_slices must be >= 0 or None, got {max_slices}")
    if margin < 0 or (margin_pixels is not None and margin_pixels < 0) or max_refine < 0:
        raise ValueError("margin, margin_pixels and max_refine must be >= 0")
    if use_previous_logits is None:
        use_previous_logits = PREVIOUS_LOGITS_DEFAULT.get(str(predictor.family), False)
    window = resolve_window(window, volume)
    plane = tuple(s for i, s in enumerate(shape) if i != axis)
    pad = MARGIN_OF_LONGER_SIDE * max(plane) if margin_pixels is None else float(margin_pixels)
    limit = depth if max_slices is None else max_slices
    total = 1 + min(depth - 1 - key_slice, limit) + min(key_slice, limit)

    result = np.zeros(shape, dtype=bool)
    view = np.moveaxis(result, axis, 0)
    logits, score = None, key_score
    if key_mask is not None:
        first = np.asarray(key_mask, dtype=bool)
        if first.shape != plane:
            raise ValueError(f"key_mask has shape {first.shape}, slices have shape {plane}")
        box = mask_box(first)
    else:
        box = normalise_box(key_box)  # type: ignore[arg-type]
        predictor.set_image(take_slice(volume, key_slice, axis), window)
        prediction = predictor.predict(box=box)
        first, logits = np.asarray(prediction.mask, dtype=bool), prediction.logits
        score = float(prediction.score)
    key_area = int(first.sum())
    done = 1
    if key_area == 0:
        yield SliceStep(key_slice, done, done, 0, None, box, "empty", score)
        return result
    view[key_slice] = first
    yield SliceStep(key_slice, done, total, key_area, first, box, None, score)

    def grown(mask: np.ndarray) -> BoxXYXY:
        return expand_box(mask_box(mask), plane, margin, pad)  # type: ignore[arg-type]

    best = score  # the object's best predicted IoU so far, both directions
    scores: dict[int, float] = {}  # predicted IoU of each propagated slice kept
    with Lookahead(predictor, volume, axis, window) as ahead:  # the next slice encodes while this one decodes
        for direction in (1, -1):
            mask, previous_logits = first, logits
            z = key_slice + direction
            while 0 <= z < depth and abs(z - key_slice) <= limit:
                box = grown(mask)  # rule 1
                predictor.set_image(take_slice(volume, z, axis), window)
                if abs(z + direction - key_slice) <= limit:
                    ahead.submit(z + direction)
                new_logits = previous_logits
                for _ in range(1 + max_refine):  # rule 3
                    prediction = predictor.predict(
                        box=box, mask_input=new_logits if use_previous_logits else None
                    )
                    new = touching(np.asarray(prediction.mask, dtype=bool), mask)  # rule 2
                    score, new_logits = float(prediction.score), prediction.logits
                    if not new.any():
                        break
                    joined = box_union(box, grown(new))
                    if np.allclose(joined, box):
                        break
                    box = joined
                area = int(new.sum())
                done += 1
                stop = None  # rule 4
                if area == 0:
                    stop = "moved" if np.asarray(prediction.mask).any() else "empty"
                elif area < min_area_fraction * key_area:
                    stop = "small"
                elif score < max(
                    min_score if min_score is not None else 0.0,
                    score_drop * best if score_drop is not None and best is not None else 0.0,
                ):
                    stop = "low score"
                elif min_overlap is not None and overlap(new, mask) < min_overlap:
                    stop = "moved"
                elif old is not None and iou(new, old[z]) >= agree:
                    stop = "agrees"
                if stop is not None:
                    logger.info("propagation stops at slice %d (%s)", z, stop)
                    yield SliceStep(z, done, total, area, None, box, stop, score)
                    break
                view[z] = new
                yield SliceStep(z, done, total, area, new, box, None, score)
                mask, previous_logits, best = new, new_logits, max(score, best or 0.0)
                scores[z] = score
                z += direction
    if score_drop is not None and best is not None:
        for z in sorted((z for z in scores if z > key_slice), reverse=True):  # the first direction's far end
            if scores[z] >= score_drop * best:
                break
            logger.info("propagation drops slice %d (predicted IoU %.2f, best %.2f)", z, scores[z], best)
            view[z] = False
    return result


def correct(
    predictor: SlicePredictor,
    volume: Any,
    labels: np.ndarray,
    label_id: int,
    slice_index: int,
    box: Sequence[float],
    *,
    axis: int = 0,
    window: WindowArg = AUTO,
    agree: float = 0.9,
    **options: Any,
) -> Generator[SliceStep, None, np.ndarray]:
    """Correct object ``label_id`` of a label volume from a box on one slice; return new labels.

    The slice is segmented with ``box`` and the object propagated from it both ways
    (:func:`propagate`, ``options`` passed on), each direction only as far as the new masks
    differ from the object as it was: a direction ends at the first slice whose new mask has
    IoU >= ``agree`` with the old one, and from there on the old object is kept as it is. Where
    a direction ends for another reason (the organ ends, the mask leaves it), the old object's
    run of slices from there on in that direction is removed: it lay past the organ. Other
    objects' voxels are never taken. Yields a :class:`SliceStep` per slice visited; returns a
    copy of ``labels`` (the caller writes the slices that changed, as one undo step).
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(np.shape(volume)):
        raise ValueError(f"labels have shape {labels.shape}, the volume {np.shape(volume)}")
    axis = check_axis(axis, 3)
    old = labels == label_id
    steps: list[SliceStep] = []

    def kept(step: SliceStep) -> SliceStep:
        steps.append(step)
        return step

    walk = propagate(
        predictor, volume, slice_index, key_box=box, axis=axis, window=window, agree_with=old,
        agree=agree, **options,
    )  # fmt: skip
    new = yield from relay(walk, kept)
    old_z, new_z = np.moveaxis(old, axis, 0), np.moveaxis(new, axis, 0)
    merged = old_z.copy()
    depth = merged.shape[0]
    for direction in (1, -1):
        visited = [s for s in steps if (s.slice_index - slice_index) * direction > 0]
        agreed = bool(visited) and visited[-1].stop == "agrees"
        end = visited[-1].slice_index if visited and visited[-1].stop else None
        for s in visited:
            if s.stop is None:
                merged[s.slice_index] = new_z[s.slice_index]
        if end is not None and not agreed:
            z = end
            while 0 <= z < depth and old_z[z].any():  # the old run past the new end
                merged[z] = False
                z += direction
    merged[slice_index] = new_z[slice_index]
    out = labels.copy()
    out_z = np.moveaxis(out, axis, 0)
    out_z[old_z & ~merged] = 0
    out_z[merged & (out_z == 0)] = label_id
    return out


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """``|a & b| / min(|a|, |b|)``: 1 when the smaller mask lies inside the other (0 if one is empty)."""
    smaller = min(int(np.count_nonzero(a)), int(np.count_nonzero(b)))
    return 0.0 if smaller == 0 else float(np.count_nonzero(a & b)) / smaller


def touching(mask: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The connected pieces (8-connected) of ``mask`` that overlap ``previous``."""
    if not mask.any() or (mask & ~previous).sum() == 0:
        return mask
    from skimage.measure import label

    pieces = label(mask, connectivity=2)
    kept = np.unique(pieces[mask & previous])
    return np.isin(pieces, kept[kept > 0])


def label_volume(
    predictor: SlicePredictor,
    volume: Any,
    key_slice: int,
    key_masks: Sequence[np.ndarray],
    *,
    propagate_objects: bool = True,
    axis: int = 0,
    window: WindowArg = AUTO,
    callback: Callable[[SliceStep], Any] | None = None,
    key_scores: Sequence[float | None] | None = None,
    **options: Any,
) -> np.ndarray:
    """A label volume of objects 1..N from their masks on ``key_slice`` (CLI, cohorts, scripts).

    Each object is propagated on its own from its own key mask (:func:`propagate`, with its
    ``key_scores`` entry as ``key_score`` and ``options`` passed on), or kept on the key slice
    alone without ``propagate_objects``; so an object's mask does not depend on the others.
    Where objects overlap, the earlier one keeps the voxel.
    """
    shape = tuple(np.shape(volume))
    axis = check_axis(axis, len(shape))
    window = resolve_window(window, volume) if propagate_objects else None
    masks = []
    scores = [None] * len(key_masks) if key_scores is None else list(key_scores)
    for key_mask, key_score in zip(key_masks, scores, strict=True):
        if propagate_objects:
            steps = propagate(
                predictor, volume, key_slice, key_mask=key_mask, key_score=key_score, axis=axis,
                window=window, **options,
            )  # fmt: skip
            masks.append(run_to_end(steps, callback))
        else:
            mask = np.zeros(shape, dtype=bool)
            np.moveaxis(mask, axis, 0)[key_slice] = key_mask
            masks.append(mask)
    return stack_labels(masks, shape)


def stack_labels(masks: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Objects 1..N from boolean masks of ``shape``: where they overlap, the earlier keeps the voxel."""
    out = np.zeros(shape, dtype=np.uint8 if len(masks) < 2**8 else np.uint16)
    for label, mask in enumerate(masks, start=1):
        out[np.asarray(mask, dtype=bool) & (out == 0)] = label
    return out


def segment_boxes(
    predictor: SlicePredictor,
    volume: Any,
    boxes: Mapping[int, Sequence[float]],
    *,
    axis: int = 0,
    window: WindowArg = AUTO,
) -> Generator[SliceStep, None, np.ndarray]:
    """Segment each slice ``z`` of ``volume`` with ``boxes[z]`` (see :func:`interpolate_boxes`).

    ``window`` as for :func:`propagate`. Yields a :class:`SliceStep` per slice; returns one
    boolean mask of the volume's shape.
    """
    shape = tuple(np.shape(volume))
    if len(shape) != 3:
        raise ValueError(f"volume must be 3D, got shape {shape}")
    axis = check_axis(axis, 3)
    slices = sorted(int(z) for z in boxes)
    bad = [z for z in slices if not 0 <= z < shape[axis]]
    if bad:
        raise ValueError(f"slices {bad} are outside 0..{shape[axis] - 1} along axis {axis}")
    window = resolve_window(window, volume)
    result = np.zeros(shape, dtype=bool)
    view = np.moveaxis(result, axis, 0)
    for done, z in enumerate(slices, start=1):
        box = normalise_box(boxes[z])
        predictor.set_image(take_slice(volume, z, axis), window)
        prediction = predictor.predict(box=box)
        mask = np.asarray(prediction.mask, dtype=bool)
        view[z] = mask
        yield SliceStep(z, done, len(slices), int(mask.sum()), mask, box, None, float(prediction.score))
    return result
