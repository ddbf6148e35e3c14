"""Prompt layers -> per-slice model prompts, and the labels-writing policy. No Qt, no viewer."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Points, Shapes

from conftest import rectangle
from napari_medsam.base.label_policy import label_changes, next_label_id, paint_mask
from napari_medsam.layers.prompts import (
    OUTSIDE,
    TILTED,
    Plane,
    boxes_from_shapes,
    clicks_from_points,
    current_plane,
    describe_problem,
    group_prompts,
    layer_to_image,
    plane_axes,
    rowcol_to_xy,
)


def test_rowcol_to_xy_is_the_flip():
    assert rowcol_to_xy(np.array([[3.0, 7.0], [1.0, 2.0]])).tolist() == [[7, 3], [2, 1]]
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        rowcol_to_xy(np.zeros((2, 3)))


def test_plane_extract_and_indices_round_trip():
    data = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    plane = Plane(1, 2, ((0, 3),))
    np.testing.assert_array_equal(plane.extract(data), data[3])
    rows, cols = np.array([0, 4]), np.array([5, 1])
    assert data[plane.indices(rows, cols)].tolist() == [data[3, 0, 5], data[3, 4, 1]]
    # transposed view: rows along axis 2, cols along axis 0
    sideways = Plane(2, 0, ((1, 2),))
    np.testing.assert_array_equal(sideways.extract(data), data[:, 2, :].T)
    assert data[sideways.indices(np.array([5]), np.array([1]))].tolist() == [data[1, 2, 5]]
    assert sideways.describe() == "axis 1 = 2"


def test_plane_axes_follow_dims_order():
    assert plane_axes((0, 1, 2), 3, 3) == (1, 2)
    assert plane_axes((1, 2, 0), 3, 3) == (2, 0)
    assert plane_axes((0, 1, 2, 3), 4, 2) == (0, 1)  # 2D image in a 4D world
    with pytest.raises(ValueError, match="not shown as a 2D slice"):
        plane_axes((2, 3, 0, 1), 4, 2)


def test_layer_to_image_uses_both_layers_transforms():
    image = Image(np.zeros((10, 20, 30)), scale=(3.0, 0.5, 2.0), translate=(6.0, 1.0, -4.0))
    shapes = Shapes(ndim=3, scale=(1.5, 1.0, 1.0), translate=(0.0, 0.0, 10.0))
    data = np.array([[4.0, 5.0, 6.0]])
    world = np.array([4.0 * 1.5, 5.0, 6.0 + 10.0])
    expected = (world - [6.0, 1.0, -4.0]) / [3.0, 0.5, 2.0]
    np.testing.assert_allclose(layer_to_image(shapes, data, image, (0, 0, 0)), [expected])


def test_layer_to_image_fills_missing_axes_from_world_point():
    image = Image(np.zeros((10, 20, 30)), scale=(2.0, 1.0, 1.0))
    points2d = Points(np.zeros((0, 2)))
    out = layer_to_image(points2d, np.array([[3.0, 4.0]]), image, world_point=(8.0, 0.0, 0.0))
    np.testing.assert_allclose(out, [[4.0, 3.0, 4.0]])


def test_current_plane_from_world_point():
    image = Image(np.zeros((10, 20, 30)), scale=(2.0, 1.0, 1.0), translate=(4.0, 0, 0))
    plane = current_plane(image, (4.0 + 2.0 * 7, 3.0, 3.0), (0, 1, 2))
    assert plane == Plane(1, 2, ((0, 7),))
    with pytest.raises(ValueError, match="outside the image"):
        current_plane(image, (100.0, 0.0, 0.0), (0, 1, 2))


def test_boxes_scaled_translated_non_square():
    # 3D image 5 x 40 x 60 (non-square), anisotropic pixels and an offset
    image = Image(np.zeros((5, 40, 60)), scale=(4.0, 0.5, 0.25), translate=(10.0, 2.0, -3.0))
    # the shapes layer lives in world units (unit scale): a box drawn on slice 3
    world_z = 10.0 + 4.0 * 3
    world = rectangle(2.0 + 0.5 * 10, -3.0 + 0.25 * 20, 2.0 + 0.5 * 30, -3.0 + 0.25 * 50, world_z)
    shapes = Shapes([world], shape_type="rectangle")
    boxes, problems = boxes_from_shapes(shapes, image, (0, 0, 0), (0, 1, 2))
    assert problems == []
    assert len(boxes) == 1
    assert boxes[0].plane == Plane(1, 2, ((0, 3),))
    np.testing.assert_allclose(boxes[0].box_xyxy, (20, 10, 50, 30))  # x = column, y = row


def test_boxes_in_transposed_view():
    image = Image(np.zeros((8, 30, 50)))
    # view rows along axis 2, cols along axis 0, axis 1 fixed at 4
    verts = np.array([[1.0, 4.0, 10.0], [6.0, 4.0, 10.0], [6.0, 4.0, 20.0], [1.0, 4.0, 20.0]])
    shapes = Shapes([verts], shape_type="polygon")
    boxes, problems = boxes_from_shapes(shapes, image, (0, 0, 0), (1, 2, 0))
    assert problems == []
    assert boxes[0].plane == Plane(2, 0, ((1, 4),))
    np.testing.assert_allclose(boxes[0].box_xyxy, (1, 10, 6, 20))


def test_boxes_clipped_skipped_and_reported():
    image = Image(np.zeros((3, 20, 30)))
    shapes = Shapes(
        [
            rectangle(-5, -5, 10, 40, 1),  # sticks out: clipped
            rectangle(50, 50, 60, 60, 1),  # outside
            rectangle(2, 2, 8, 8, 7),  # slice 7 does not exist
            np.array([[0, 2, 2], [0, 8, 2], [2, 8, 8], [2, 2, 8]], float),  # tilted across slices
        ],
        shape_type="polygon",
    )
    boxes, problems = boxes_from_shapes(shapes, image, (0, 0, 0), (0, 1, 2))
    assert [b.source_index for b in boxes] == [0]
    assert boxes[0].box_xyxy == (0.0, 0.0, 29.0, 10.0)
    assert [(p.kind, p.row, p.reason) for p in problems] == [
        ("box", 1, OUTSIDE), ("box", 2, OUTSIDE), ("box", 3, TILTED)
    ]
    dims_range = ((0, 3, 1), (0, 20, 1), (0, 30, 1))
    said = [describe_problem(p, (0, 1, 2), dims_range) for p in problems]
    assert said[:2] == ["A box on slice 1 lies outside the image", "A box on slice 7 lies outside the image"]
    named = describe_problem(problems[0], (0, 1, 2), dims_range, "liver")
    assert named == "The box 'liver' on slice 1 lies outside the image"
    flipped = ((-2, 1, 1), (0, 20, 1), (0, 30, 1))  # a slider counting from world -2: position = world + 2
    assert describe_problem(problems[0], (0, 1, 2), flipped) == "A box on slice 3 lies outside the image"
    no_slider = describe_problem(problems[0], (1, 2), ((0, 20, 1), (0, 30, 1)))
    assert no_slider == "A box lies outside the image"


def test_2d_shapes_over_3d_image_use_current_slice():
    image = Image(np.zeros((6, 20, 30)))
    shapes = Shapes([rectangle(2, 3, 12, 13)], shape_type="rectangle")
    boxes, _ = boxes_from_shapes(shapes, image, (4.0, 0.0, 0.0), (0, 1, 2))
    assert boxes[0].plane == Plane(1, 2, ((0, 4),))
    assert boxes[0].box_xyxy == (3.0, 2.0, 13.0, 12.0)


def test_clicks_polarity_and_planes():
    image = Image(np.zeros((4, 20, 30)), scale=(1.0, 2.0, 2.0))
    points = Points(
        np.array([[1, 10.0, 20.0], [1, 4.0, 6.0], [2, 100.0, 6.0]]),
        features={"positive": [True, False, True]},
    )
    clicks, problems = clicks_from_points(points, image, (0, 0, 0), (0, 1, 2))
    assert [(c.xy, c.positive, c.source_index) for c in clicks] == [
        ((10.0, 5.0), True, 0),
        ((3.0, 2.0), False, 1),
    ]
    assert clicks[0].plane == Plane(1, 2, ((0, 1),))
    assert [(p.kind, p.row, p.reason, p.world[0]) for p in problems] == [("click", 2, OUTSIDE, 2.0)]
    # no feature: every click is positive
    plain = Points(np.array([[0, 1.0, 1.0]]))
    assert clicks_from_points(plain, image, (0, 0, 0), (0, 1, 2))[0][0].positive


def test_group_prompts_assigns_clicks_to_boxes():
    image = Image(np.zeros((3, 50, 50)))
    shapes = Shapes(
        [rectangle(0, 0, 40, 40, 1), rectangle(10, 10, 20, 20, 1), rectangle(5, 5, 9, 9, 2)],
        shape_type="rectangle",
    )
    points = Points(
        np.array([[1, 15, 15], [1, 30, 30], [1, 45, 45], [0, 3, 4], [1, 46, 46.0]]),
        features={"positive": [True, False, True, True, False]},
    )
    boxes, _ = boxes_from_shapes(shapes, image, (0, 0, 0), (0, 1, 2))
    clicks, _ = clicks_from_points(points, image, (0, 0, 0), (0, 1, 2))
    objects = group_prompts(boxes, clicks)
    summary = [(o.plane.fixed, o.box_index, o.point_indices, o.point_labels.tolist()) for o in objects]
    assert summary == [
        (((0, 0),), None, (3,), [1]),  # click-only object on slice 0
        (((0, 1),), 0, (1,), [0]),  # the big box gets the click inside it only
        (((0, 1),), 1, (0,), [1]),  # the click inside both goes to the smaller box
        (((0, 1),), None, (2, 4), [1, 0]),  # clicks outside every box of slice 1
        (((0, 2),), 2, (), []),
    ]
    np.testing.assert_allclose(objects[3].points_xy, [[45, 45], [46, 46]])


def test_label_changes_policy():
    current = np.array([[0, 0, 2, 2], [5, 5, 0, 0], [5, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 1, 1]], bool)
    (rows, cols), values = label_changes(current, mask, 5)
    result = current.copy()
    result[rows, cols] = values
    # own old pixels (5) outside the new mask are cleared; label 2 is kept
    assert result.tolist() == [[5, 5, 2, 2], [0, 0, 0, 0], [0, 0, 5, 5]]
    over = current.copy()
    assert paint_mask(over, mask, 5, overwrite=True) == 8
    assert over.tolist() == [[5, 5, 5, 2], [0, 0, 0, 0], [0, 0, 5, 5]]
    same = result.copy()
    assert paint_mask(same, mask, 5) == 0  # idempotent
    with pytest.raises(ValueError, match="does not match"):
        label_changes(current, mask[:2], 5)
    with pytest.raises(ValueError, match="positive"):
        label_changes(current, mask, 0)


def test_next_label_id():
    assert next_label_id(np.zeros((3, 3), np.uint8)) == 1
    assert next_label_id(np.array([[0, 7]]), taken=[3, 9]) == 10
    with pytest.raises(ValueError, match="wider dtype"):
        next_label_id(np.array([[255]], np.uint8))
