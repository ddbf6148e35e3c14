"""Volumes in, labels out: geometry kept exactly, foreign files ignored, corrupt ones named."""

from __future__ import annotations

import gzip
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_medsam._reader import napari_get_reader, read_layers
from napari_medsam._writer import ImageInfo, labels_geometry, napari_write_labels
from napari_medsam.base.windows import SOFT_TISSUE
from napari_medsam.io.orientation import layer_kwargs, to_axial
from napari_medsam.io.volumes import VolumeGeometry, read_volume, write_labels

SPACING = (2.5, 0.7, 0.9)  # (k, j, i) = slice, row, column spacing in mm: anisotropic
ORIGIN = (-40.0, 12.5, -101.25)  # (z, y, x) of the first voxel
# A direction that swaps and flips axes, in napari order (rows: physical z, y, x).
DIRECTION = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))


def ct_volume(shape=(10, 40, 48), seed=0):
    """HU volume (int16): an ellipsoid of +100 HU over soft tissue in noise, air at the border."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = [(n - 1) / 2 for n in shape]
    radii = [shape[0] * 0.35, shape[1] * 0.3, shape[2] * 0.25]
    truth = sum(((a - c) / r) ** 2 for a, c, r in zip((k, j, i), centre, radii, strict=True)) <= 1.0
    hu = rng.normal(40.0, 20.0, shape)
    hu[truth] += 100.0
    hu[:, :2, :] = -1000.0  # a strip of air, as around a patient
    return np.round(hu).astype(np.int16), truth


def write_nifti(path: Path, array: np.ndarray, geometry: VolumeGeometry) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    geometry.apply_to(image)
    sitk.WriteImage(image, str(path))


def write_dicom_series(folder: Path, hu: np.ndarray, spacing, origin, direction=None) -> list[Path]:
    """One CT file per slice (axis 0), stored unsigned with rescale intercept -2048, shuffled names.

    ``direction`` (napari order, default identity) places the slices: a sagittal or coronal
    series is a volume whose axis 0 runs left-right or anterior-posterior.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    geometry = VolumeGeometry(spacing, origin, direction if direction is not None else np.eye(3))
    columns, rows = np.asarray(geometry.direction)[::-1, 2], np.asarray(geometry.direction)[::-1, 1]
    paths = []
    order = np.random.default_rng(1).permutation(len(hu))  # file names do not follow the slices
    for k in range(len(hu)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.Modality = "phantom", "Phantom^CT", "CT"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [round(float(v), 4) for v in (geometry.affine @ [k, 0, 0, 1])[2::-1]]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*columns, *rows)]  # x, y, z
        ds.PixelSpacing = [spacing[1], spacing[2]]  # row spacing, column spacing
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -2048, 1
        ds.PixelData = (hu[k].astype(np.int32) + 2048).astype(np.uint16).tobytes()
        path = folder / f"IM{order[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def ct():
    return ct_volume()


@pytest.fixture
def geometry(ct):
    return VolumeGeometry(SPACING, ORIGIN, DIRECTION, shape=ct[0].shape)


def assert_same_geometry(a: VolumeGeometry, b: VolumeGeometry, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)
    assert a.shape == b.shape


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_read_volume_keeps_voxel_grid_and_geometry(tmp_path, ct, geometry, suffix):
    hu, _ = ct
    path = tmp_path / f"ct{suffix}"
    write_nifti(path, hu, geometry)
    array, read = read_volume(path)
    assert array.dtype == np.int16
    np.testing.assert_array_equal(array, hu)  # (k, j, i): no reorientation, no resampling
    assert_same_geometry(read, geometry)
    # index -> physical position through the affine matches ITK's own mapping
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    idx = (3, 7, 5)  # napari order
    expected = image.TransformIndexToPhysicalPoint(idx[::-1])[::-1]
    np.testing.assert_allclose((read.affine @ [*idx, 1.0])[:3], expected, atol=1e-4)


def test_dicom_series_reads_in_hounsfield_units_with_its_geometry(tmp_path, ct):
    hu, _ = ct
    paths = write_dicom_series(tmp_path / "series", hu, SPACING, ORIGIN)
    (tmp_path / "series" / "notes.txt").write_text("not DICOM")
    array, geometry = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(array, hu)  # sorted by position, rescale applied
    assert np.issubdtype(array.dtype, np.signedinteger)
    assert array.min() == hu.min() == -1000
    np.testing.assert_allclose(geometry.spacing, SPACING, atol=1e-6)
    np.testing.assert_allclose(geometry.origin, ORIGIN, atol=1e-6)
    np.testing.assert_allclose(geometry.direction, np.eye(3), atol=1e-6)
    assert geometry.modality == "CT"
    # one file of the series reads the whole series
    array_from_file, _ = read_volume(paths[4])
    np.testing.assert_array_equal(array_from_file, hu)


def test_a_folder_with_two_series_reads_the_largest_or_the_one_of_a_file(tmp_path, ct):
    hu, _ = ct
    write_dicom_series(tmp_path / "big", hu, SPACING, ORIGIN)
    small = write_dicom_series(tmp_path / "small", hu[:3] + 7, SPACING, ORIGIN)
    for path in small:
        path.rename(tmp_path / "big" / f"small_{path.name}")
    array, _ = read_volume(tmp_path / "big")
    np.testing.assert_array_equal(array, hu)
    array, _ = read_volume(tmp_path / "big" / f"small_{small[0].name}")
    np.testing.assert_array_equal(array, hu[:3] + 7)


def test_dicom_and_nifti_of_the_same_scan_agree(tmp_path, ct):
    hu, _ = ct
    write_dicom_series(tmp_path / "series", hu, SPACING, ORIGIN)
    dicom_array, dicom_geometry = read_volume(tmp_path / "series")
    nifti = tmp_path / "ct.nii.gz"
    write_nifti(nifti, dicom_array, dicom_geometry)
    nifti_array, nifti_geometry = read_volume(nifti)
    np.testing.assert_array_equal(nifti_array, dicom_array)
    assert_same_geometry(nifti_geometry, dicom_geometry)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_labels_round_trip_read_segment_write_read(tmp_path, ct, geometry, suffix):
    hu, truth = ct
    write_nifti(tmp_path / "ct.nii.gz", hu, geometry)
    _, image_geometry = read_volume(tmp_path / "ct.nii.gz")
    labels = np.where(truth, 3, 0).astype(np.int32)
    labels[0, 0, 0] = 300  # needs 16 bits
    out = write_labels(tmp_path / f"labels{suffix}", labels, image_geometry)
    back, back_geometry = read_volume(out)
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.uint16
    assert_same_geometry(back_geometry, image_geometry)


def test_write_labels_rejects_what_it_cannot_write(tmp_path, geometry):
    labels = np.zeros(geometry.shape, np.uint8)
    with pytest.raises(ValueError, match=r"\.nii\.gz"):
        write_labels(tmp_path / "labels.tif", labels, geometry)
    with pytest.raises(ValueError, match="do not fit"):
        write_labels(tmp_path / "labels.nii.gz", labels[:-1], geometry)
    with pytest.raises(ValueError, match="integers"):
        write_labels(tmp_path / "labels.nii.gz", labels + 0.5, geometry)


def test_reader_contribution_gives_a_layer_placed_in_the_world(tmp_path, ct, geometry):
    from napari.layers import Image

    hu, _ = ct
    path = tmp_path / "abdomen.nii.gz"
    write_nifti(path, hu, geometry)
    reader = napari_get_reader(str(path))
    assert reader is not None
    [(data, kwargs, layer_type)] = reader(str(path))
    assert layer_type == "image"
    assert kwargs["name"] == "abdomen"
    # DIRECTION swaps rows and columns (file axis 1 runs left, axis 2 anterior): the reader shows
    # the file's axes 1 and 2 swapped, a view of the file's voxels, so rows run anterior-posterior
    np.testing.assert_array_equal(data, hu.transpose(0, 2, 1))
    assert data.base is not None  # a view of the voxels read, not a copy
    np.testing.assert_allclose(kwargs["scale"], np.asarray(SPACING)[[0, 2, 1]], atol=1e-6)
    layer = Image(data, **kwargs)
    for k, j, i in ([0, 0, 0], [3, 7, 5]):
        z, y, x = (geometry.affine @ [k, i, j, 1.0])[:3]  # the file's voxel (k, i, j) is shown at (k, j, i)
        np.testing.assert_allclose(layer.data_to_world([k, j, i]), [-z, y, x], atol=1e-5)
    assert kwargs["units"] == "mm"
    assert kwargs["contrast_limits"] == SOFT_TISSUE  # data still in HU
    stored = VolumeGeometry.from_dict(kwargs["metadata"]["geometry"])
    assert stored.file_axes == (0, 2, 1)
    assert_same_geometry(stored.file_grid(), geometry)


def test_reader_opens_segmentations_as_labels(tmp_path, ct, geometry):
    _, truth = ct
    write_labels(tmp_path / "liver.seg.nrrd", truth.astype(np.uint8), geometry)
    write_labels(tmp_path / "case1_label.nii.gz", truth.astype(np.uint8), geometry)
    for name, layer_name in [("liver.seg.nrrd", "liver"), ("case1_label.nii.gz", "case1_label")]:
        [(data, kwargs, layer_type)] = read_layers(str(tmp_path / name))
        assert layer_type == "labels"
        assert kwargs["name"] == layer_name
        np.testing.assert_array_equal(data, to_axial(truth, geometry)[0])


def test_reader_returns_none_for_foreign_files(tmp_path, ct):
    (tmp_path / "notes.txt").write_text("hello")
    np.save(tmp_path / "array.npy", np.zeros((3, 4)))
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    (tmp_path / "empty_folder").mkdir()
    text_folder = tmp_path / "text_folder"
    text_folder.mkdir()
    (text_folder / "a.txt").write_text("x" * 200)
    for path in ["notes.txt", "array.npy", "photo.png", "empty_folder", "text_folder"]:
        assert napari_get_reader(str(tmp_path / path)) is None, path
    write_dicom_series(tmp_path / "series", ct[0][:2], SPACING, ORIGIN)
    assert napari_get_reader(str(tmp_path / "series")) is not None
    assert napari_get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) is None


def test_corrupt_files_give_a_clear_error_naming_the_file(tmp_path, ct, geometry):
    hu, _ = ct
    corrupt = []
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a NIfTI file" * 10)
    corrupt.append(garbage)
    for suffix in [".nii", ".nii.gz", ".nrrd", ".mha"]:  # downloads cut in half
        good = tmp_path / f"good{suffix}"
        write_labels(good, (hu > 0).astype(np.uint8) * np.arange(10)[:, None, None], geometry)
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        corrupt.append(cut)
    short = tmp_path / "short_payload.nii.gz"  # a valid gzip stream holding too little data
    short.write_bytes(gzip.compress(gzip.decompress((tmp_path / "good.nii.gz").read_bytes())[:900]))
    corrupt.append(short)
    bad_dicom = tmp_path / "bad.dcm"
    bad_dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    corrupt.append(bad_dicom)
    for path in corrupt:
        reader = napari_get_reader(str(path))
        assert reader is not None  # claimed by name ...
        with pytest.raises(ValueError, match=re.escape(path.name)) as info:
            reader(str(path))  # ... and a clear error, not zeros or a crash deep in ITK
        assert "sitk::ERROR" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"missing\.nii"):
        read_volume(tmp_path / "missing.nii")


def test_writer_contribution_saves_with_the_image_geometry(tmp_path, ct, geometry):
    hu, truth = ct
    write_nifti(tmp_path / "ct.nii.gz", hu, geometry)
    [(_, kwargs, _)] = read_layers(str(tmp_path / "ct.nii.gz"))
    attributes = {"scale": kwargs["scale"], "translate": kwargs["translate"]}
    labels = to_axial(truth.astype(np.uint8) * 2, geometry)[0]  # on the layer's (axial) grid
    # labels made by the widget carry the image metadata
    written, sidecar = napari_write_labels(
        str(tmp_path / "seg.nii.gz"), labels, {**attributes, "metadata": kwargs["metadata"]}
    )
    back, back_geometry = read_volume(written)
    np.testing.assert_array_equal(back, truth.astype(np.uint8) * 2)  # back on the file's grid
    assert_same_geometry(back_geometry, geometry)
    assert sidecar == str(tmp_path / "seg.nii.gz.labels.json")  # the object names


def test_writer_finds_the_image_geometry_of_labels_without_metadata(ct, geometry):
    hu, _ = ct
    kwargs = layer_kwargs(geometry)
    scale, translate = np.asarray(kwargs["scale"]), np.asarray(kwargs["translate"])
    oblique = ImageInfo("oblique", kwargs["metadata"], scale, translate)
    straight_geometry = VolumeGeometry.identity(hu.shape, SPACING, ORIGIN)
    straight = ImageInfo("straight", layer_kwargs(straight_geometry)["metadata"], scale, translate)
    attributes = {"scale": scale, "translate": translate, "metadata": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = labels_geometry(hu.shape, {**attributes, "name": "x"}, [oblique])
        named = labels_geometry(
            hu.shape, {**attributes, "name": "oblique - Labels"}, [straight, oblique]
        )
    assert_same_geometry(found, geometry)  # direction recovered from the matching image
    assert_same_geometry(named, geometry)  # the image the labels are named after wins
    with pytest.warns(UserWarning, match="Several images"):
        labels_geometry(hu.shape, {**attributes, "name": "x"}, [straight, oblique])
    moved = {**attributes, "translate": [0.0, 0.0, 0.0]}
    with pytest.warns(UserWarning, match="axis-aligned"):
        fallback = labels_geometry(hu.shape, moved, [oblique])
    np.testing.assert_allclose(fallback.spacing, SPACING)
    np.testing.assert_allclose(fallback.origin, 0.0)
    np.testing.assert_allclose(fallback.direction, np.eye(3))


def test_geometry_conversions_are_exact_inverses(geometry):
    import SimpleITK as sitk

    image = sitk.Image([48, 40, 10], sitk.sitkUInt8)
    geometry.apply_to(image)
    assert image.GetSpacing() == SPACING[::-1]
    assert image.GetOrigin() == ORIGIN[::-1]
    assert VolumeGeometry.from_itk(image) == geometry
    assert VolumeGeometry.from_dict(geometry.to_dict()) == geometry
    with pytest.raises(ValueError, match="spacing"):
        VolumeGeometry((1.0, 0.0), (0.0, 0.0), ((1.0, 0.0), (0.0, 1.0)))


def test_npe2_reads_and_writes_through_the_manifest(tmp_path, ct, geometry):
    import npe2

    hu, truth = ct
    npe2.PluginManager.instance().discover()
    write_nifti(tmp_path / "ct.nii.gz", hu, geometry)
    [(data, kwargs, layer_type)] = npe2.read(
        [str(tmp_path / "ct.nii.gz")], stack=False, plugin_name="napari-medsam"
    )
    assert layer_type == "image"
    np.testing.assert_array_equal(data, to_axial(hu, geometry)[0])
    labels = (to_axial(truth.astype(np.uint8), geometry)[0], {**kwargs, "name": "seg"}, "labels")
    written = npe2.write(str(tmp_path / "seg"), [labels], plugin_name="napari-medsam")
    # the first extension is the default; the object names go beside it
    assert written == [str(tmp_path / "seg.nii.gz"), str(tmp_path / "seg.nii.gz.labels.json")]
    back, back_geometry = read_volume(written[0])
    np.testing.assert_array_equal(back, truth)
    assert_same_geometry(back_geometry, geometry)


@pytest.mark.gui
def test_napari_opens_volumes_and_saves_labels_that_overlay(
    make_napari_viewer, tmp_path, ct, geometry
):
    hu, truth = ct
    write_dicom_series(tmp_path / "series", hu, SPACING, ORIGIN)
    write_nifti(tmp_path / "oblique.nii.gz", hu, geometry)
    viewer = make_napari_viewer()
    [dicom] = viewer.open(str(tmp_path / "series"), plugin="napari-medsam")
    np.testing.assert_allclose(dicom.scale, SPACING)
    np.testing.assert_allclose(dicom.translate, ORIGIN)
    np.testing.assert_array_equal(dicom.data, hu)
    [image] = viewer.open(str(tmp_path / "oblique.nii.gz"), plugin="napari-medsam")
    # napari's own "new labels" copies scale and translate but not the metadata
    viewer.layers.selection.active = image
    viewer._new_labels()
    labels = viewer.layers[-1]
    assert "geometry" not in labels.metadata
    labels.data[to_axial(truth, geometry)[0]] = 1
    out = tmp_path / "seg.nrrd"
    labels.save(str(out), plugin="napari-medsam")
    back, back_geometry = read_volume(out)
    np.testing.assert_array_equal(back, truth)
    assert_same_geometry(back_geometry, geometry)  # direction found on the matching image
