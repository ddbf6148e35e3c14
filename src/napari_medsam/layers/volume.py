"""Volume actions of the widget, Qt-free: Propagate, Interpolate, and what prefetching encodes.

Both actions work on a :class:`PlaneStack`: the slices of the image parallel to the one on
screen, in the orientation the viewer shows them. They are the very arrays Segment encodes, so
the embedding cache (and the prefetcher filling it) serves Segment, Propagate and Interpolate.
As for Segment, a request is read on the viewer's thread, the job touches no layer, and
:func:`write_volume` writes every object as one undo step.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from napari_medsam.base.boxes import BoxXYXY
from napari_medsam.base.jobs import Job, relay
from napari_medsam.base.label_policy import AFTER, BEFORE, assign_label_ids, label_changes, slices_past
from napari_medsam.base.object_edits import ObjectEdits
from napari_medsam.engine.corrections import correct
from napari_medsam.engine.propagation import SliceStep, interpolate_boxes, propagate, segment_boxes
from napari_medsam.engine.review import review_slices
from napari_medsam.io.volumes import GEOMETRY_KEY
from napari_medsam.layers.edits import keep_edits, keep_review, object_edits
from napari_medsam.layers.labels import write_planes
from napari_medsam.layers.objects import note_written, object_names, selected_object
from napari_medsam.layers.prompt_layers import feature_ids, store_ids
from napari_medsam.layers.prompts import (
    BoxPrompt,
    Plane,
    boxes_from_shapes,
    current_plane,
    slider_axis,
    slider_positions,
    spatial_shape,
)
from napari_medsam.layers.requests import ALL_OBJECTS, NEW_OBJECTS, SELECTED_OBJECT, LayerInputs, RunSettings
from napari_medsam.layers.segment import PredictorFor, loading_step

PROPAGATE, INTERPOLATE, CORRECT = "Propagate", "Interpolate", "Correct"
NEEDS_3D = "Propagate, Correct and Interpolate need a 3D image (this one is 2D)."


class PlaneStack:
    """The slices of ``data`` parallel to ``plane`` along ``axis``, as a read-only 3D array-like.

    ``stack[z]`` is the slice at index ``z`` of ``axis`` as the viewer shows it (rows, cols, and
    channels for RGB), i.e. ``stack.plane_at(z).extract(data)``; the other fixed axes (e.g. time)
    keep the plane's index. ``shape`` is (slices, rows, cols).
    """

    def __init__(self, data: Any, plane: Plane, axis: int) -> None:
        fixed = dict(plane.fixed)
        if axis not in fixed:
            raise ValueError(f"axis {axis} is displayed, it cannot be the slice axis")
        self.data, self.plane, self.axis = data, plane, int(axis)
        self.index = int(fixed[axis])
        shape = data.shape
        self.shape = (int(shape[axis]), int(shape[plane.row_axis]), int(shape[plane.col_axis]))
        self.ndim = 3

    def plane_at(self, z: int) -> Plane:
        """The plane of slice ``z``."""
        fixed = tuple((a, int(z) if a == self.axis else i) for a, i in self.plane.fixed)
        return replace(self.plane, fixed=fixed)

    def __getitem__(self, key: Any) -> np.ndarray:
        z = key[0] if isinstance(key, tuple) else key
        if isinstance(key, tuple) and any(k != slice(None) for k in key[1:]):
            raise IndexError("a PlaneStack gives whole slices only: stack[z]")
        return self.plane_at(int(z)).extract(self.data)

    def __len__(self) -> int:
        return self.shape[0]


def current_stack(image: Any, world_point: Sequence[float], dims_order: Sequence[int]) -> PlaneStack:
    """The slices of ``image`` parallel to the one shown at ``world_point``, along the nearest slider."""
    if len(spatial_shape(image)) < 3:
        raise ValueError(NEEDS_3D)
    plane = current_plane(image, world_point, dims_order)
    data = image.data[0] if image.multiscale else image.data
    axis = slider_axis(dims_order, len(world_point), image.ndim)
    if axis is None:
        raise ValueError(NEEDS_3D)
    return PlaneStack(data, plane, axis)


@dataclass(frozen=True)
class SliceNumbers:
    """How messages name the slices of a stack: the slider position the user sees for each index.

    napari's slider counts world positions, so it runs against the array's index where the image
    is flipped (the radiological display of most CT). ``world`` is each slice's world position
    along the slider, in mm when ``unit`` says so.
    """

    steps: tuple[int, ...]
    world: tuple[float, ...]
    unit: str | None = None

    def name(self, z: int) -> str:
        """``"slice 25 (-312.5 mm)"``: the slider position of index ``z`` and its world position."""
        where = f"slice {self.steps[z]}"
        return f"{where} ({self.world[z]:.1f} {self.unit})" if self.unit else where

    def side(self, side: str) -> str:
        """The array side (``BEFORE``/``AFTER`` of :mod:`~napari_medsam.base.label_policy`) of a
        slider side: slider positions below the current one are array indices below it unless the
        slider runs reversed."""
        reversed_ = len(self.steps) > 1 and self.steps[-1] < self.steps[0]
        return {BEFORE: AFTER, AFTER: BEFORE}[side] if reversed_ else side


def slice_numbers(inputs: LayerInputs, stack: PlaneStack) -> SliceNumbers:
    """The :class:`SliceNumbers` of ``stack``, from the image's transform and the viewer's slider ranges."""
    image = inputs.image
    indices = range(stack.shape[0])
    positions = slider_positions(image, inputs.world_point, stack.axis, indices, inputs.dims_range)
    unit = "mm" if GEOMETRY_KEY in image.metadata else None
    return SliceNumbers(tuple(p[0] for p in positions), tuple(p[1] for p in positions), unit)


def step_text(step: SliceStep, numbers: SliceNumbers) -> str:
    """A walk's slice step for the status line, naming the slice by its slider position."""
    return step.describe(numbers.name(step.slice_index))


@dataclass
class VolumeObject:
    """One object of a volume run: its label id and its key mask (Propagate) or key boxes.

    A correction has ``correct_box`` (on the stack's current slice) and ``labels``, the labels
    of the whole stack as they were (what :func:`~napari_medsam.engine.corrections.correct` keeps).
    ``edits`` are what the user vouched for about it (:mod:`~napari_medsam.layers.edits`), and
    ``anchors`` the masks of its anchor slices, which a Propagate keeps as fixed points.
    """

    label_id: int
    key_mask: np.ndarray | None = None
    key_boxes: dict[int, BoxXYXY] = field(default_factory=dict)
    box_rows: tuple[int, ...] = ()
    correct_box: BoxXYXY | None = None
    labels: np.ndarray | None = None
    edits: ObjectEdits = field(default_factory=ObjectEdits)
    anchors: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class VolumeRequest:
    """Everything a Propagate or Interpolate run needs, read on the viewer's thread."""

    action: str
    inputs: LayerInputs
    settings: RunSettings
    stack: PlaneStack
    objects: list[VolumeObject]
    numbers: SliceNumbers
    options: dict[str, Any] = field(default_factory=dict)
    #: Where the job puts each ``(slice, label id, mask)`` as it finds it (a :class:`Preview`'s), or None.
    found: queue.SimpleQueue | None = None


@dataclass
class VolumeOutcome:
    """Per object: a (slices, rows, cols) mask, the (first, last) slice the run covered, its edits
    after the run, the slices its walk asks to check (Propagate) and the slices a correction
    changed, those more than one slice from its box among them (Correct)."""

    masks: list[np.ndarray]
    spans: list[tuple[int, int]]
    edits: list[ObjectEdits] = field(default_factory=list)
    reviews: list[tuple[int, ...]] = field(default_factory=list)
    changed: list[tuple[int, ...]] = field(default_factory=list)
    far: list[tuple[int, ...]] = field(default_factory=list)


def propagation_objects(
    labels: Any, stack: PlaneStack, scope: str = ALL_OBJECTS, where: str = "this slice"
) -> list[VolumeObject]:
    """The objects on the current slice of ``labels`` that ``scope`` takes, their pixels as key masks.

    ``SELECTED_OBJECT``: the labels' ``selected_label``; ``NEW_OBJECTS``: those on no other slice
    of the stack; ``ALL_OBJECTS``: every one. ValueError, with what to do, when there is none.
    ``where`` names the slice in messages.
    """
    if labels is None:
        raise ValueError("Propagate starts from labels on this slice: segment an object here first.")
    current = stack.plane.extract(labels.data)
    ids = [int(i) for i in np.unique(current) if i > 0]
    if not ids:
        raise ValueError(
            f"No labels on {where} of {labels.name!r}: segment an object here first, then press Propagate."
        )
    if scope == SELECTED_OBJECT:
        selected = selected_object(labels, PROPAGATE)
        if selected not in ids:
            raise ValueError(
                f"The selected object ({describe_object(labels, selected)}) is not on {where}: select "
                f"one of {[describe_object(labels, i) for i in ids]} in the objects table, or go to a slice "
                "that shows it."
            )
        ids = [selected]
    elif scope == NEW_OBJECTS:
        elsewhere = [stack_plane(labels, stack, z) for z in range(stack.shape[0]) if z != stack.index]
        others = {int(i) for plane in elsewhere for i in np.unique(plane)}
        ids = [i for i in ids if i not in others]
        if not ids:
            raise ValueError(
                f"No new objects on {where}: every object here reaches other slices already. Select "
                f"one in the objects table and propagate '{SELECTED_OBJECT}', or '{ALL_OBJECTS}'."
            )
    edits = object_edits(labels, stack.axis)
    objects = []
    for i in ids:
        own = edits.get(i, ObjectEdits())
        anchors = {z: stack_plane(labels, stack, z) == i for z in own.anchors if z != stack.index}
        objects.append(VolumeObject(i, key_mask=current == i, edits=own, anchors=anchors))
    return objects


def describe_object(labels: Any, label_id: int) -> str:
    """``"'liver' (label 1)"``: an object as messages name it."""
    name = object_names(labels).get(label_id)
    return f"{name!r} (label {label_id})" if name else f"label {label_id}"


def stack_plane(labels: Any, stack: PlaneStack, z: int) -> np.ndarray:
    """Slice ``z`` of ``stack`` in ``labels``."""
    return stack.plane_at(z).extract(labels.data)


def correction_objects(
    inputs: LayerInputs, stack: PlaneStack, where: str = "this slice"
) -> list[VolumeObject]:
    """The selected object (the labels' ``selected_label``), to correct from a box on this slice.

    The box is the one new box (no label id yet) on this slice, else the last box of the selected
    object here (a correction undone and tried again). ValueError, with what to do, when there is
    no such object or box. The object is re-segmented here and re-propagated only as far as its
    masks change (:func:`~napari_medsam.engine.propagation.correct`); a box past the object's end
    extends it.
    """
    labels, boxes = inputs.labels, inputs.boxes
    if labels is None or not labels.data.any():
        raise ValueError("Correct changes an object already segmented: segment and propagate one first.")
    label_id = selected_object(labels, CORRECT)
    planes = np.stack([stack_plane(labels, stack, z) for z in range(stack.shape[0])])
    if not (planes == label_id).any():
        raise ValueError(
            f"The selected object ({describe_object(labels, label_id)}) is not in this volume: select the "
            "object to correct in the objects table."
        )
    prompts = []
    if boxes is not None:
        prompts, _ = boxes_from_shapes(boxes, inputs.image, inputs.world_point, inputs.dims_order)
    ids = feature_ids(boxes)
    here = [b for b in prompts if b.plane == stack.plane]
    new = [b for b in here if ids[b.source_index] == 0]
    own = [b for b in here if ids[b.source_index] == label_id]
    if len(new) > 1:
        raise ValueError(
            f"{len(new)} new boxes on {where}: Correct takes one box around "
            f"{describe_object(labels, label_id)}; delete the others."
        )
    if not new and not own:
        raise ValueError(
            f"Draw a box around {describe_object(labels, label_id)} on {where} (where it is wrong or "
            "missing), then press Correct."
        )
    box = new[0] if new else own[-1]
    edits = object_edits(labels, stack.axis).get(label_id, ObjectEdits())
    return [
        VolumeObject(
            label_id, box_rows=(box.source_index,), correct_box=box.box_xyxy, labels=planes, edits=edits
        )
    ]


def interpolation_objects(
    boxes: list[BoxPrompt], box_ids: np.ndarray, stack: PlaneStack, this_slice_only: bool
) -> list[VolumeObject]:
    """Group the boxes by their ``label_id`` (0: one new object) into objects with key slices.

    Only objects with boxes on two or more slices of the stack count (with ``this_slice_only``,
    only those with a box on the current slice). Boxes of one object on one slice are merged
    into their common bounding box. New objects get label id 0 here.
    """
    others = tuple((a, i) for a, i in stack.plane.fixed if a != stack.axis)
    groups: dict[int, dict[int, list[BoxXYXY]]] = {}
    rows: dict[int, list[int]] = {}
    for box in boxes:
        fixed = dict(box.plane.fixed)
        same_stack = tuple((a, i) for a, i in box.plane.fixed if a != stack.axis) == others
        if not same_stack or stack.axis not in fixed:
            continue
        label_id = int(box_ids[box.source_index])
        groups.setdefault(label_id, {}).setdefault(fixed[stack.axis], []).append(box.box_xyxy)
        rows.setdefault(label_id, []).append(box.source_index)
    objects = []
    for label_id, by_slice in sorted(groups.items()):
        if len(by_slice) < 2 or (this_slice_only and stack.index not in by_slice):
            continue
        key_boxes = {}
        for z, found in by_slice.items():
            corners = np.asarray(found, dtype=float)
            key_boxes[z] = (*corners[:, :2].min(0), *corners[:, 2:].max(0))
        objects.append(VolumeObject(label_id, key_boxes=key_boxes, box_rows=tuple(rows[label_id])))
    if not objects:
        where = "with a box on this slice " if this_slice_only else ""
        raise ValueError(
            f"Interpolate needs an object {where}boxed on two or more slices: draw boxes on key "
            "slices before segmenting them (new boxes form one object), or give the boxes the "
            "same label_id in the boxes layer's features."
        )
    return objects


def read_volume_request(
    action: str, inputs: LayerInputs, settings: RunSettings, options: dict[str, Any] | None = None
) -> VolumeRequest:
    """Read a Propagate or Interpolate request from the layers (viewer's thread).

    ``options`` go to :func:`~napari_medsam.engine.propagation.propagate`. Interpolated objects
    without a label id get new ones.
    """
    image, labels, boxes = inputs.image, inputs.labels, inputs.boxes
    stack = current_stack(image, inputs.world_point, inputs.dims_order)
    numbers = slice_numbers(inputs, stack)
    where = numbers.name(stack.index)
    if action == PROPAGATE:
        objects = propagation_objects(labels, stack, settings.propagate, where)
    elif action == CORRECT:
        objects = correction_objects(inputs, stack, where)
    elif action == INTERPOLATE:
        if boxes is None:
            raise ValueError("Interpolate needs boxes: pick a Shapes layer as 'boxes'.")
        box_prompts, _ = boxes_from_shapes(boxes, image, inputs.world_point, inputs.dims_order)
        box_ids = feature_ids(boxes)
        objects = interpolation_objects(box_prompts, box_ids, stack, settings.this_slice_only)
        ids = assign_label_ids(
            [obj.label_id for obj in objects],
            None if labels is None else labels.data,
            np.concatenate([box_ids, feature_ids(inputs.clicks)]),
        )
        for obj, label_id in zip(objects, ids, strict=True):
            obj.label_id = label_id
    else:
        raise ValueError(f"unknown volume action {action!r}")
    return VolumeRequest(action, inputs, settings, stack, objects, numbers, dict(options or {}))


def volume_steps(request: VolumeRequest, predictor_for: PredictorFor) -> Job[VolumeOutcome]:
    """Run every object of a volume request through the model; yields (done, total, message)."""
    depth = request.stack.shape[0]
    total = 1 + depth * len(request.objects)
    settings = request.settings
    yield loading_step(settings.source)
    predictor = predictor_for(settings.source, settings.device)
    outcome = VolumeOutcome([], [])
    for k, obj in enumerate(request.objects):
        index, edits, changed, far = request.stack.index, obj.edits, (), ()
        if obj.correct_box is not None:
            steps = correct(
                predictor, request.stack, obj.labels, obj.label_id, index, obj.correct_box,
                window=settings.window, edits=obj.edits, **request.options,
            )  # fmt: skip
        elif request.action in (PROPAGATE, CORRECT):
            steps = propagate(
                predictor, request.stack, index, key_mask=obj.key_mask, window=settings.window,
                edits=obj.edits, anchors=obj.anchors, **request.options,
            )  # fmt: skip
            edits = obj.edits.anchored(index)
        else:
            steps = segment_boxes(
                predictor, request.stack, interpolate_boxes(obj.key_boxes), window=settings.window
            )
            for z in obj.key_boxes:
                edits = edits.anchored(z)
        visited: list[int] = []
        walked: list[SliceStep] = []
        title = f"{request.action} object {k + 1} of {len(request.objects)} (label {obj.label_id}): "
        progress = partial(
            _object_progress, visited, walked, 1 + k * depth, depth, total, title, request.numbers
        )
        if request.found is not None:
            progress = partial(_found, request.found, obj.label_id, progress)
        result = yield from relay(steps, progress)
        if obj.labels is not None:  # a correction: its labels, the slices it changed, the edits
            mask, edits = result.labels == obj.label_id, result.edits
            changed, far = result.changed, result.far
            visited += list(changed)
        else:
            mask = result
        outcome.masks.append(mask)
        outcome.spans.append((min(visited), max(visited)))
        outcome.edits.append(edits)
        outcome.reviews.append(review_slices(walked) if request.action == PROPAGATE else ())
        outcome.changed.append(changed)
        outcome.far.append(far)
    yield total, total, "Writing labels…"
    return outcome


def _object_progress(
    visited: list[int],
    walked: list[SliceStep],
    start: int,
    depth: int,
    total: int,
    title: str,
    numbers: SliceNumbers,
    step: SliceStep,
) -> tuple[int, int, str]:
    """One object's slice step as the run's progress; records the slice visited and the step."""
    visited.append(step.slice_index)
    walked.append(step)
    return start + round(depth * step.done / max(step.total, 1)), total, title + step_text(step, numbers)


def _found(found: queue.SimpleQueue, label_id: int, progress: Any, step: SliceStep) -> tuple[int, int, str]:
    """Hand a step's mask to the preview, then report it as ``progress`` does."""
    if step.mask is not None and step.stop is None:
        found.put((step.slice_index, label_id, step.mask))
    return progress(step)


class Preview:
    """The masks of a running Propagate or Correct, shown in the Labels layer as they are found.

    They go in outside the undo history: :meth:`clear` puts every pixel back before the run's own
    write (:func:`write_volume`, one undo step) and after a cancel or a failure. :meth:`show`
    runs on the viewer's thread (at each progress step); the job only fills ``request.found``.
    """

    def __init__(self, labels: Any, request: VolumeRequest) -> None:
        self.labels, self.stack, self.overwrite = labels, request.stack, request.settings.overwrite
        request.found = self.found = queue.SimpleQueue()
        self._changes: list[tuple[tuple[np.ndarray, ...], np.ndarray]] = []

    def show(self, *_: object) -> None:
        """Paint every mask found since the last call, by the labels policy."""
        painted = False
        while True:
            try:
                z, label_id, mask = self.found.get_nowait()
            except queue.Empty:
                break
            plane = self.stack.plane_at(z)
            current = plane.extract(self.labels.data)
            changes, values = label_changes(current, mask, label_id, overwrite=self.overwrite)
            if len(values):
                index = plane.indices(*changes)
                self._changes.append((index, np.asarray(self.labels.data[index]).copy()))
                self.labels.data[index] = values
                painted = True
        if painted:
            self.labels.refresh()

    def clear(self, *_: object) -> None:
        """Put back every pixel :meth:`show` painted (nothing when there is none)."""
        if not self._changes:
            return
        while self._changes:
            index, old = self._changes.pop()
            self.labels.data[index] = old
        self.labels.refresh()


def write_volume(labels: Any, request: VolumeRequest, outcome: VolumeOutcome) -> tuple[list[int], list[str]]:
    """Write each object's mask into ``labels`` as one undo step; return (ids written, warnings).

    On every slice a run covered, the object's earlier voxels are replaced by its new mask;
    other objects' voxels are kept unless ``request.overwrite``. The ids are then stored in the
    ``label_id`` feature of the key boxes (Interpolate), which also name their object.
    """
    stack = request.stack
    writes = [
        (stack.plane_at(z), obj.label_id, mask[z])
        for obj, mask, (first, last) in zip(request.objects, outcome.masks, outcome.spans, strict=True)
        for z in range(first, last + 1)
    ]
    written = write_planes(labels, writes, overwrite=request.settings.overwrite)
    rows = {row: obj.label_id for obj in request.objects for row in obj.box_rows}
    if request.inputs.boxes is not None:
        store_ids(request.inputs.boxes, rows)
    note_written(labels, written, request.inputs.boxes, rows, request.settings.source)
    ids = [obj.label_id for obj in request.objects]
    keep_edits(labels, stack.axis, {i: e for i, e in zip(ids, outcome.edits, strict=True) if i in written})
    if request.action == PROPAGATE:
        keep_review(labels, stack.axis, dict(zip(ids, outcome.reviews, strict=True)))
    empty = [obj.label_id for obj in request.objects if obj.label_id not in written]
    notes = [f"{request.action} found nothing for label(s) {empty}."] if empty else []
    for obj, far in zip(request.objects, outcome.far, strict=True):
        if far:
            notes.append(
                f"The correction of {describe_object(labels, obj.label_id)} also changed "
                f"{len(far)} slice(s) away from the box: {slice_list(request.numbers, far)}. Check them."
            )
    return written, notes


def run_summary(labels: Any, request: VolumeRequest, outcome: VolumeOutcome) -> str:
    """The status line after a volume run: what changed where, and the slices to check."""
    parts = []
    for obj, changed, review in zip(request.objects, outcome.changed, outcome.reviews, strict=True):
        name = describe_object(labels, obj.label_id)
        if request.action == CORRECT:
            parts.append(
                f"Corrected {name} on {len(changed)} slice(s): {slice_list(request.numbers, changed)}"
            )
        elif review:
            parts.append(f"{name}: check {slice_list(request.numbers, review, ordered=False)} first")
    return "; ".join(parts)


def slice_list(numbers: SliceNumbers, slices: Sequence[int], ordered: bool = True) -> str:
    """``"slices 3, 4, 9"``: array indices as the slider numbers the user sees (sorted if ``ordered``)."""
    steps = [numbers.steps[z] for z in slices]
    steps = sorted(steps) if ordered else steps
    return (
        ("slice " if len(steps) == 1 else "slices ") + ", ".join(str(s) for s in steps)
        if steps
        else "no slice"
    )


def end_object(labels: Any, stack: PlaneStack, label_id: int, side: str) -> list[int]:
    """End object ``label_id`` at the current slice: clear it from every slice of ``stack`` past it.

    ``side`` is ``BEFORE`` or ``AFTER`` in the stack's index (as
    :func:`~napari_medsam.base.label_policy.slices_past`); one undo step. Returns the slices
    cleared (empty: nothing of the object lies that way, nothing written).
    """
    past = slices_past(stack.shape[0], stack.index, side)
    past = [z for z in past if (stack_plane(labels, stack, z) == label_id).any()]
    if past:
        empty = np.zeros(stack.shape[1:], dtype=bool)
        write_planes(labels, [(stack.plane_at(z), label_id, empty) for z in past], overwrite=False)
    before = object_edits(labels, stack.axis).get(label_id, ObjectEdits())
    keep_edits(labels, stack.axis, {label_id: before.ended(stack.index, side)})  # a walk stops there
    return past
