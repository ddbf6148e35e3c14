"""napari layers <-> core requests, without a viewer or a display: read, run, write one undo step."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels, Points, Shapes

from conftest import rectangle
from fakes import SpyPredictor
from napari_medsam.base.jobs import run_to_end
from napari_medsam.base.label_policy import AFTER, BEFORE, assign_label_ids, end_object, slices_past
from napari_medsam.layers import segment as seg
from napari_medsam.layers import volume as vol
from napari_medsam.layers.labels import write_planes
from napari_medsam.layers.prompt_layers import LABEL_ID, POSITIVE
from napari_medsam.layers.prompts import Plane
from napari_medsam.layers.requests import LayerInputs, RunSettings

SETTINGS = RunSettings(window=(-160.0, 240.0), source="spy", device="cpu")


@pytest.fixture
def scene():
    """A 3D image with non-unit scale and translate; a box on slice 2 drawn in world coordinates."""
    image = Image(np.zeros((5, 30, 40), np.int16), scale=(2.0, 0.5, 0.5), translate=(1.0, 3.0, -2.0))
    boxes = Shapes(ndim=3, features={LABEL_ID: np.zeros(0, int)})
    world = image.data_to_world(np.array([2, 4, 6]))  # a point on slice 2, in the world
    corners = rectangle(4, 6, 14, 26, 2)
    boxes.add_rectangles(np.array([image.data_to_world(c) for c in corners]))
    labels = Labels(np.zeros((5, 30, 40), np.uint16), scale=image.scale, translate=image.translate)
    point = tuple(float(v) for v in world)
    return image, boxes, labels, point


def inputs_of(image, boxes, labels, point, clicks=None):
    return LayerInputs(image, labels, boxes, clicks, point, (0, 1, 2))


def test_segment_request_runs_and_writes_one_undo_step(scene):
    image, boxes, labels, point = scene
    labels.data[2, 0:3, 0:3] = 7  # another object the new mask must not overwrite
    request = seg.read_segment_request(inputs_of(image, boxes, labels, point), SETTINGS)
    assert request.label_ids == [8]  # above every id in the labels
    spy = SpyPredictor()
    outcome = run_to_end(seg.segment_steps(request, lambda source, device: spy))
    assert spy.images == [((30, 40), (-160.0, 240.0))]
    np.testing.assert_allclose(spy.prompts[0]["box"], (6, 4, 26, 14))  # (x, y) = (col, row)
    written, notes = seg.write_masks(labels, request, outcome)
    assert written == [8]
    assert notes == []
    assert int((labels.data[2] == 8).sum()) == 11 * 21
    assert int((labels.data == 7).sum()) == 9
    assert list(boxes.features[LABEL_ID]) == [8]
    labels.undo()  # one undo step takes the whole Segment back
    assert int((labels.data == 8).sum()) == 0
    assert int((labels.data == 7).sum()) == 9


def test_clicks_join_their_box_and_their_polarity_is_kept(scene):
    image, boxes, labels, point = scene
    clicks = Points(
        np.array([image.data_to_world(np.array([2, 8, 10]))]),
        features={POSITIVE: [False], LABEL_ID: [0]},
    )
    request = seg.read_segment_request(inputs_of(image, boxes, labels, point, clicks), SETTINGS)
    (obj,) = request.objects
    assert obj.box_index == 0
    assert list(obj.point_labels) == [0]
    np.testing.assert_allclose(obj.points_xy, [[10, 8]])


def test_nothing_on_this_slice_is_a_clear_error(scene):
    image, boxes, labels, point = scene
    elsewhere = (point[0] + 2.0, *point[1:])  # the next slice (scale 2 on axis 0)
    with pytest.raises(ValueError, match="Nothing to segment on this slice"):
        seg.read_segment_request(inputs_of(image, boxes, labels, elsewhere), SETTINGS)


def test_propagate_request_carries_each_object_and_writes_one_undo_step(scene):
    image, boxes, labels, point = scene
    labels.data[2, 5:15, 5:20] = 3
    request = vol.read_volume_request(vol.PROPAGATE, inputs_of(image, boxes, labels, point), SETTINGS)
    assert [obj.label_id for obj in request.objects] == [3]
    assert request.stack.shape == (5, 30, 40)
    assert request.stack.index == 2

    class Copying(SpyPredictor):
        def predict(self, box=None, **kwargs):  # the box itself, shrunk by 1 px: a stable object
            x0, y0, x1, y1 = (round(v) for v in box)
            return super().predict(box=(x0 + 1, y0 + 1, x1 - 1, y1 - 1))

    outcome = run_to_end(vol.volume_steps(request, lambda s, d: Copying()))
    written, _ = vol.write_volume(labels, request, outcome)
    assert written == [3]
    assert all((labels.data[z] == 3).any() for z in range(5))
    labels.undo()
    assert (labels.data == 3).sum() == 10 * 15
    assert int((labels.data[2] == 3).sum()) == 10 * 15  # back to the key slice alone


def test_new_ids_go_above_labels_and_prompt_ids():
    data = np.array([[0, 4], [2, 0]])
    assert assign_label_ids([0, 9, 0], data, taken=[5]) == [6, 9, 7]
    assert assign_label_ids([0], None) == [1]


def test_write_planes_keeps_other_objects_unless_asked():
    labels = Labels(np.zeros((2, 4, 4), np.uint8))
    labels.data[0, 0, :] = 5
    mask = np.zeros((4, 4), bool)
    mask[0:2, :] = True
    plane = Plane(1, 2, ((0, 0),))
    assert write_planes(labels, [(plane, 1, mask)], overwrite=False) == [1]
    assert (labels.data[0, 0] == 5).all()
    assert (labels.data[0, 1] == 1).all()
    assert write_planes(labels, [(plane, 1, mask)], overwrite=True) == [1]
    assert (labels.data[0, :2] == 1).all()
    assert not labels.data[1].any()


def test_end_object_clears_one_object_past_a_slice_along_any_axis():
    labels = np.zeros((6, 4, 5), np.uint8)
    labels[:, 1:3, 1:3] = 2
    labels[:, 3, 4] = 7
    ended = end_object(labels, 2, 3, AFTER)
    assert (ended[:4] == labels[:4]).all()
    assert not (ended[4:] == 2).any()
    assert (ended == 7).sum() == (labels == 7).sum()
    assert labels[5, 1, 1] == 2  # a copy
    along_cols = end_object(labels, 2, 2, BEFORE, axis=2)
    assert not (along_cols[:, :, :2] == 2).any()
    assert (along_cols[:, 1:3, 2] == 2).all()
    assert list(slices_past(6, 0, BEFORE)) == []
    assert list(slices_past(6, 5, AFTER)) == []
    with pytest.raises(ValueError, match="no object 3"):
        end_object(labels, 3, 2, AFTER)
    with pytest.raises(ValueError, match="outside the volume"):
        end_object(labels, 2, 6, AFTER)
    with pytest.raises(ValueError, match="side must be"):
        end_object(labels, 2, 2, "above")
