"""Label files with their objects' names and colours, by ending: the one save and load path.

``.seg.nrrd`` (3D Slicer segments) and ``.dcm`` (DICOM Segmentation) carry names and colours
in the file; NIfTI, NRRD and MetaImage label files get the ``<file name>.labels.json`` sidecar.
The napari writer and the CLI save through :func:`save_labels` (on the file grid of the image
the labels were made on) and open through :func:`load_labels` (on that image's grid again).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_medsam.base.object_edits import ObjectEdits
from napari_medsam.base.objects import LabelObject, label_objects, present_ids
from napari_medsam.io.formats import WRITE_SUFFIXES, suffix_of
from napari_medsam.io.orientation import to_axial
from napari_medsam.io.volumes import VolumeGeometry, holds_centre, read_volume, resample_labels


def save_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    geometry: VolumeGeometry | None,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, Any] | None = None,
    model: str | None = None,
    edits: Mapping[int, ObjectEdits] | None = None,
) -> list[str]:
    """Write ``labels`` with the names, colours and edits of the objects present; returns the paths
    written.

    Objects without a name are "object N", without a colour the palette's. ``model`` (the model
    id) is recorded in DICOM Segmentations; ``edits`` in the sidecar and ``.seg.nrrd`` (a DICOM
    Segmentation has no place for them).
    """
    path, suffix = os.fspath(path), suffix_of(path)
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"{path}: label files can be written as {', '.join(WRITE_SUFFIXES)}")
    labels = np.asarray(labels)
    if geometry is not None:
        labels, geometry = geometry.to_file(labels)
    objects = label_objects(present_ids(labels), names, colors, edits)
    if suffix == ".dcm":
        from napari_medsam.io.dicom_seg import write_dicom_seg

        return [write_dicom_seg(path, labels, geometry, objects, model)]
    if suffix == ".seg.nrrd":
        from napari_medsam.io.seg_nrrd import write_seg_nrrd

        return [write_seg_nrrd(path, labels, geometry, objects)]
    from napari_medsam.io.label_names import write_sidecar
    from napari_medsam.io.volumes import write_labels

    return [write_labels(path, labels, geometry), str(write_sidecar(path, objects))]


def load_labels(
    path: str | os.PathLike, references: Sequence[VolumeGeometry] = ()
) -> tuple[np.ndarray, VolumeGeometry, list[LabelObject]]:
    """A label file as an axial label volume, its geometry and its named objects.

    ``references`` are the geometries of the images the labels may belong to (those open in the
    viewer, the CLI's image). The labels take the first reference with their grid; else the first
    that holds their centre, resampled onto it (nearest neighbour: a grid stored in another order
    or cropped, as Slicer crops segmentations); else they keep their own grid.
    """
    from napari_medsam.io.dicom_seg import is_dicom_seg, read_dicom_seg

    if is_dicom_seg(path):
        labels, geometry, objects = read_dicom_seg(path, references)
    elif suffix_of(path) == ".seg.nrrd":
        from napari_medsam.io.seg_nrrd import read_seg_nrrd

        labels, geometry, objects = read_seg_nrrd(path)
    else:
        from napari_medsam.io.label_names import read_sidecar

        (labels, geometry), objects = read_volume(path), read_sidecar(path)
    labels, geometry = place_labels(labels, geometry, references)
    return labels, geometry, objects


def place_labels(
    labels: np.ndarray, geometry: VolumeGeometry, references: Sequence[VolumeGeometry] = ()
) -> tuple[np.ndarray, VolumeGeometry]:
    """Labels on their file's grid -> on a reference's grid, as :func:`load_labels` says."""
    labels, geometry = to_axial(labels, geometry)
    for reference in references:
        if reference.same_grid(geometry):
            return labels, reference
    for reference in references:
        if holds_centre(reference, geometry):
            return resample_labels(labels, geometry, reference), reference
    return labels, geometry
