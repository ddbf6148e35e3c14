"""Object names and colours beside label files: the ``<stem>.labels.json`` sidecar.

The sidecar of ``liver.nii.gz`` is ``liver.labels.json``::

    {"labels": [{"label": 1, "name": "liver", "color": [0.85, 0.37, 0.0]}]}

``color`` is RGB in 0..1. Objects without a name are called "object N"
(:func:`~napari_medsam.core.stats.default_name`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from napari_medsam.core.stats import default_name
from napari_medsam.io.formats import stem_of

RGB = tuple[float, float, float]
#: Colours given to objects in id order (a qualitative palette, cycled).
PALETTE: tuple[RGB, ...] = (
    (0.902, 0.624, 0.0),
    (0.337, 0.706, 0.914),
    (0.0, 0.620, 0.451),
    (0.941, 0.894, 0.259),
    (0.0, 0.447, 0.698),
    (0.835, 0.369, 0.0),
    (0.800, 0.475, 0.655),
    (0.6, 0.6, 0.6),
)


def label_color(label_id: int) -> RGB:
    """The default colour of object ``label_id``."""
    return PALETTE[(int(label_id) - 1) % len(PALETTE)]


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the names of the labels in ``path`` are kept: ``<stem>.labels.json`` beside it."""
    path = Path(path)
    return path.with_name(f"{stem_of(path)}.labels.json")


def label_entries(ids: Iterable[int], names: Mapping[int, str] | None = None) -> list[dict[str, object]]:
    """``{"label", "name", "color"}`` for each id: the given name or "object N", the default colour."""
    names = names or {}
    return [
        {"label": int(i), "name": str(names.get(int(i)) or default_name(i)), "color": list(label_color(i))}
        for i in ids
    ]


def write_sidecar(
    path: str | os.PathLike, ids: Iterable[int], names: Mapping[int, str] | None = None
) -> Path:
    """Write the sidecar of label file ``path`` for objects ``ids``; returns its path."""
    target = sidecar_path(path)
    target.write_text(json.dumps({"labels": label_entries(ids, names)}, indent=2) + "\n")
    return target


def read_sidecar(path: str | os.PathLike) -> dict[int, str]:
    """Label id -> name from the sidecar of ``path`` (empty when there is none)."""
    target = sidecar_path(path)
    if not target.is_file():
        return {}
    try:
        entries = json.loads(target.read_text()).get("labels", [])
        return {int(e["label"]): str(e["name"]) for e in entries}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{target}: not a napari-medsam labels sidecar ({err})") from err
