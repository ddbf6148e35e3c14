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
from napari_medsam.io.dicom_seg import NOT_DICOM, is_dicom_seg
from napari_medsam.io.label_files import load_labels
from napari_medsam.io.volumes import VolumeGeometry, read_volume
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


def saved_segmentation(tmp_path: Path, series: Path, reference: np.ndarray) -> tuple[str, dict[int, tuple]]:
    """The reference saved as a Segmentation with colours of its own; returns the path and the colours."""
    layer = labels_layer(series, reference)
    colors = {SPLEEN: (51 / 255, 102 / 255, 153 / 255), LIVER: (204 / 255, 26 / 255, 77 / 255)}  # 8 bits
    layer.colormap = {None: (0, 0, 0, 1), 0: (0, 0, 0, 0)} | {k: (*rgb, 1.0) for k, rgb in colors.items()}
    (path,) = napari_write_labels(str(tmp_path / "organs.dcm"), layer.data, layer._get_state())
    return path, colors


def test_a_segmentation_reads_back_on_its_series_with_names_and_colours(tmp_path, series, reference):
    path, colors = saved_segmentation(tmp_path, series, reference)
    assert is_dicom_seg(path)
    assert not is_dicom_seg(read_volume(series)[1].source_files[0])
    [(_, image_kwargs, _)] = read_layers(str(series))
    source = VolumeGeometry.from_dict(image_kwargs["metadata"]["geometry"])
    labels, geometry, objects = load_labels(path, [VolumeGeometry.identity((20, 512, 512)), source])
    np.testing.assert_array_equal(labels, reference)  # every voxel, on the series' grid
    assert geometry == source
    assert [(o.label, o.name) for o in objects] == [(SPLEEN, "spleen"), (LIVER, "liver")]
    for obj in objects:  # DICOM keeps 8 bits per channel (as CIELab): these come back exactly
        np.testing.assert_allclose(obj.color, colors[obj.label], atol=1e-9)


@pytest.mark.gui
def test_file_open_puts_a_segmentation_on_the_open_series(make_napari_viewer, tmp_path, series, reference):
    path, colors = saved_segmentation(tmp_path, series, reference)
    viewer = make_napari_viewer()
    [image] = viewer.open(str(series), plugin="napari-medsam")
    [labels] = viewer.open(path, plugin="napari-medsam")
    assert isinstance(labels, Labels)
    np.testing.assert_array_equal(labels.data, reference)
    assert labels.features["name"].tolist() == ["spleen", "liver"]
    shown = labels.colormap.map([SPLEEN, LIVER])[:, :3]
    np.testing.assert_allclose(shown, [colors[SPLEEN], colors[LIVER]], atol=1 / 255)
    for index in ([0, 0, 0], [7, 300, 100]):
        np.testing.assert_allclose(labels.data_to_world(index), image.data_to_world(index), atol=1e-4)


def test_a_segmentation_without_its_series_opens_on_its_own_grid_with_a_message(tmp_path, series, reference):
    path, _ = saved_segmentation(tmp_path, series, reference)
    [(_, image_kwargs, _)] = read_layers(str(series))
    placement = {k: v for k, v in image_kwargs.items() if k in ("scale", "translate", "affine")}
    image = Labels(np.zeros((20, 512, 512), np.uint8), **placement)
    with pytest.warns(UserWarning, match=r"source series \(.+\) is not open.+Open the series first"):
        [(data, kwargs, kind)] = read_layers(path)
    assert kind == "labels"
    own = Labels(data, **kwargs)
    assert own.features["name"].tolist() == ["spleen", "liver"]
    for label in (SPLEEN, LIVER):  # as many voxels as on the series, centred at the same place
        assert np.count_nonzero(data == label) == np.count_nonzero(reference == label)
        world = own.data_to_world(np.argwhere(data == label).mean(axis=0))
        expected = image.data_to_world(np.argwhere(reference == label).mean(axis=0))
        np.testing.assert_allclose(world, expected, atol=1e-3)
