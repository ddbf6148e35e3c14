"""Object names, colours and edits beside label files: the ``<file name>.labels.json`` sidecar.

The sidecar of ``liver.nii.gz`` is ``liver.nii.gz.labels.json`` (one per file: ``liver.nrrd``
beside it has its own)::

    {"labels": [{"label": 1, "name": "liver", "color": [0.9, 0.62, 0.0],
                 "edits": {"anchors": [12, 20], "last": 27}}]}

``color`` is RGB in 0..1; ``edits`` (when there are any) the slices the user vouched for
(:class:`~napari_medsam.base.object_edits.ObjectEdits`, array indices of the axial grid).
NIfTI, NRRD and MetaImage label files get one (``.seg.nrrd`` and DICOM Segmentations carry
names and colours themselves). Files written by earlier versions
kept their names in ``<stem>.labels.json``; that one is read when a file has no sidecar of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from napari_medsam.base.atomic import write_text
from napari_medsam.base.object_edits import ObjectEdits
from napari_medsam.base.objects import LabelObject, label_objects
from napari_medsam.io.formats import stem_of

SIDECAR_SUFFIX = ".labels.json"


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the names of the labels in ``path`` are written: ``<file name>.labels.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def legacy_sidecar_path(path: str | os.PathLike) -> Path:
    """The per-stem sidecar of earlier versions (``liver.labels.json``), read when the file has none."""
    path = Path(path)
    return path.with_name(stem_of(path) + SIDECAR_SUFFIX)


def write_sidecar(path: str | os.PathLike, objects: Sequence[LabelObject]) -> Path:
    """Write the sidecar of label file ``path`` for ``objects`` (atomically); returns its path."""
    entries = []
    for o in objects:
        entry: dict = {"label": o.label, "name": o.name, "color": [round(c, 4) for c in o.color]}
        if edits := o.edits.as_json():
            entry["edits"] = edits
        entries.append(entry)
    return write_text(sidecar_path(path), json.dumps({"labels": entries}, indent=2) + "\n")


def read_sidecar(path: str | os.PathLike) -> list[LabelObject]:
    """The objects named in the sidecar of ``path``, else in its legacy one; empty when neither is there."""
    target = next((p for p in (sidecar_path(path), legacy_sidecar_path(path)) if p.is_file()), None)
    if target is None:
        return []
    try:
        entries = json.loads(target.read_text()).get("labels", [])
        ids = [int(e["label"]) for e in entries]
        names = {int(e["label"]): str(e["name"]) for e in entries}
        colors = {int(e["label"]): e["color"] for e in entries if len(e.get("color") or ()) >= 3}
        edits = {int(e["label"]): ObjectEdits.from_json(e.get("edits")) for e in entries}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{target}: not a napari-medsam labels sidecar ({err})") from err
    return label_objects(ids, names, colors, edits)
