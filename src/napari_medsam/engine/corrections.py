"""Correct one object of a label volume from a box on one slice, changing only what the box supports.

A correction is new evidence on one slice: the user's box says what the object is there. The
boxed slice takes the box's mask and becomes an anchor
(:class:`~napari_medsam.base.object_edits.ObjectEdits`). From it the object is walked both ways
(:class:`~napari_medsam.engine.propagation.Tracker`, learning the object's look from the
anchors), and on each slice the old mask changes only where the object model says the change is
right, and where the object has other anchors, where what they show agrees too: a piece only the
old mask has goes if it looks unlike the object; a piece only the new one has comes if it looks
like it, and only to an old mask that did not look like the object as a whole; a piece too thin
for the model's cells to judge stays as it was. A direction ends at the first slice where nothing
changes, where the walk stops (there the old mask only loses what looks unlike the object, if
something is left), at another anchor, at an end the user set, or at the object's old end. A box
where the object was missing fills its slice and the gap to the object, never the slices beyond.
So a box on a tip, on a first or last slice or on a slice that was right leaves the rest as it
was. Why:
``docs/propagation.md``, "Corrections"."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_medsam.base.boxes import mask_box, normalise_box
from napari_medsam.base.object_edits import ObjectEdits
from napari_medsam.base.slicing import check_axis, take_slice
from napari_medsam.base.windows import AUTO, WindowArg, resolve_window
from napari_medsam.engine.object_model import INSIDE, ObjectModel, objectness
from napari_medsam.engine.predictor import SlicePredictor
from napari_medsam.engine.propagation import (
    USER_WEIGHT,
    PropagationRules,
    SliceStep,
    StopReason,
    Tracker,
    evidence,
)


@dataclass(frozen=True)
class Correction:
    """A correction's outcome: the new labels, the object's edits (the boxed slice an anchor), the
    slices whose object changed (array indices along the axis) and the boxed slice."""

    labels: np.ndarray
    edits: ObjectEdits
    changed: tuple[int, ...]
    slice_index: int

    @property
    def far(self) -> tuple[int, ...]:
        """Changed slices more than one slice away from the boxed one."""
        return tuple(z for z in self.changed if abs(z - self.slice_index) > 1)


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
    edits: ObjectEdits | None = None,
    rules: PropagationRules | None = None,
    **overrides: Any,
) -> Generator[SliceStep, None, Correction]:
    """Correct object ``label_id`` of ``labels`` from a box on slice ``slice_index`` (the module's rules).

    ``edits`` are the object's anchors and ends so far (the slices of its anchors keep their masks
    and teach the object model). Yields a :class:`SliceStep` per slice visited; returns a
    :class:`Correction` with a copy of the labels (other objects' voxels are never taken). A box
    that finds nothing raises ValueError with what to do.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(np.shape(volume)):
        raise ValueError(f"labels have shape {labels.shape}, the volume {np.shape(volume)}")
    axis = check_axis(axis, 3)
    depth = labels.shape[axis]
    if not 0 <= int(slice_index) < depth:
        raise ValueError(f"slice {slice_index} is outside 0..{depth - 1} along axis {axis}")
    slice_index = int(slice_index)
    rules = replace(rules or PropagationRules(), **overrides)
    if rules.unlike is None:
        raise ValueError("corrections judge changes by the object model: rules.unlike must not be None")
    window = resolve_window(window, volume)
    old_z = np.moveaxis(labels == label_id, axis, 0)
    plane = old_z.shape[1:]
    edits = (edits or ObjectEdits()).anchored(slice_index)

    predictor.set_image(take_slice(volume, slice_index, axis), window)
    prediction = predictor.predict(box=normalise_box(box))
    boxed = np.asarray(prediction.mask, dtype=bool)
    if not boxed.any():
        raise ValueError(
            f"the box on slice {slice_index} found nothing to correct object {label_id} with: draw it "
            "around the object as it should be on that slice"
        )
    trusted = [evidence(predictor, boxed, USER_WEIGHT)]
    total = depth
    done = 1
    yield SliceStep(
        slice_index, done, total, int(boxed.sum()), boxed, mask_box(boxed), None, prediction.score, 1.0, 1.0
    )
    # What the object was believed to be before this box: its other anchors (the slices the user made
    # or corrected). Where there are some, a change must look right to that belief and to the new one.
    believed = []
    for z in sorted(edits.anchors - {slice_index}):
        if old_z[z].any():
            predictor.set_image(take_slice(volume, z, axis), window)
            believed.append(evidence(predictor, old_z[z], USER_WEIGHT))
    trusted += believed
    before = [ObjectModel.fit(believed)] if believed else []
    merged = old_z.copy()
    merged[slice_index] = boxed
    # A box where the object was missing fills that slice and the gap to the object, never beyond;
    # a box on the object corrects its neighbours while a change is supported, no further.
    extending = not old_z[slice_index].any()
    for direction in _directions(old_z, slice_index, extending):
        tracker = Tracker(predictor, rules, plane, trusted)  # type: ignore[arg-type]
        previous, z = boxed, slice_index + direction
        while 0 <= z < depth and z not in edits.anchors and edits.allows(z):
            was = old_z[z]
            if was.any() == extending:  # an extension reached the object, or a correction its end
                break
            done += 1
            predictor.set_image(take_slice(volume, z, axis), window)
            visit = tracker.visit(previous)
            stop = tracker.stop(visit, previous, int(boxed.sum()), None)
            kept = visit.mask
            if was.any():
                models = [tracker.model(), *before]
                if stop is None:
                    grows = not looks_like(predictor, models, was)  # only an old mask unlike the object
                    kept = supported(predictor, models, was, visit.mask, additions=grows)
                    if np.array_equal(kept, was):
                        stop = StopReason.AGREES
                else:  # the walk ends here: what of the old mask looks unlike the object still goes,
                    # unless nothing would be left (past the object's end: End here cuts that)
                    rest = supported(predictor, models, was, np.zeros_like(was), additions=False)
                    merged[z] = rest if rest.any() else was
            if stop is not None:
                yield SliceStep(
                    z,
                    done,
                    total,
                    int(visit.mask.sum()),
                    None,
                    visit.box,
                    stop,
                    visit.score,
                    visit.objectness,
                )
                break
            merged[z] = kept
            yield SliceStep(
                z,
                done,
                total,
                int(kept.sum()),
                kept,
                visit.box,
                None,
                visit.score,
                visit.objectness,
                visit.confidence,
            )
            tracker.accept(kept)
            previous = kept
            z += direction
    out = labels.copy()
    out_z = np.moveaxis(out, axis, 0)
    out_z[old_z & ~merged] = 0
    out_z[merged & (out_z == 0)] = label_id
    changed = tuple(int(z) for z in np.flatnonzero((merged != old_z).any(axis=(1, 2))))
    return Correction(out, edits, changed, slice_index)


#: A piece of change is judged only if it is at least this fraction as thick as the object (the
#: radius of the largest disk it holds against the object's): a thinner piece is the boundary's
#: wobble between two masks of the same object, which the model places no better one way than the other.
THIN = 0.25


def looks_like(predictor: SlicePredictor, models: Sequence[ObjectModel | None], mask: np.ndarray) -> bool:
    """Whether at least half of ``mask``'s cells look like the object to each of ``models``."""
    cells, cover = predictor.cells(), predictor.coverage(mask)
    return all(
        model is not None and (objectness(model.score(cells), cover) or 0.0) >= 0.5 for model in models
    )


def supported(
    predictor: SlicePredictor,
    models: Sequence[ObjectModel | None],
    was: np.ndarray,
    new: np.ndarray,
    additions: bool = True,
) -> np.ndarray:
    """The old mask ``was`` of the current slice with the changes to ``new`` that every one of
    ``models`` supports (a missing model supports nothing).

    Each connected piece of the difference is judged on its own: a piece only ``was`` has goes if
    less than half of its cells look like the object, a piece only ``new`` has comes if at least
    half do (only with ``additions``: a correction adds to an old mask that looked like the object
    nothing it did not show on its own slice). A piece is not judged, and stays as it was, when it
    is thinner than :data:`THIN` of the object's thickness or than half an embedding cell, or
    covers no cell by half or more: below what the object model can see.
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.measure import label

    if any(model is None for model in models):
        return was.copy()
    cells = predictor.cells()
    scores = [model.score(cells) for model in models]  # type: ignore[union-attr]
    out = was.copy()
    cell = max(was.shape) / cells.shape[0]  # an embedding cell's side in pixels (whole slice)
    thickness = float(distance_transform_edt(np.pad(was | new, 1))[1:-1, 1:-1].max())
    least = max(cell / 2, THIN * thickness)
    for region, keep in ((was & ~new, False), (new & ~was, True)):
        if not region.any() or (keep and not additions):
            continue
        pieces = label(region, connectivity=2)
        for piece in range(1, int(pieces.max()) + 1):
            part = pieces == piece
            if distance_transform_edt(np.pad(part, 1)).max() < least:
                continue
            cover = predictor.coverage(part)
            judged = cover >= INSIDE
            if not judged.any():
                continue
            shares = [objectness(score, cover * judged) or 0.0 for score in scores]
            if keep and min(shares) >= 0.5:
                out |= part
            elif not keep and max(shares) < 0.5:
                out &= ~part
    return out


def _directions(old_z: np.ndarray, z: int, extending: bool) -> list[int]:
    """Where a correction walks from slice ``z``: both ways, or for an extension toward the object only."""
    if not extending:
        return [1, -1]
    present = np.flatnonzero(old_z.any(axis=(1, 2)))
    return [d for d in (1, -1) if np.any((present - z) * d > 0)]
