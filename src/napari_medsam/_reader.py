"""npe2 reader: NIfTI, NRRD, MetaImage and DICOM series as napari layers (through SimpleITK)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_medsam.base.object_edits import EDITS_KEY, edits_entry
from napari_medsam.base.objects import INDEX, NAME, LabelObject, palette_cycle
from napari_medsam.base.windows import SOFT_TISSUE, looks_like_ct
from napari_medsam.io.dicom_seg import is_dicom_seg
from napari_medsam.io.formats import format_of
from napari_medsam.io.label_files import load_labels, place_labels
from napari_medsam.io.label_names import read_sidecar
from napari_medsam.io.orientation import layer_kwargs, to_axial
from napari_medsam.io.volumes import GEOMETRY_KEY, VolumeGeometry, read_volume, volume_name

LayerData = tuple[Any, dict[str, Any], str]
_LABEL_NAME = re.compile(r"(^|[^a-z])(seg|segmentation|label|labels|labelmap|mask)([^a-z]|$)")


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_layers` for a medical volume path, ``None`` for anything else."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        claimed = format_of(path) is not None
    except Exception:  # a reader probe must never raise
        return None
    return read_layers if claimed else None


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read one volume as a napari layer: axial slices under the slider, the radiological display.

    The axes are re-ordered (a view) so that the slider moves superior-inferior; the order and the
    geometry go into ``metadata["geometry"]`` (the writer puts labels back on the file's grid).
    DICOM Segmentations, Slicer segmentations (``.seg.nrrd``) and integer volumes named like a
    mask (``*_seg``, ``*label*``, ``*mask*``) or with a ``.labels.json`` sidecar (what the plugin
    writes, whatever the file is called) open as Labels, with the names and colours of their
    segments or sidecar, on the grid of an open image they lie on (:func:`load_labels`);
    everything else as Image. CT (DICOM modality CT, or values reaching air at about -1000 HU)
    opens with the soft-tissue window as contrast limits; the data stay in Hounsfield units.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = os.fspath(path)
    name = volume_name(path)
    if is_dicom_seg(path) or path.lower().endswith(".seg.nrrd"):
        labels, geometry, objects = load_labels(path, open_image_geometries())
        return [_labels_layer(labels, geometry, objects, path, name)]
    array, geometry = read_volume(path)
    components = array.ndim > geometry.ndim
    objects = [] if components else read_sidecar(path)
    if not components and _is_labels(path, array, bool(objects)):
        labels, geometry = place_labels(array, geometry, open_image_geometries())
        return [_labels_layer(labels, geometry, objects, path, name)]
    array, geometry = to_axial(array, geometry)
    kwargs = {**layer_kwargs(geometry, source=path), "name": name}
    if components:
        if array.shape[-1] in (3, 4) and array.dtype == np.uint8:
            kwargs["rgb"] = True
        else:
            kwargs["channel_axis"] = array.ndim - 1
    elif looks_like_ct(array, geometry.modality):
        kwargs["contrast_limits"] = SOFT_TISSUE
    return [(array, kwargs, "image")]


def open_image_geometries() -> list[VolumeGeometry]:
    """The geometries of the images open in the current viewer (none without a viewer)."""
    from napari_medsam._writer import viewer_images

    return [
        VolumeGeometry.from_dict(image.metadata[GEOMETRY_KEY])
        for image in viewer_images()
        if isinstance(image.metadata.get(GEOMETRY_KEY), dict)
    ]


def _labels_layer(
    labels: np.ndarray, geometry: VolumeGeometry, objects: list[LabelObject], path: str, name: str
) -> LayerData:
    kwargs = {**layer_kwargs(geometry, source=path), "name": name, **_named_objects(objects)}
    entry = edits_entry({o.label: o.edits for o in objects})
    if entry["objects"]:  # the objects' anchors and ends, as saved
        kwargs["metadata"] = {**kwargs.get("metadata", {}), EDITS_KEY: entry}
    return (labels, kwargs, "labels")


def _is_labels(path: str, array: np.ndarray, named: bool) -> bool:
    """An integer volume, non-negative, that has named objects or is named like a mask."""
    name = os.path.basename(os.path.normpath(path)).lower()
    if not np.issubdtype(array.dtype, np.integer) or not (named or _LABEL_NAME.search(volume_name(name))):
        return False
    return array.size == 0 or int(array.min()) >= 0


def _named_objects(objects: list[LabelObject]) -> dict[str, Any]:
    """Labels layer keyword arguments for the objects a label file names: features and colours."""
    if not objects:
        return {}
    features = {INDEX: [o.label for o in objects], NAME: [o.name for o in objects]}
    if all(o.default_color for o in objects):
        return {"features": features, "colormap": palette_cycle()}
    colors: dict[Any, Any] = {None: (0.6, 0.6, 0.6, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
    colors.update({o.label: (*o.color, 1.0) for o in objects})
    return {"features": features, "colormap": colors}
