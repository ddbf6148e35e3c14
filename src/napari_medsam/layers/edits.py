"""What the user vouched for about each object of a Labels layer, kept in the layer's ``metadata``.

``metadata["edits"]`` holds each object's :class:`~napari_medsam.base.object_edits.ObjectEdits`
(its anchor slices and ends) with the slice axis they count along; the writer saves them with the
labels and the reader puts them back, so a later session walks and corrects the same way.
``metadata["review"]`` holds the slices the last walk of each object asks the user to check, with
the axis they count along too. Edits and reviews made along another axis than the current one are
not applied (a sagittal walk knows nothing of axial anchors, a sagittal view of axial slices).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from napari_medsam.base.object_edits import EDITS_KEY, ObjectEdits, edits_entry, edits_in_entry

REVIEW_KEY = "review"


def object_edits(labels: Any, axis: int) -> dict[int, ObjectEdits]:
    """Label id -> the object's edits along ``axis`` (none when they were made along another)."""
    return edits_in_entry(labels.metadata.get(EDITS_KEY), axis)


def keep_edits(labels: Any, axis: int, changes: Mapping[int, ObjectEdits]) -> None:
    """Record ``changes`` (label id -> edits) along ``axis``, replacing edits made along another axis."""
    labels.metadata[EDITS_KEY] = edits_entry(object_edits(labels, axis) | dict(changes), axis)


def review_of(labels: Any, axis: int) -> dict[int, tuple[int, ...]]:
    """Label id -> the slices its last walk along ``axis`` asks to check (array indices along it;
    none for walks along another axis)."""
    stored = labels.metadata.get(REVIEW_KEY) or {}
    if int(stored.get("axis", -1)) != int(axis):
        return {}
    return {int(i): tuple(r) for i, r in (stored.get("objects") or {}).items()}


def keep_review(labels: Any, axis: int, reviews: Mapping[int, Sequence[int]]) -> None:
    """Record the slices to check of the objects just walked along ``axis``, replacing reviews of
    walks along another axis."""
    new = {int(i): tuple(int(z) for z in r) for i, r in reviews.items()}
    labels.metadata[REVIEW_KEY] = {"axis": int(axis), "objects": review_of(labels, axis) | new}
