"""Labels of a DICOM series as a DICOM Segmentation (highdicom), referencing the source instances.

One BINARY segment per object, labelled with its name; its category and type come from
:mod:`napari_medsam.io.terminology`. Frame ``k`` of the label array belongs to source file ``k``
(the series' files in the order the volume was read, kept in ``VolumeGeometry.source_files``);
highdicom leaves out frames without any segment.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_medsam.core.objects import LabelObject
from napari_medsam.io.terminology import property_codes
from napari_medsam.io.volumes import VolumeGeometry

#: What a Segmentation needs of each source instance to reference it.
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")
#: Patient and study attributes a Segmentation copies; DICOM lets them be empty (type 2), not absent.
TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
)
NOT_DICOM = (
    "A DICOM Segmentation (.dcm) needs labels made on an image opened from a DICOM series; "
    "save these labels as .seg.nrrd or .nii.gz instead."
)


def write_dicom_seg(
    path: str | os.PathLike,
    labels: np.ndarray,
    geometry: VolumeGeometry | None,
    objects: Sequence[LabelObject],
    model: str | None = None,
) -> str:
    """Write ``labels`` (slices, rows, cols) as a DICOM Segmentation of ``geometry``'s series.

    ``model`` (the model id) goes into the algorithm parameters. Raises ValueError, before
    anything is written, when the labels do not come from a DICOM series or are empty.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from napari_medsam import __version__

    files = None if geometry is None else geometry.source_files
    if not files:
        raise ValueError(NOT_DICOM)
    labels = np.asarray(labels)
    if labels.ndim == 2 and len(files) == 1:
        labels = labels[None]
    sources = source_datasets(files)
    grid = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if labels.shape != grid:
        raise ValueError(f"labels of shape {labels.shape} do not fit the DICOM series ({grid})")
    if not objects:
        raise ValueError("Nothing to save: the labels are empty.")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="napari-medsam",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        parameters={"model": model or "unknown"},
    )
    segments = np.zeros(labels.shape, dtype=np.uint16)  # segment numbers 1..N, in object order
    descriptions = []
    for number, obj in enumerate(objects, start=1):
        segments[labels == obj.label] = number
        category, kind = property_codes(obj.name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=obj.name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=f"label {obj.label}",
                tracking_uid=hd.UID(),
                display_color=hd.color.CIELabColor.from_rgb(*obj.color),
            )
        )
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-medsam",
        manufacturer_model_name="napari-medsam",
        software_versions=__version__,
        device_serial_number="napari-medsam",
        series_description="napari-medsam segmentation",
    )
    path = os.fspath(path)
    segmentation.save_as(path)
    return path


def source_datasets(files: Sequence[str]) -> list[Any]:
    """The headers of the source files, as a Segmentation references them.

    An empty SOP Class or Instance UID is taken from the file's meta information (the same
    values, by DICOM Part 10), and absent patient and study attributes of type 2 are empty; a
    series without Study or Series Instance UID (anonymised too far) cannot be referenced, and
    raises ValueError.
    """
    import pydicom

    sources = []
    for name in files:
        dataset = pydicom.dcmread(name, stop_before_pixels=True)
        meta = dataset.file_meta
        dataset.SOPClassUID = dataset.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", "")
        dataset.SOPInstanceUID = dataset.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID", "")
        for key in TYPE_2:
            if key not in dataset:
                setattr(dataset, key, "")
        missing = [key for key in UIDS if not str(dataset.get(key) or "").strip()]
        if missing:
            raise ValueError(
                f"{os.path.basename(name)} has no {' or '.join(missing)} (anonymised?): a DICOM "
                "Segmentation could not reference its series. Save as .seg.nrrd or .nii.gz instead."
            )
        sources.append(dataset)
    return sources
