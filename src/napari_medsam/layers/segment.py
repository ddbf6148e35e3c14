"""One Segment run, Qt-free: label ids, the model job, and writing masks as one undo step."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from itertools import groupby
from typing import Any

import numpy as np

from napari_medsam.base.jobs import Job, Progress
from napari_medsam.base.label_policy import assign_label_ids
from napari_medsam.layers.labels import write_planes
from napari_medsam.layers.objects import names_from_features, note_written
from napari_medsam.layers.prompt_layers import feature_ids, store_ids
from napari_medsam.layers.prompts import (
    FIXES,
    ObjectPrompt,
    Plane,
    boxes_from_shapes,
    clicks_from_points,
    current_plane,
    describe_problem,
    group_prompts,
    slider_position,
)
from napari_medsam.layers.requests import LayerInputs, RunSettings
from napari_medsam.models.families import family_spec

#: Loads (or reuses) the predictor for a model source and device; called inside the job.
PredictorFor = Callable[[str, str], Any]


@dataclass
class SegmentRequest:
    """Everything one Segment run needs, read from the layers on the viewer's thread."""

    inputs: LayerInputs
    settings: RunSettings
    objects: list[ObjectPrompt]
    label_ids: list[int]
    slices: dict[Plane, np.ndarray]
    notes: list[str] = field(default_factory=list)


@dataclass
class SegmentOutcome:
    """Masks (one per object of the request, in order), the model family and warnings."""

    masks: list[np.ndarray]
    family: str
    notes: list[str]


def read_segment_request(
    inputs: LayerInputs,
    settings: RunSettings,
    *,
    box_rows: Collection[int] | None = None,
    click_rows: Collection[int] | None = None,
) -> SegmentRequest:
    """Read a Segment request from the layers (viewer's thread); ValueError if there is nothing.

    With ``box_rows`` / ``click_rows`` only the objects of those rows are taken. Prompts that
    cannot be used (off the image, say) are named as the user sees them
    (:func:`~napari_medsam.layers.prompts.describe_problem`): the error when nothing is left, else
    the request's notes; with ``settings.this_slice_only``, only those on the slice on screen.
    """
    image, labels, boxes, clicks = inputs.image, inputs.labels, inputs.boxes, inputs.clicks
    position = (inputs.world_point, inputs.dims_order)
    box_prompts, click_prompts, problems = [], [], []
    if boxes is not None:
        box_prompts, found = boxes_from_shapes(boxes, image, *position)
        problems += found
    if clicks is not None:
        click_prompts, found = clicks_from_points(clicks, image, *position)
        problems += found
    objects = drawn = group_prompts(box_prompts, click_prompts)
    if box_rows is not None or click_rows is not None:
        rows, clicked = set(box_rows or ()), set(click_rows or ())
        objects = [o for o in objects if o.box_index in rows or clicked & set(o.point_indices)]
        problems = [p for p in problems if p.row in (rows if p.kind == "box" else clicked)]
    slider = partial(slider_position, dims_order=inputs.dims_order, dims_range=inputs.dims_range)
    here = slider(inputs.world_point)
    if settings.this_slice_only:
        plane = current_plane(image, *position)
        objects = [obj for obj in objects if obj.plane == plane]
        drawn = [obj for obj in drawn if obj.plane == plane]
        problems = [p for p in problems if slider(p.world) == here]
    names = {} if boxes is None else names_from_features(boxes, {row: row for row in range(len(boxes.data))})
    names = {("box", row): name for row, name in names.items()}
    numbering = (inputs.dims_order, inputs.dims_range)
    said = [describe_problem(p, *numbering, names.get((p.kind, p.row), "")) for p in problems]
    if not objects:
        if said:
            more = f" ({len(said) - 1} more prompt(s) cannot be used either)" if len(said) > 1 else ""
            raise ValueError(f"{said[0]}: {FIXES[problems[0].reason]}.{more}")
        where = "on this slice" if here is None else f"on slice {here}"
        where = where if settings.this_slice_only else "anywhere"
        if drawn:
            raise ValueError(
                f"Every box {where} is segmented already: draw a new one, or move a box to segment it again."
            )
        raise ValueError(
            f"Nothing to segment {where}: draw a box around the object (in the boxes layer) first."
        )
    data = image.data[0] if image.multiscale else image.data
    return SegmentRequest(
        inputs=inputs,
        settings=settings,
        objects=objects,
        label_ids=object_ids(objects, None if labels is None else labels.data, boxes, clicks),
        slices={obj.plane: obj.plane.extract(data) for obj in objects},
        notes=[f"{text}: skipped." for text in said],
    )


def pending_rows(inputs: LayerInputs, stale: Callable[[int], bool]) -> tuple[set[int], set[int]]:
    """The box and click rows a Segment takes: every new one (``label_id`` 0), and each box whose
    run is ``stale(row)`` (moved since, other settings) or whose object is not on its slice any more.

    A box segmented and left alone is not run again: its object may have been corrected since.
    """
    boxes, clicks, labels = inputs.boxes, inputs.clicks, inputs.labels
    box_ids, click_ids = feature_ids(boxes), feature_ids(clicks)
    rows = {int(r) for r in np.flatnonzero(box_ids == 0)}
    if boxes is not None:
        prompts, _ = boxes_from_shapes(boxes, inputs.image, inputs.world_point, inputs.dims_order)
        for box in prompts:
            label_id = int(box_ids[box.source_index])
            gone = labels is None or not (box.plane.extract(labels.data) == label_id).any()
            if label_id and (gone or stale(box.source_index)):
                rows.add(box.source_index)
    return rows, {int(r) for r in np.flatnonzero(click_ids == 0)}


def object_ids(objects: list[ObjectPrompt], labels_data: Any | None, boxes: Any, clicks: Any) -> list[int]:
    """Each object's label id: its box's ``label_id`` feature, else its clicks', else a new id."""
    box_ids, click_ids = feature_ids(boxes), feature_ids(clicks)
    known = []
    for obj in objects:
        boxed = obj.box_index is not None
        ids = [box_ids[obj.box_index]] if boxed else [click_ids[i] for i in obj.point_indices]
        known.append(next((int(i) for i in ids if i > 0), 0))
    return assign_label_ids(known, labels_data, np.concatenate([box_ids, click_ids]))


def loading_step(source: str) -> Progress:
    """A run's first step, while it waits for its model (seconds the first time, nothing after):
    no measure (total 0: the widget's bar runs as a busy indicator), what it waits for."""
    return 0, 0, f"Loading the model {source} (the first run only: a few seconds)…"


def segment_steps(request: SegmentRequest, predictor_for: PredictorFor) -> Job[SegmentOutcome]:
    """Encode each slice once and predict each object; yields (done, total, message).

    Models trained on boxes only (``FamilySpec.boxes_only``: MedSAM, LiteMedSAM) get clicks as
    they are but with a warning when there is no box; any other (SAM) given a single click
    proposes three masks and the best-scored one is kept.
    """
    planes = [(p, list(objs)) for p, objs in groupby(request.objects, key=lambda o: o.plane)]
    total = 1 + len(planes) + len(request.objects)
    yield loading_step(request.settings.source)
    predictor = predictor_for(request.settings.source, request.settings.device)
    family = str(predictor.family)
    boxes_only = family_spec(family).boxes_only
    masks: list[np.ndarray] = []
    notes: list[str] = []
    done = 1
    for k, (plane, objects) in enumerate(planes, start=1):
        yield done, total, f"Encoding slice {k} of {len(planes)} (the model's image encoder)…"
        predictor.set_image(request.slices[plane], window=request.settings.window)
        done += 1
        for obj in objects:
            yield done, total, f"Segmenting object {len(masks) + 1} of {len(request.objects)}…"
            if obj.box_xyxy is None and boxes_only:
                notes.append(
                    f"{family} was trained on boxes only: clicks without a box give poor "
                    "masks. Draw a box, or pick a SAM model."
                )
            single_click = obj.box_xyxy is None and len(obj.point_labels) == 1
            result = predictor.predict(
                box=obj.box_xyxy,
                points=obj.points_xy if obj.has_points else None,
                point_labels=obj.point_labels if obj.has_points else None,
                multimask=not boxes_only and single_click,
            )
            masks.append(np.asarray(result.mask, dtype=bool))
            done += 1
    yield total, total, "Writing labels…"
    return SegmentOutcome(masks, family, list(dict.fromkeys(notes)))


def write_masks(labels: Any, request: SegmentRequest, outcome: SegmentOutcome) -> tuple[list[int], list[str]]:
    """Write the masks into ``labels`` as one undo step; return (ids written, warnings).

    Objects sharing a label id on a slice are merged first, so they do not erase each other.
    The ids are then stored in the boxes' (and click-only objects' clicks') ``label_id``, and
    the objects named after their boxes' ``name`` feature (:mod:`napari_medsam.layers.objects`).
    """
    merged: dict[tuple[Plane, int], np.ndarray] = {}
    for obj, label_id, mask in zip(request.objects, request.label_ids, outcome.masks, strict=True):
        key = (obj.plane, label_id)
        merged[key] = merged[key] | mask if key in merged else mask
    writes = [(plane, label_id, mask) for (plane, label_id), mask in merged.items()]
    written = write_planes(labels, writes, overwrite=request.settings.overwrite)
    box_rows = _store_request_ids(request)
    note_written(labels, written, request.inputs.boxes, box_rows, request.settings.source)
    notes = request.notes + outcome.notes
    empty = sorted({i for (_, i), m in merged.items() if not m.any()} - set(written))
    if empty:
        notes.append(f"The model found nothing for label(s) {empty}: adjust the box.")
    return written, notes


def _store_request_ids(request: SegmentRequest) -> dict[int, int]:
    """Store each object's id in its box's (or clicks') ``label_id``; returns box row -> id."""
    box_rows: dict[int, int] = {}
    click_rows: dict[int, int] = {}
    for obj, label_id in zip(request.objects, request.label_ids, strict=True):
        if obj.box_index is not None:
            box_rows[obj.box_index] = label_id
        else:
            click_rows.update(dict.fromkeys(obj.point_indices, label_id))
    if request.inputs.boxes is not None:
        store_ids(request.inputs.boxes, box_rows)
    if request.inputs.clicks is not None:
        store_ids(request.inputs.clicks, click_rows)
    return box_rows
