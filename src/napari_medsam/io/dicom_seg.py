"""Labels of a DICOM series as a DICOM Segmentation (highdicom), referencing the source instances.

One BINARY segment per object, labelled with its name, its label id as tracking id ("label N")
and its colour (8 bits per channel, as CIELab); its category and type come from
:mod:`napari_medsam.io.terminology`. Frame ``k`` of the label array belongs to source file ``k``
(the series' files in the order the volume was read, kept in ``VolumeGeometry.source_files``);
highdicom leaves out frames without any segment. :func:`read_dicom_seg` reads any
Segmentation back, onto its source series when that is at hand.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_medsam.base.atomic import atomic_path
from napari_medsam.base.objects import LabelObject, label_objects
from napari_medsam.io.formats import is_dicom_file
from napari_medsam.io.terminology import property_codes
from napari_medsam.io.volumes import VolumeGeometry

#: SOP Class UID of DICOM Segmentation Storage.
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_TRACKING_ID = re.compile(r"label (\d+)")

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
                display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in obj.color)),
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
    with atomic_path(path) as tmp:
        segmentation.save_as(tmp)
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


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """True for a DICOM file whose SOP class is Segmentation Storage (read from its file meta)."""
    import pydicom

    if not os.path.isfile(path) or not is_dicom_file(path):
        return False
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # a probe must never raise
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == SEGMENTATION_STORAGE


def read_dicom_seg(
    path: str | os.PathLike, sources: Sequence[VolumeGeometry] = ()
) -> tuple[np.ndarray, VolumeGeometry, list[LabelObject]]:
    """A DICOM Segmentation as one label volume (napari order), its geometry and its segments.

    When one of ``sources`` (geometries of open DICOM series) is the series the Segmentation
    references, the labels are on that series' file grid, frame ``k`` on source file ``k``.
    Otherwise they are on the Segmentation's own grid (from its plane positions), with a warning
    that names the series to open. Label ids are the "label N" tracking ids napari-medsam
    writes, else the segment numbers; names are the segment labels, colours the recommended
    display colours. Raises ValueError for a file that is not a readable Segmentation.
    """
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
    except Exception as error:  # pydicom and highdicom raise many types for foreign files
        raise ValueError(f"{os.fspath(path)} is not a readable DICOM Segmentation: {error}") from error
    numbers, names, colors = [], {}, {}
    for item in seg.SegmentSequence:
        numbers.append(int(item.SegmentNumber))
        names[int(item.SegmentNumber)] = str(getattr(item, "SegmentLabel", "") or "")
        if "RecommendedDisplayCIELabValue" in item:
            rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
            colors[int(item.SegmentNumber)] = [c / 255 for c in rgb]
    ids = _label_ids(seg.SegmentSequence)
    series = [str(s.SeriesInstanceUID) for s in getattr(seg, "ReferencedSeriesSequence", [])]
    source = next((g for g in sources if g.source_files and _series_uid(g.source_files) in series), None)
    if source is not None:
        grid = source.file_grid()
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[d.SOPInstanceUID for d in source_datasets(grid.source_files or ())],
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    else:
        warnings.warn(
            f"{os.path.basename(os.fspath(path))}: its source series ({', '.join(series) or 'not named'}) "
            "is not open, so the labels open on the Segmentation's own grid. Open the series first "
            "to get them on its grid.",
            stacklevel=2,
        )
        import SimpleITK as sitk

        image = seg.get_volume(combine_segments=True).to_simpleitk()
        pixels, grid = sitk.GetArrayFromImage(image), VolumeGeometry.from_itk(image)
    lut = np.zeros(max(numbers, default=0) + 1, dtype=np.min_scalar_type(max(ids.values(), default=0)))
    for number, label in ids.items():
        lut[number] = label
    objects = label_objects(
        [ids[n] for n in numbers], {ids[n]: names[n] for n in numbers}, {ids[n]: c for n, c in colors.items()}
    )
    return lut[np.asarray(pixels, dtype=np.int64)], grid, objects


def _label_ids(segments: Sequence[Any]) -> dict[int, int]:
    """Segment number -> label id: the "label N" tracking ids when every segment has its own."""
    numbers = [int(item.SegmentNumber) for item in segments]
    tracked = [_TRACKING_ID.fullmatch(str(getattr(item, "TrackingID", "") or "")) for item in segments]
    labels = [int(m[1]) for m in tracked if m and int(m[1]) > 0]
    if len(labels) == len(numbers) and len(set(labels)) == len(labels):
        return dict(zip(numbers, labels, strict=True))
    return {n: n for n in numbers}


def _series_uid(files: Sequence[str]) -> str | None:
    import pydicom

    try:
        return str(pydicom.dcmread(files[0], stop_before_pixels=True).get("SeriesInstanceUID") or "") or None
    except Exception:  # an unreadable reference is simply not the source
        return None

