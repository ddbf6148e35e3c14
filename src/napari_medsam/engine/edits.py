"""Editing one object of a label volume: Propagate, Correct and End here with what the user vouched for.

The scripting API of these actions (the benchmarks and tests drive it; the widget, through
``layers/volume``, and the CLI call the same engine functions, ``propagate``, ``correct`` and
``end_object``, with the same edits). An :class:`ObjectEditor` holds the predictor,
the volume and its window; each action takes the labels and the object's
:class:`~napari_medsam.base.object_edits.ObjectEdits` and returns new ones, never changing its
input: Propagate walks with the anchors as fixed points and within the ends
(:func:`~napari_medsam.engine.propagation.propagate`) and lists the slices to check
(:func:`~napari_medsam.engine.review.review_slices`); Correct changes what the box supports
(:func:`~napari_medsam.engine.corrections.correct`); End here cuts the object at a slice.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_medsam.base.jobs import relay
from napari_medsam.base.label_policy import end_object
from napari_medsam.base.object_edits import ObjectEdits
from napari_medsam.base.slicing import check_axis
from napari_medsam.base.windows import AUTO, WindowArg, resolve_window
from napari_medsam.engine.corrections import Correction, correct
from napari_medsam.engine.predictor import SlicePredictor
from napari_medsam.engine.propagation import PropagationRules, SliceStep, propagate
from napari_medsam.engine.review import review_slices


@dataclass(frozen=True)
class Walked:
    """A Propagate's outcome: the new labels, the object's edits, every step and the slices to check."""

    labels: np.ndarray
    edits: ObjectEdits
    steps: tuple[SliceStep, ...]
    review: tuple[int, ...]


class ObjectEditor:
    """Propagate, Correct and End here on one volume (``axis`` its slice axis, ``window`` as
    :func:`~napari_medsam.engine.propagation.propagate` takes it)."""

    def __init__(
        self,
        predictor: SlicePredictor,
        volume: Any,
        *,
        axis: int = 0,
        window: WindowArg = AUTO,
        rules: PropagationRules | None = None,
    ) -> None:
        self.predictor, self.volume = predictor, volume
        self.axis = check_axis(axis, 3)
        self.window = resolve_window(window, volume)
        self.rules = rules

    def propagate(
        self,
        labels: np.ndarray,
        label_id: int,
        key_slice: int,
        key_box: Sequence[float] | None = None,
        key_mask: np.ndarray | None = None,
        edits: ObjectEdits | None = None,
    ) -> Generator[SliceStep, None, Walked]:
        """Walk object ``label_id`` from ``key_slice`` (its box, or its mask there); the object's
        voxels on every slice the walk covered become the walk's, other objects keep theirs."""
        labels = np.asarray(labels)
        edits = (edits or ObjectEdits()).anchored(key_slice)
        old_z = np.moveaxis(labels == label_id, self.axis, 0)
        anchors = {z: old_z[z] for z in edits.anchors}
        steps: list[SliceStep] = []

        def kept(step: SliceStep) -> SliceStep:
            steps.append(step)
            return step

        walk = propagate(
            self.predictor, self.volume, key_slice, key_box=key_box, key_mask=key_mask, axis=self.axis,
            window=self.window, rules=self.rules, edits=edits, anchors=anchors,
        )  # fmt: skip
        mask = yield from relay(walk, kept)
        out = labels.copy()
        out_z, new_z = np.moveaxis(out, self.axis, 0), np.moveaxis(mask, self.axis, 0)
        covered = sorted(s.slice_index for s in steps if s.mask is not None)
        for z in range(covered[0], covered[-1] + 1) if covered else ():
            plane = out_z[z]
            plane[(plane == label_id) & ~new_z[z]] = 0
            plane[new_z[z] & (plane == 0)] = label_id
        return Walked(out, edits, tuple(steps), review_slices(steps))

    def correct(
        self,
        labels: np.ndarray,
        label_id: int,
        slice_index: int,
        box: Sequence[float],
        edits: ObjectEdits | None,
    ) -> Generator[SliceStep, None, Correction]:
        """Correct object ``label_id`` from ``box`` on ``slice_index`` (:mod:`.corrections`)."""
        return correct(
            self.predictor, self.volume, labels, label_id, slice_index, box, axis=self.axis,
            window=self.window, edits=edits, rules=self.rules,
        )  # fmt: skip

    def end_here(
        self, labels: np.ndarray, label_id: int, slice_index: int, side: str, edits: ObjectEdits | None
    ) -> tuple[np.ndarray, ObjectEdits]:
        """Object ``label_id`` ended at ``slice_index`` (cleared ``side`` of it), and its edits."""
        out = end_object(labels, label_id, slice_index, side, axis=self.axis)
        return out, (edits or ObjectEdits()).ended(slice_index, side)
