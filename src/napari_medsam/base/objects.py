"""What each object of a label volume has besides its voxels: a name, a colour and its edits.

An object is a label id. Until someone names it, it is called "object N"; its colour is the
palette's, cycled by id (:func:`label_color`); its edits are the slices a user vouched for
(:class:`~napari_medsam.base.object_edits.ObjectEdits`). Every file format and the viewer take
names, colours and edits from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medsam.base.object_edits import ObjectEdits

RGB = tuple[float, float, float]
#: Colours given to objects in id order (Okabe-Ito, a colour-blind safe palette), cycled.
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
#: Feature (Shapes and Labels layers) and table column holding an object's name.
NAME = "name"
#: napari's Labels feature column that says which label id a row describes.
INDEX = "index"


def default_name(label_id: int) -> str:
    """The name an object has until someone names it."""
    return f"object {int(label_id)}"


def label_color(label_id: int) -> RGB:
    """The default colour of object ``label_id``."""
    return PALETTE[(int(label_id) - 1) % len(PALETTE)]


def palette_cycle() -> list[tuple[float, float, float, float]]:
    """A napari Labels colormap (as a colour cycle) that shows id ``i`` in :func:`label_color`.

    napari shows background 0 in the first colour and id ``i`` in colour ``(i - 1) % n + 1``.
    """
    return [(0.0, 0.0, 0.0, 0.0), *((*rgb, 1.0) for rgb in PALETTE)]


@dataclass(frozen=True)
class LabelObject:
    """One object: its label id, name, RGB colour (0..1) and edits (anchors and ends)."""

    label: int
    name: str
    color: RGB
    edits: ObjectEdits = field(default_factory=ObjectEdits)

    @property
    def named(self) -> bool:
        """Whether someone chose the name (it is not the default "object N")."""
        return self.name != default_name(self.label)

    @property
    def default_color(self) -> bool:
        """Whether the colour is the palette's own for this id."""
        return bool(np.allclose(self.color, label_color(self.label), atol=1e-3))


def label_objects(
    ids: Iterable[int],
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, Any] | None = None,
    edits: Mapping[int, ObjectEdits] | None = None,
) -> list[LabelObject]:
    """A :class:`LabelObject` for each id: the name, colour and edits given, else the defaults."""
    names, colors, edits = names or {}, colors or {}, edits or {}
    objects = []
    for i in ids:
        i = int(i)
        color = colors.get(i)
        rgb = label_color(i) if color is None else tuple(float(c) for c in list(color)[:3])
        objects.append(
            LabelObject(i, str(names.get(i) or default_name(i)), rgb, edits.get(i, ObjectEdits()))  # type: ignore[arg-type]
        )
    return objects


def present_ids(labels: np.ndarray) -> list[int]:
    """The positive label ids found in ``labels``, ascending."""
    counts = np.bincount(np.asarray(labels).reshape(-1).astype(np.int64, copy=False))
    return [int(i) for i in np.flatnonzero(counts) if i > 0]


def names_from_table(table: Any) -> dict[int, str]:
    """Label id -> name from a features table with ``index`` and ``name`` columns (else empty)."""
    if table is None or INDEX not in table or NAME not in table:
        return {}
    names = {}
    for label_id, name in zip(table[INDEX], table[NAME], strict=True):
        if isinstance(name, str) and name.strip():
            names[int(label_id)] = name.strip()
    return names
