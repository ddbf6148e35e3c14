"""Labels of a real CT series saved as a DICOM Segmentation, read back with pydicom and highdicom.

The test series (TotalSegmentator's, 20 slices of 512 x 512) is anonymised down to empty Study,
Series and SOP Instance UIDs in its datasets, so a Segmentation could not reference it: the test
series is a copy with its UIDs restored (pixel data untouched), and the series as it is must give
a clear error instead of a broken file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from napari.layers import Labels
from pydicom.uid import generate_uid

from napari_medsam import __version__
from napari_medsam._reader import read_layers
from napari_medsam._writer import napari_write_labels
from napari_medsam.io.dicom_seg import NOT_DICOM
from napari_medsam.io.volumes import read_volume
from realdata import CT_SM, DICOM_SERIES, SEG_DICOM

SPLEEN, LIVER = 1, 5


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """The test series with Study and Series Instance UIDs (SOP UIDs stay in the file meta only)."""
    folder = tmp_path_factory.mktemp("series")
    study, series = generate_uid(), generate_uid()
    for path in sorted(DICOM_SERIES.iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.save_as(folder / path.name)
    return folder


@pytest.fixture(scope="module")
def reference(series) -> np.ndarray:
    """The series' reference spleen and liver, resampled onto it (nearest neighbour), as data/README says."""
    import SimpleITK as sitk

    _, geometry = read_volume(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(geometry.source_files))
    ct = reader.Execute()
    seg = sitk.Resample(
        sitk.ReadImage(str(SEG_DICOM)), ct, sitk.Transform(), sitk.sitkNearestNeighbor
    )
    labels = sitk.GetArrayFromImage(seg).astype(np.uint16)
    return np.where(np.isin(labels, [SPLEEN, LIVER]), labels, 0)


def labels_layer(image_path: Path, data: np.ndarray) -> Labels:
    """A Labels layer as the widget makes it over the image read from ``image_path``."""
    [(_, kwargs, _)] = read_layers(str(image_path))
    metadata = {**kwargs["metadata"], "model": "lite-medsam"}
    features = {"index": [SPLEEN, LIVER], "name": ["spleen", "liver"]}
    return Labels(data, metadata=metadata, features=features, scale=kwargs["scale"], affine=kwargs["affine"])


def test_the_segmentation_references_its_series_and_each_frame_its_slice(tmp_path, series, reference):
    import highdicom as hd

    layer = labels_layer(series, reference)
    (path,) = napari_write_labels(str(tmp_path / "organs.dcm"), layer.data, layer._get_state())
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in read_volume(series)[1].source_files]
    source_uids = [s.file_meta.MediaStorageSOPInstanceUID for s in sources]

    seg = hd.seg.segread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} <= set(source_uids)
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["spleen", "liver"]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in segments] == ["78961009", "10200004"]
    assert {s.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning for s in segments} == {
        "Anatomical Structure"
    }
    assert {s.SegmentAlgorithmType for s in segments} == {"SEMIAUTOMATIC"}
    (algorithm,) = segments[0].SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("napari-medsam", __version__)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert algorithm.AlgorithmParameters == "model=lite-medsam"

    # every frame: the slice it references, the position of that slice, and its pixels
    frames = seg.pixel_array
    checked = set()
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = source_uids.index(uid)
        label = [SPLEEN, LIVER][int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) - 1]
        position = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in position], [float(v) for v in sources[k].ImagePositionPatient]
        )
        np.testing.assert_array_equal(frame.astype(bool), reference[k] == label)
        checked.add((k, label))
    expected = {
        (k, label)
        for label in (SPLEEN, LIVER)
        for k in range(len(reference))
        if (reference[k] == label).any()
    }
    assert checked == expected  # no slice left out, none made up
    assert len(checked) > 20


def test_an_anonymised_series_or_a_nifti_gives_a_clear_error_and_no_file(tmp_path, reference):
    layer = labels_layer(DICOM_SERIES, reference)
    with pytest.raises(ValueError, match="has no StudyInstanceUID or SeriesInstanceUID"):
        napari_write_labels(str(tmp_path / "a.dcm"), layer.data, layer._get_state())
    nifti = labels_layer(CT_SM, np.zeros((30, 101, 122), np.uint8))
    nifti.data[10, 20:30, 20:30] = SPLEEN
    with pytest.raises(ValueError, match=re.escape(NOT_DICOM)):
        napari_write_labels(str(tmp_path / "b.dcm"), nifti.data, nifti._get_state())
    assert list(tmp_path.iterdir()) == []
