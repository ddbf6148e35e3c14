"""Radiological display: real CT in NIfTI (RAS and LPS) and DICOM shows as 3D Slicer shows it.

The same CT is also stored in sagittal and coronal slice order (NIfTI, and a sagittal DICOM
series): it opens with axial slices under the slider all the same, and labels saved from it go
back on the file's own grid.

napari draws the first displayed world axis down the screen and the second to the right, so a
position on screen is read off the world coordinates of the layer: for an axial view (dims order
(0, 1, 2)) screen row = world[1], column = world[2]; coronal (1, 0, 2): row = world[0], column =
world[2]; sagittal (2, 0, 1): row = world[0], column = world[1]. Organs come from the reference
labels (TotalSegmentator's) of each scan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Labels, Shapes

from fakes import SpyPredictor
from napari_medsam._qt.new_layers import image_transforms
from napari_medsam._reader import read_layers
from napari_medsam._writer import napari_write_labels
from napari_medsam.base.jobs import run_to_end
from napari_medsam.io.orientation import layer_kwargs, nearest_axes, radiological_senses, to_axial
from napari_medsam.io.volumes import VolumeGeometry, read_volume
from napari_medsam.layers import segment as seg
from napari_medsam.layers.objects import labels_stats
from napari_medsam.layers.requests import LayerInputs, RunSettings
from realdata import CT_SM, DICOM_SERIES, SEG_DICOM, SEG_SM, ct_sm, label_names
from test_volume_io import write_dicom_series

ORGANS = {name: label for label, name in label_names().items()}
VIEWS = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
#: Axis orders that store the axial CT as sagittal slices (left-right first) or coronal ones.
RESTACKED = {"sagittal": (2, 0, 1), "coronal": (1, 0, 2)}
STORAGES = ["RAS NIfTI", "LPS NIfTI", "DICOM", "sagittal NIfTI", "coronal NIfTI", "sagittal DICOM"]


def lps_copy(path: Path, source: Path) -> Path:
    """``source`` (an RAS NIfTI) stored the other way round: rows and columns reversed, LPS identity."""
    import SimpleITK as sitk

    array, geometry = read_volume(source)
    corner = geometry.affine @ [0, array.shape[1] - 1, array.shape[2] - 1, 1]  # the new first voxel
    image = sitk.GetImageFromArray(np.ascontiguousarray(array[:, ::-1, ::-1]))
    VolumeGeometry(geometry.spacing, tuple(corner[:3]), tuple(map(tuple, np.eye(3)))).apply_to(image)
    sitk.WriteImage(image, str(path))
    return path


def restacked(path: Path, source: Path, view: str) -> Path:
    """``source`` stored as ``view`` slices: its axes re-ordered, every voxel where it was."""
    import SimpleITK as sitk

    array, geometry = read_volume(source)
    order = RESTACKED[view]
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(order)))
    geometry.transposed(order).apply_to(image)
    sitk.WriteImage(image, str(path))
    return path


def restacked_series(folder: Path, source: Path, view: str) -> Path:
    """``source`` as a DICOM series of ``view`` slices."""
    array, geometry = read_volume(source)
    moved = geometry.transposed(RESTACKED[view])
    write_dicom_series(folder, array.transpose(RESTACKED[view]), moved.spacing, moved.origin, moved.direction)
    return folder


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(CT, reference labels) per storage: the RAS NIfTI, an LPS copy, the DICOM series, restacks."""
    folder = tmp_path_factory.mktemp("stored")
    scans = {
        "RAS NIfTI": (CT_SM, SEG_SM),
        "LPS NIfTI": (lps_copy(folder / "ct.nii.gz", CT_SM), lps_copy(folder / "ct_seg.nii.gz", SEG_SM)),
        "DICOM": (DICOM_SERIES, SEG_DICOM),
    }
    for view in RESTACKED:
        scans[f"{view} NIfTI"] = (
            restacked(folder / f"{view}.nii.gz", CT_SM, view),
            restacked(folder / f"{view}_seg.nii.gz", SEG_SM, view),
        )
    scans["sagittal DICOM"] = (
        restacked_series(folder / "sagittal_series", CT_SM, "sagittal"),
        scans["sagittal NIfTI"][1],
    )
    return scans


def layer_of(path: Path) -> Image | Labels:
    """The layer napari gets from our reader."""
    ((data, kwargs, kind),) = read_layers(str(path))
    return Labels(data, **kwargs) if kind == "labels" else Image(data, **kwargs)


def on_screen(layer: Labels, organ: str, view: str) -> np.ndarray:
    """(row, column) on screen of an organ's centroid, in a view, in world units (mm)."""
    world = layer.data_to_world(np.argwhere(layer.data == ORGANS[organ]).mean(axis=0))
    return np.asarray(world)[list(VIEWS[view][-2:])]


def test_a_data_axis_is_matched_to_its_nearest_patient_axis():
    tilt = np.radians(20)
    oblique = [[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]]
    assert nearest_axes(oblique) == (0, 1, 2)
    assert nearest_axes([[1, 0, 0], [0, 0, -1], [0, 1, 0]]) == (0, 2, 1)  # rows run left-right
    assert nearest_axes([[0, 0, 1], [0.9, 0.43, 0], [-0.43, 0.9, 0]]) == (1, 2, 0)


@pytest.mark.parametrize("storage", STORAGES)
def test_world_is_the_patient_position_with_superior_negated(scans, storage):
    ct_path, _ = scans[storage]
    array, geometry = read_volume(ct_path)
    layer = layer_of(ct_path)
    axial, axial_geometry = to_axial(array, geometry)
    np.testing.assert_array_equal(layer.data, axial)  # the file's voxels, axes re-ordered
    if storage.startswith(tuple(RESTACKED)):  # the axial slices under the slider, whatever the storage
        np.testing.assert_array_equal(layer.data, ct_sm()[0])
        assert VolumeGeometry.from_dict(layer.metadata["geometry"]).file_axes is not None
    np.testing.assert_allclose(layer.scale, axial_geometry.spacing)
    for index in ([0, 0, 0], [5, 17, 40], np.array(axial.shape) - 1):
        lps = (axial_geometry.affine @ [*index, 1])[:3]
        np.testing.assert_allclose(layer.data_to_world(index), radiological_senses(3) * lps, atol=1e-4)


@pytest.mark.parametrize("view", list(RESTACKED))
def test_labels_saved_from_a_restacked_scan_go_back_on_its_file_grid(scans, view, tmp_path):
    """Labels made on the axial display, saved by the plugin: equal to the file-grid reference."""
    image = layer_of(scans[f"{view} NIfTI"][0])
    reference, _ = read_volume(scans[f"{view} NIfTI"][1])
    made = ct_sm()[1]  # the reference as the display shows it: axial
    written, _ = napari_write_labels(
        str(tmp_path / "seg.nii.gz"), made, {"metadata": image.metadata, "name": "seg"}
    )
    back, geometry = read_volume(written)
    np.testing.assert_array_equal(back, reference)  # Dice 1 on every organ
    np.testing.assert_allclose(geometry.affine, read_volume(scans[f"{view} NIfTI"][0])[1].affine, atol=1e-5)


@pytest.mark.parametrize("storage", STORAGES)
def test_organs_land_where_3d_slicer_shows_them(scans, storage):
    labels = layer_of(scans[storage][1])
    assert isinstance(labels, Labels)
    # axial: the patient's right (liver) on the screen's left, the spine at the bottom (posterior)
    liver, spleen = on_screen(labels, "liver", "axial"), on_screen(labels, "spleen", "axial")
    assert liver[1] + 100 < spleen[1]
    spine, stomach = on_screen(labels, "vertebrae_T12", "axial"), on_screen(labels, "stomach", "axial")
    assert stomach[0] + 50 < spine[0]
    assert on_screen(labels, "aorta", "axial")[0] + 10 < spine[0]  # the aorta lies in front of the spine
    # coronal: superior up (T11 above T12), the patient's right on the left
    t11, t12 = on_screen(labels, "vertebrae_T11", "coronal"), on_screen(labels, "vertebrae_T12", "coronal")
    assert t11[0] + 10 < t12[0]
    assert on_screen(labels, "liver", "coronal")[1] + 100 < on_screen(labels, "spleen", "coronal")[1]
    # sagittal: superior up, anterior (stomach) on the left of the spine
    assert (
        on_screen(labels, "vertebrae_T11", "sagittal")[0] < on_screen(labels, "vertebrae_T12", "sagittal")[0]
    )
    assert (
        on_screen(labels, "stomach", "sagittal")[1] + 50 < on_screen(labels, "vertebrae_T12", "sagittal")[1]
    )


def test_labels_stored_another_way_overlay_their_scan_without_resampling(scans):
    """The series' labels are stored with rows reversed: same world position, mirrored rows."""
    ct, labels = layer_of(scans["DICOM"][0]), layer_of(scans["DICOM"][1])
    rows = ct.data.shape[1]
    for index in ([3, 100, 200], [17, 400, 31]):
        expected = [index[0], rows - 1 - index[1], index[2]]
        np.testing.assert_allclose(ct.world_to_data(labels.data_to_world(index)), expected, atol=1e-4)
    # the liver of the reference labels lies on liver-like HU of the scan (mean 40-90 HU enhanced)
    liver = np.argwhere(labels.data == ORGANS["liver"])[::50]
    inside = np.round([ct.world_to_data(labels.data_to_world(i)) for i in liver]).astype(int)
    assert 40 < np.median(ct.data[tuple(inside.T)]) < 200


@pytest.mark.parametrize("made", ["by napari", "over the image"])
def test_a_box_drawn_on_screen_segments_the_voxels_under_it(scans, made):
    """A Shapes layer of napari's own (data = world) or one with the image's transforms (flips)."""
    image, reference = layer_of(scans["RAS NIfTI"][0]), layer_of(scans["RAS NIfTI"][1])
    z = 20
    rows, cols = np.nonzero(reference.data[z] == ORGANS["liver"])
    r0, c0, r1, c1 = rows.min(), cols.min(), rows.max(), cols.max()
    corners = [[z, r, c] for r, c in [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]]
    world = np.array([image.data_to_world(c) for c in corners])  # what the user's drag spans
    drawn = Shapes(ndim=3, **(image_transforms(image) if made == "over the image" else {}))
    drawn.add_rectangles(np.array([drawn.world_to_data(w) for w in world]))  # as napari turns a drag
    spy = SpyPredictor()
    settings = RunSettings(window=None, source="spy", device="cpu")
    point = tuple(world[0])
    inputs = LayerInputs(image, None, drawn, None, point, VIEWS["axial"])
    request = seg.read_segment_request(inputs, settings)
    run_to_end(seg.segment_steps(request, lambda source, device: spy))
    (box,) = [p["box"] for p in spy.prompts]
    np.testing.assert_allclose(box, (c0, r0, c1, r1), atol=1e-6)
    assert next(iter(request.slices)).fixed == ((0, z),)


@pytest.mark.parametrize("placement", ["negative scale", "scale in the affine", "reader (flips in affine)"])
def test_volume_in_ml_comes_from_the_voxel_size_whatever_the_transform(placement):
    labels = np.zeros((10, 40, 40), np.uint8)
    labels[2:7, 10:30, 5:25] = 3  # a 5 x 20 x 20 voxel box
    spacing = (2.0, 0.5, 0.5)
    if placement == "negative scale":
        kwargs = {"scale": (-2.0, 0.5, -0.5), "units": "mm"}
    elif placement == "scale in the affine":
        kwargs = {"affine": np.diag([*spacing, 1.0]), "units": "mm"}
    else:
        kwargs = layer_kwargs(VolumeGeometry(spacing, (0.0, 0.0, 0.0), ((1, 0, 0), (0, -1, 0), (0, 0, -1))))
    layer = Labels(labels, **kwargs)
    image = Image(np.full(labels.shape, 55, np.int16), **kwargs)
    (stats,) = labels_stats(layer, image, VIEWS["axial"], 3)
    assert stats.voxels == 2000
    assert stats.volume_ml == pytest.approx(2000 * 2.0 * 0.5 * 0.5 / 1000)  # 1 mL
    assert stats.slices == 5
    assert stats.mean_intensity == 55
    assert labels_stats(Labels(labels), None)[0].volume_ml is None  # pixels are no length


@pytest.mark.gui
@pytest.mark.parametrize("storage", ["RAS NIfTI", "sagittal NIfTI", "coronal NIfTI"])
def test_napari_draws_the_axial_slice_radiologically(make_napari_viewer, scans, storage):
    """What is rendered under the slider: the liver left of the spleen, the spine below the stomach."""
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders nothing
    ((data, kwargs, _),) = read_layers(str(scans[storage][1]))
    shown = {"liver": (1, 0, 0), "spleen": (0, 1, 0), "vertebrae_T12": (0, 0, 1), "stomach": (1, 1, 0)}
    colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)} | {ORGANS[o]: (*rgb, 1) for o, rgb in shown.items()}
    labels = viewer.add_labels(data, **{**kwargs, "colormap": colors, "opacity": 1.0})
    viewer.dims.set_point(0, labels.data_to_world([20, 0, 0])[0])
    viewer.reset_view()
    picture = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)

    def centre(rgb):
        ys, xs = np.nonzero(np.all(np.abs(picture - np.array(rgb) * 255) < 40, axis=-1))
        assert len(ys) > 50
        return ys.mean(), xs.mean()

    liver, spleen = centre(shown["liver"]), centre(shown["spleen"])
    spine, stomach = centre(shown["vertebrae_T12"]), centre(shown["stomach"])
    assert liver[1] < spleen[1]  # the patient's right on the screen's left
    assert stomach[0] < spine[0]  # anterior up
