"""The objects of a Labels layer, Qt-free: their names, and their statistics over the image.

Names live in the Labels layer's ``features`` table: one row per label id, its id in the
``index`` column (napari's own convention, so hovering over an object shows its name in the
status bar) and its ``name``. An id without a row is "object N". Colours are the layer's
colormap: layers the widget makes show the palette (:func:`napari_medsam.base.objects.palette_cycle`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from napari_medsam.base.objects import INDEX, NAME, default_name, names_from_table
from napari_medsam.base.stats import ObjectStats, object_stats
from napari_medsam.layers.prompts import slider_axis, spatial_shape

#: ``metadata`` key of a Labels layer: the model that last wrote into it (DICOM-SEG records it).
MODEL_KEY = "model"


def object_names(labels: Any) -> dict[int, str]:
    """Label id -> name of the objects a Labels layer names."""
    return names_from_table(labels.features)


def selected_object(labels: Any, action: str) -> int:
    """The label id of the selected object (the labels' ``selected_label``) that ``action`` acts on.

    ValueError, saying what to do, when it is 0: the background, which napari's label picker
    selects when it is used on an empty pixel. Checked before any work starts.
    """
    label_id = int(labels.selected_label)
    if label_id <= 0:
        raise ValueError(
            f"{action} acts on the selected object, but the background (label 0) is selected: "
            "select an object in the objects table."
        )
    return label_id


def name_objects(labels: Any, names: Mapping[int, str] | None = None, ids: Iterable[int] = ()) -> None:
    """Name objects of ``labels``; every id in ``ids`` gets a row too ("object N" unless named).

    Other columns of the features table are kept. Nothing is written when nothing changes.
    """
    import pandas as pd

    table = pd.DataFrame(labels.features)
    if INDEX not in table:  # napari reads a table without "index" as row i = label i
        table[INDEX] = np.arange(len(table))
    rows = table.set_index(INDEX)
    old = dict(zip(rows.index, rows[NAME], strict=True)) if NAME in rows else {}
    new = {int(i): _name_or_default(old.get(i), i) for i in [*rows.index, *ids]}
    new.update({int(i): str(n).strip() for i, n in (names or {}).items() if str(n).strip()})
    if new != old:
        rows = rows.reindex(sorted(new))
        rows[NAME] = [new[i] for i in rows.index]
        labels.features = rows.rename_axis(INDEX).reset_index()


def _name_or_default(name: Any, label_id: int) -> str:
    return name.strip() if isinstance(name, str) and name.strip() else default_name(label_id)


def names_from_features(layer: Any | None, ids_by_row: Mapping[int, int]) -> dict[int, str]:
    """Label id -> the ``name`` feature of the prompt layer rows (a Shapes layer's boxes) that set one."""
    features = None if layer is None else layer.features
    if features is None or NAME not in features:
        return {}
    values = list(features[NAME])
    return {
        int(label_id): values[row].strip()
        for row, label_id in ids_by_row.items()
        if row < len(values) and isinstance(values[row], str) and values[row].strip()
    }


def note_written(
    labels: Any, written: Iterable[int], boxes: Any | None, ids_by_row: Mapping[int, int], model: str
) -> None:
    """After a run wrote objects ``written``: name them (their boxes' ``name``), record the model."""
    name_objects(labels, names_from_features(boxes, ids_by_row), written)
    labels.metadata[MODEL_KEY] = model


def voxel_size_mm(layer: Any) -> tuple[float, ...] | None:
    """A layer's voxel size along each data axis in mm, from its whole transform and units.

    Flips and scales in ``scale`` or ``affine`` count alike (the length of each data axis's step
    in the world). None when the world units are not lengths (napari's default, pixels).
    """
    ndim = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(ndim)), dtype=float)
    steps = [np.linalg.norm(np.asarray(layer.data_to_world(np.eye(ndim)[d])) - origin) for d in range(ndim)]
    try:
        to_mm = [float((1 * unit).to("mm").magnitude) for unit in layer.units]
    except Exception:  # pint's DimensionalityError: pixels are no length
        return None
    return tuple(float(s * f) for s, f in zip(steps, to_mm, strict=True))


def labels_stats(
    labels: Any, image: Any | None, dims_order: Sequence[int] = (), world_ndim: int | None = None
) -> list[ObjectStats]:
    """Statistics of each object of ``labels``: volume from the image's voxel size, its raw intensities.

    Slices are counted along the axis of the slider nearest the displayed axes (``dims_order``).
    """
    data = np.asarray(labels.data[0] if labels.multiscale else labels.data)
    fits = image is not None and not image.rgb and spatial_shape(image) == data.shape
    pixels = np.asarray(image.data[0] if image.multiscale else image.data) if fits else None
    axis = slider_axis(dims_order, world_ndim or data.ndim, data.ndim) if len(dims_order) > 2 else None
    spacing = voxel_size_mm(image if fits else labels)
    return object_stats(data, pixels, spacing, object_names(labels), axis=axis or 0)
