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
from napari_medsam.core.jobs import run_to_end
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
    ``stop`` why a direction ended there ("empty", "small", "low score"), else None, and
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
    axis: int = 0,
    window: WindowArg = AUTO,
    margin: float = 0.05,
    margin_pixels: float | None = None,
    max_refine: int = 4,
    min_area_fraction: float = 0.1,
    min_score: float | None = None,
    score_drop: float | None = 0.8,
    max_slices: int | None = None,
    use_previous_logits: bool | None = None,
) -> Generator[SliceStep, None, np.ndarray]:
    """Segment one object through a volume, starting from a key slice.

    The key slice is segmented with ``key_box`` (or taken from ``key_mask``). Then, walking away
    from it in both directions, each slice is segmented by these rules (measured on the shared
    real CT, see ``benchmarks/bench_quality.py``):

    1. **Prompt: the previous mask's box plus a margin** of ``max(margin * side, margin_pixels)``
       per side (:func:`~napari_medsam.core.boxes.expand_box`). ``margin_pixels`` defaults to
       2.5 % of the slice's longer side: the +3 px of MedSAM's training boxes on a 122 px slice,
       the same distance in the model's input on any grid. The larger of the two, not their sum:
       a sum grows the box faster than the organ and the model fills it (leaks into neighbours).
    2. **Grow-only refinement**: the new mask's box plus the margin is joined to the prompt; if
       that changed the box, the slice is predicted again, at most ``max_refine`` times. The box
       grows where the organ continues past it, but never shrinks within a slice: the models
       under-segment slightly from a box, and re-prompting with the mask's own box feeds that
       back. Shrinking happens from one slice to the next (rule 1), so the prompt follows an
       organ that ends.
    3. **Stops**: a direction ends at an empty mask, at a mask smaller than
       ``min_area_fraction`` of the key mask, at a predicted IoU below ``min_score`` (if given)
       or below ``score_drop`` times the best seen so far in that direction (past an organ's end
       the model still outlines something, but with a lower predicted IoU: on a CT phantom
       0.93-0.97 on the organ, 0.69-0.79 past it; on the shared real CT 0.8 stops no organ
       early), at the volume's end, or after ``max_slices`` slices; the slice that stopped it is
       left out.

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
    logits, score = None, None
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

    ahead = Lookahead(predictor, volume, axis, window)  # the next slice encodes while this one decodes
    for direction in (1, -1):
        mask, previous_logits, best = first, logits, score
        z = key_slice + direction
        while 0 <= z < depth and abs(z - key_slice) <= limit:
            box = grown(mask)  # rule 1
            predictor.set_image(take_slice(volume, z, axis), window)
            if abs(z + direction - key_slice) <= limit:
                ahead.submit(z + direction)
            new_logits = previous_logits
            for _ in range(1 + max_refine):  # rule 2
                prediction = predictor.predict(
                    box=box, mask_input=new_logits if use_previous_logits else None
                )
                new = np.asarray(prediction.mask, dtype=bool)
                score, new_logits = float(prediction.score), prediction.logits
                if not new.any():
                    break
                joined = box_union(box, grown(new))
                if np.allclose(joined, box):
                    break
                box = joined
            area = int(new.sum())
            done += 1
            stop = None  # rule 3
            if area == 0:
                stop = "empty"
            elif area < min_area_fraction * key_area:
                stop = "small"
            elif score < max(
                min_score if min_score is not None else 0.0,
                score_drop * best if score_drop is not None and best is not None else 0.0,
            ):
                stop = "low score"
            if stop is not None:
                logger.info("propagation stops at slice %d (%s)", z, stop)
                yield SliceStep(z, done, total, area, None, box, stop, score)
                break
            view[z] = new
            yield SliceStep(z, done, total, area, new, box, None, score)
            mask, previous_logits, best = new, new_logits, max(score, best or 0.0)
            z += direction
    ahead.close()
    return result


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
    **options: Any,
) -> np.ndarray:
    """A label volume of objects 1..N from their masks on ``key_slice`` (CLI, cohorts, scripts).

    Each object is propagated on its own from its own key mask (:func:`propagate`, ``options``
    passed on), or kept on the key slice alone without ``propagate_objects``; so an object's
    mask does not depend on the others. Where objects overlap, the earlier one keeps the voxel.
    """
    shape = tuple(np.shape(volume))
    axis = check_axis(axis, len(shape))
    window = resolve_window(window, volume) if propagate_objects else None
    masks = []
    for key_mask in key_masks:
        if propagate_objects:
            steps = propagate(
                predictor, volume, key_slice, key_mask=key_mask, axis=axis, window=window, **options
            )
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
