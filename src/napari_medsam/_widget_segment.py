"""One Segment run, Qt-free: label ids, the model job, and writing masks as one undo step."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import numpy as np

from napari_medsam._widget_jobs import Job
from napari_medsam._widget_layers import LayerInputs, feature_ids, store_ids
from napari_medsam.prompts import (
    ObjectPrompt,
    Plane,
    boxes_from_shapes,
    clicks_from_points,
    current_plane,
    group_prompts,
    label_changes,
    next_label_id,
)


@dataclass
class SegmentRequest:
    """Everything one Segment run needs, read from the layers on the viewer's thread."""

    image: Any
    labels: Any | None
    boxes: Any | None
    clicks: Any | None
    objects: list[ObjectPrompt]
    label_ids: list[int]
    slices: dict[Plane, np.ndarray]
    window: tuple[float, float] | None
    source: str
    device: str
    overwrite: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class SegmentOutcome:
    """Masks (one per object of the request, in order), the model family and warnings."""

    masks: list[np.ndarray]
    family: str
    notes: list[str]


def read_segment_request(
    inputs: LayerInputs,
    *,
    this_slice_only: bool,
    box_rows: Collection[int] | None = None,
    click_rows: Collection[int] | None = None,
    **settings: Any,
) -> SegmentRequest:
    """Read a Segment request from the layers (viewer's thread); ValueError if there is nothing.

    With ``box_rows`` / ``click_rows`` only the objects of those rows on the current slice are
    taken. ``settings`` are the request's ``window``, ``source``, ``device`` and ``overwrite``.
    """
    image, labels, boxes, clicks = inputs.image, inputs.labels, inputs.boxes, inputs.clicks
    position = (inputs.world_point, inputs.dims_order)
    box_prompts, click_prompts, notes = [], [], []
    if boxes is not None:
        box_prompts, problems = boxes_from_shapes(boxes, image, *position)
        notes += problems
    if clicks is not None:
        click_prompts, problems = clicks_from_points(clicks, image, *position)
        notes += problems
    objects = group_prompts(box_prompts, click_prompts)
    if box_rows is not None or click_rows is not None:
        rows, clicked = set(box_rows or ()), set(click_rows or ())
        objects = [o for o in objects if o.box_index in rows or clicked & set(o.point_indices)]
        this_slice_only = True
    if this_slice_only:
        plane = current_plane(image, *position)
        objects = [obj for obj in objects if obj.plane == plane]
    if not objects:
        raise ValueError(
            f"Nothing to segment {'on this slice' if this_slice_only else 'anywhere'}: draw a box "
            "in a Shapes layer (or click in a Points layer) and pick it as 'boxes' ('clicks'). "
            + " ".join(notes)
        )
    data = image.data[0] if image.multiscale else image.data
    return SegmentRequest(
        image=image,
        labels=labels,
        boxes=boxes,
        clicks=clicks,
        objects=objects,
        label_ids=assign_ids(objects, None if labels is None else labels.data, boxes, clicks),
        slices={obj.plane: obj.plane.extract(data) for obj in objects},
        notes=notes,
        **settings,
    )


def assign_ids(objects: list[ObjectPrompt], labels_data: Any | None, boxes: Any, clicks: Any) -> list[int]:
    """Each object's label id: its box's ``label_id`` feature, else its clicks', else a new id."""
    box_ids, click_ids = feature_ids(boxes), feature_ids(clicks)
    taken = [int(i) for i in np.concatenate([box_ids, click_ids]) if i > 0]
    data = labels_data if labels_data is not None else np.zeros(1, np.uint16)
    ids = []
    for obj in objects:
        if obj.box_index is not None:
            known = [box_ids[obj.box_index]]
        else:
            known = [click_ids[i] for i in obj.point_indices]
        label_id = next((int(i) for i in known if i > 0), 0)
        if label_id == 0:
            label_id = next_label_id(data, taken)
            taken.append(label_id)
        ids.append(label_id)
    return ids


def segment_steps(request: SegmentRequest, predictor_for: Callable[[str, str], Any]) -> Job[SegmentOutcome]:
    """Encode each slice once and predict each object; yields (done, total, message).

    MedSAM-family models get clicks as they are but with a warning when there is no box;
    a SAM model given a single click proposes three masks and the best-scored one is kept.
    """
    planes = [(p, list(objs)) for p, objs in groupby(request.objects, key=lambda o: o.plane)]
    total = 1 + len(planes) + len(request.objects)
    yield 0, total, f"Loading {request.source}…"
    predictor = predictor_for(request.source, request.device)
    family = str(predictor.family)
    masks: list[np.ndarray] = []
    notes: list[str] = []
    done = 1
    for plane, objects in planes:
        yield done, total, f"Encoding slice {plane.describe()}…"
        predictor.set_image(request.slices[plane], window=request.window)
        done += 1
        for obj in objects:
            yield done, total, f"Segmenting object {len(masks) + 1} of {len(request.objects)}…"
            if obj.box_xyxy is None and family != "sam":
                notes.append(
                    f"{family} was trained on boxes only: clicks without a box give poor "
                    "masks. Draw a box, or pick a SAM model."
                )
            single_click = obj.box_xyxy is None and len(obj.point_labels) == 1
            result = predictor.predict(
                box=obj.box_xyxy,
                points=obj.points_xy if obj.has_points else None,
                point_labels=obj.point_labels if obj.has_points else None,
                multimask=family == "sam" and single_click,
            )
            masks.append(np.asarray(result.mask, dtype=bool))
            done += 1
    yield total, total, "Writing labels…"
    return SegmentOutcome(masks, family, list(dict.fromkeys(notes)))


def write_masks(labels: Any, request: SegmentRequest, outcome: SegmentOutcome) -> tuple[list[int], list[str]]:
    """Write the masks into ``labels`` as one undo step; return (ids written, warnings).

    Objects sharing a label id on a slice are merged first, so they do not erase each other.
    The ids are then stored in the boxes' (and click-only objects' clicks') ``label_id``.
    """
    merged: dict[tuple[Plane, int], np.ndarray] = {}
    for obj, label_id, mask in zip(request.objects, request.label_ids, outcome.masks, strict=True):
        key = (obj.plane, label_id)
        merged[key] = merged[key] | mask if key in merged else mask
    written: list[int] = []
    with labels.block_history():
        for (plane, label_id), mask in merged.items():
            changes, values = label_changes(
                plane.extract(labels.data), mask, label_id, overwrite=request.overwrite
            )
            if len(values):
                labels.data_setitem(plane.indices(*changes), values, refresh=False)
            if mask.any() and label_id not in written:
                written.append(label_id)
    labels.refresh()
    _store_request_ids(request)
    notes = request.notes + outcome.notes
    empty = sorted({i for (_, i), m in merged.items() if not m.any()} - set(written))
    if empty:
        notes.append(f"The model found nothing for label(s) {empty}: adjust the box.")
    return written, notes


def _store_request_ids(request: SegmentRequest) -> None:
    box_rows: dict[int, int] = {}
    click_rows: dict[int, int] = {}
    for obj, label_id in zip(request.objects, request.label_ids, strict=True):
        if obj.box_index is not None:
            box_rows[obj.box_index] = label_id
        else:
            click_rows.update(dict.fromkeys(obj.point_indices, label_id))
    if request.boxes is not None:
        store_ids(request.boxes, box_rows)
    if request.clicks is not None:
        store_ids(request.clicks, click_rows)
