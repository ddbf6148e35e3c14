"""Label files with their objects' names and colours, by ending: the one save and load path.

``.seg.nrrd`` (3D Slicer segments) and ``.dcm`` (DICOM Segmentation) carry names and colours
in the file; NIfTI, NRRD and MetaImage label files get the ``<stem>.labels.json`` sidecar.
The napari writer and the CLI both save through :func:`save_labels`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_medsam.core.objects import LabelObject, label_objects, present_ids
from napari_medsam.io.formats import WRITE_SUFFIXES, suffix_of
from napari_medsam.io.volumes import VolumeGeometry


def save_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    geometry: VolumeGeometry | None,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, Any] | None = None,
    model: str | None = None,
) -> list[str]:
    """Write ``labels`` with the names and colours of the objects present; returns the paths written.

    Objects without a name are "object N", without a colour the palette's. ``model`` (the model
    id) is recorded in DICOM Segmentations.
    """
    path, suffix = os.fspath(path), suffix_of(path)
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"{path}: label files can be written as {', '.join(WRITE_SUFFIXES)}")
    labels = np.asarray(labels)
    objects = label_objects(present_ids(labels), names, colors)
    if suffix == ".dcm":
        from napari_medsam.io.dicom_seg import write_dicom_seg

        return [write_dicom_seg(path, labels, geometry, objects, model)]
    if suffix == ".seg.nrrd":
        from napari_medsam.io.seg_nrrd import write_seg_nrrd

        return [write_seg_nrrd(path, labels, geometry, objects)]
    from napari_medsam.io.label_names import write_sidecar
    from napari_medsam.io.volumes import write_labels

    return [write_labels(path, labels, geometry), str(write_sidecar(path, objects))]


def read_label_objects(path: str | os.PathLike) -> list[LabelObject]:
    """The named objects of a label file: its Slicer segments, else its sidecar (may be empty)."""
    if suffix_of(path) == ".seg.nrrd":
        from napari_medsam.io.seg_nrrd import read_seg_objects

        return read_seg_objects(path)
    from napari_medsam.io.label_names import read_sidecar

    return read_sidecar(path)
