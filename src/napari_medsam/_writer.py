"""npe2 writer: a Labels layer to NIfTI, NRRD, MetaImage, .seg.nrrd or DICOM-SEG, on its image's geometry.

Object names come from the layer's ``features`` table (``index`` = label id, ``name``), colours
from its colormap (what the viewer shows), the model from ``metadata["model"]``, the objects' edits
from ``metadata["edits"]`` (:mod:`napari_medsam.base.object_edits`). Every file is
written beside its target and renamed into place (:mod:`napari_medsam.base.atomic`), and never
over the file (or a DICOM series file) of an image open in the viewer.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from napari_medsam.base.object_edits import EDITS_KEY, edits_in_entry
from napari_medsam.base.objects import names_from_table, present_ids
from napari_medsam.io.files import overwritten_inputs
from napari_medsam.io.formats import ITK_WRITE_SUFFIXES, suffix_of
from napari_medsam.io.label_files import save_labels
from napari_medsam.io.label_names import sidecar_path
from napari_medsam.io.volumes import GEOMETRY_KEY, VolumeGeometry


class ImageInfo(NamedTuple):
    """What the writer needs to know of an image layer in the viewer."""

    name: str
    metadata: Mapping[str, Any]
    scale: Sequence[float]
    translate: Sequence[float]
    files: Sequence[str] = ()  # the file or folder it was opened from, and its DICOM series files


def napari_write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Labels layer with its object names and colours; returns the paths written.

    ValueError (shown by napari) when the file, or its names sidecar, is an open image's file.
    """
    images = viewer_images()
    inputs = [Path(f) for image in images for f in image.files]
    outputs = [Path(path)] + ([sidecar_path(path)] if suffix_of(path) in ITK_WRITE_SUFFIXES else [])
    for output, image in overwritten_inputs(outputs, inputs):
        raise ValueError(f"{output} is the file of an open image ({image}); save the labels to another file")
    return _write_layer(path, data, attributes, images)


def _write_layer(
    path: str, data: Any, attributes: Mapping[str, Any], images: Sequence[ImageInfo] = ()
) -> list[str]:
    """Write a Labels layer's data with the geometry, names, colours, model and edits its attributes hold."""
    data = np.asarray(data)
    geometry = labels_geometry(data.shape, attributes, images)
    colormap, ids, colors = attributes.get("colormap"), present_ids(data), {}
    if colormap is not None and ids:  # what the viewer shows; a hidden object (alpha 0) keeps its RGB,
        colored = zip(ids, colormap.map(np.asarray(ids)), strict=True)  # one without any: the palette's
        colors = {i: (*rgba[:3], 1.0) for i, rgba in colored if rgba[3] > 0 or np.any(rgba[:3])}
    metadata = attributes.get("metadata") or {}
    edits = edits_in_entry(metadata.get(EDITS_KEY))  # anchors and ends along the file's axial grid
    names = names_from_table(attributes.get("features"))
    return save_labels(path, data, geometry, names, colors, metadata.get("model"), edits)


def labels_geometry(
    shape: Sequence[int], attributes: Mapping[str, Any], images: Sequence[ImageInfo] = ()
) -> VolumeGeometry:
    """Geometry to save labels of ``shape`` with.

    In order: the layer's own ``metadata["geometry"]``; else that of an image in ``images``
    with the same shape, scale and translate (a layer made with napari's "new labels" button
    copies those but not the metadata), preferring the image the labels are named after;
    else the layer's scale and translate, axis-aligned, with a warning.
    """
    shape = tuple(int(s) for s in shape)
    if _stored(attributes.get("metadata"), shape) is not None:
        return VolumeGeometry.from_layer(attributes, shape)
    scale, translate = attributes.get("scale"), attributes.get("translate")
    found = [
        (image.name, geometry)
        for image in images
        if (geometry := _stored(image.metadata, shape)) is not None
        and (scale is None or np.allclose(scale, image.scale))
        and (translate is None or np.allclose(translate, image.translate))
    ]
    name = str(attributes.get("name", ""))
    found = [f for f in found if name.startswith(f[0])] or found
    if found:
        if any(not geometry.same_grid(found[0][1]) for _, geometry in found[1:]):
            warnings.warn(
                f"Several images could be the one these labels belong to; saved with the "
                f"geometry of {found[0][0]!r}.",
                stacklevel=2,
            )
        return found[0][1]
    warnings.warn(
        "No image geometry found for these labels: saved with the layer's scale and translate "
        "and an axis-aligned direction. Make labels from an image opened with napari-medsam to "
        "keep its orientation.",
        stacklevel=2,
    )
    return VolumeGeometry.from_layer(attributes, shape)


def _stored(metadata: Mapping[str, Any] | None, shape: tuple[int, ...]) -> VolumeGeometry | None:
    stored = (metadata or {}).get(GEOMETRY_KEY)
    if isinstance(stored, Mapping):
        stored = VolumeGeometry.from_dict(stored)
    if isinstance(stored, VolumeGeometry) and stored.shape == shape:
        return stored
    return None


def viewer_images() -> list[ImageInfo]:
    """The image layers of the current viewer (none without one)."""
    try:
        import napari
        from napari.layers import Image

        viewer = napari.current_viewer()
    except Exception:
        return []
    if viewer is None:
        return []
    return [
        ImageInfo(layer.name, layer.metadata, layer.scale, layer.translate, _image_files(layer))
        for layer in viewer.layers
        if isinstance(layer, Image)
    ]


def _image_files(layer: Any) -> tuple[str, ...]:
    """The file (or folder) an image layer was opened from and the files of its DICOM series."""
    opened = getattr(layer.source, "path", None)
    geometry = (layer.metadata or {}).get(GEOMETRY_KEY)
    series = (geometry.get("source_files") if isinstance(geometry, Mapping) else None) or ()
    return (*([opened] if opened else []), *series)
