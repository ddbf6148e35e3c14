"""Object names and colours beside label files: the ``<stem>.labels.json`` sidecar.

The sidecar of ``liver.nii.gz`` is ``liver.labels.json``::

    {"labels": [{"label": 1, "name": "liver", "color": [0.902, 0.624, 0.0]}]}

``color`` is RGB in 0..1. NIfTI, NRRD and MetaImage label files get one (``.seg.nrrd`` and DICOM
Segmentations carry names and colours themselves).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from napari_medsam.core.objects import LabelObject, label_objects
from napari_medsam.io.formats import stem_of


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the names of the labels in ``path`` are kept: ``<stem>.labels.json`` beside it."""
    path = Path(path)
    return path.with_name(f"{stem_of(path)}.labels.json")


def write_sidecar(path: str | os.PathLike, objects: Sequence[LabelObject]) -> Path:
    """Write the sidecar of label file ``path`` for ``objects``; returns its path."""
    entries = [{"label": o.label, "name": o.name, "color": [round(c, 4) for c in o.color]} for o in objects]
    target = sidecar_path(path)
    target.write_text(json.dumps({"labels": entries}, indent=2) + "\n")
    return target


def read_sidecar(path: str | os.PathLike) -> list[LabelObject]:
    """The objects named in the sidecar of ``path`` (empty when there is none)."""
    target = sidecar_path(path)
    if not target.is_file():
        return []
    try:
        entries = json.loads(target.read_text()).get("labels", [])
        ids = [int(e["label"]) for e in entries]
        names = {int(e["label"]): str(e["name"]) for e in entries}
        colors = {int(e["label"]): e["color"] for e in entries if len(e.get("color") or ()) >= 3}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{target}: not a napari-medsam labels sidecar ({err})") from err
    return label_objects(ids, names, colors)
