"""npe2 reader: NIfTI, NRRD, MetaImage and DICOM series as napari layers (through SimpleITK)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_medsam.core.objects import INDEX, NAME, palette_cycle
from napari_medsam.core.windows import SOFT_TISSUE, looks_like_ct
from napari_medsam.io.label_files import read_label_objects
from napari_medsam.io.volumes import format_of, read_volume, volume_name

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
    """Read one volume as a napari layer in the radiological display, its geometry in ``metadata``.

    Slicer segmentations (``.seg.nrrd``) and integer volumes named like a mask
    (``*_seg``, ``*label*``, ``*mask*``) open as Labels, with the names and colours of their
    segments or sidecar; everything else as Image. CT (DICOM modality CT, or values reaching
    air at about -1000 HU) opens with the soft-tissue window as contrast limits; the data stay
    in Hounsfield units. A DICOM series keeps its files in ``metadata["geometry"]``.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = os.fspath(path)
    array, geometry = read_volume(path)
    kwargs = geometry.layer_kwargs(source=path)
    kwargs["name"] = volume_name(path)
    components = array.ndim > geometry.ndim
    if not components and _is_labels(path, array):
        return [(array, {**kwargs, **_named_objects(path)}, "labels")]
    if components:
        if array.shape[-1] in (3, 4) and array.dtype == np.uint8:
            kwargs["rgb"] = True
        else:
            kwargs["channel_axis"] = array.ndim - 1
    elif looks_like_ct(array, geometry.modality):
        kwargs["contrast_limits"] = SOFT_TISSUE
    return [(array, kwargs, "image")]


def _is_labels(path: str, array: np.ndarray) -> bool:
    name = os.path.basename(os.path.normpath(path)).lower()
    if name.endswith(".seg.nrrd"):
        return True
    if not np.issubdtype(array.dtype, np.integer) or not _LABEL_NAME.search(volume_name(name)):
        return False
    return array.size == 0 or int(array.min()) >= 0


def _named_objects(path: str) -> dict[str, Any]:
    """Labels layer keyword arguments for the objects a label file names: features and colours."""
    objects = read_label_objects(path)
    if not objects:
        return {}
    features = {INDEX: [o.label for o in objects], NAME: [o.name for o in objects]}
    if all(o.default_color for o in objects):
        return {"features": features, "colormap": palette_cycle()}
    colors: dict[Any, Any] = {None: (0.6, 0.6, 0.6, 1.0), 0: (0.0, 0.0, 0.0, 0.0)}
    colors.update({o.label: (*o.color, 1.0) for o in objects})
    return {"features": features, "colormap": colors}
