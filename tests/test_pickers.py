"""The layer pickers pick what a user means: the image's own layers, else the only one that fits.

Driven as a user would: layers already in the viewer when the widget opens, layers added later,
two images, a choice made by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Shapes

from conftest import rectangle
from napari_medsam._qt.widget import MedSamWidget
from napari_medsam._reader import read_layers
from napari_medsam.io.samples import ABDOMINAL_CT

pytestmark = pytest.mark.gui


@pytest.fixture
def open_widget(make_napari_viewer, spy):
    viewer = make_napari_viewer()

    def open_() -> MedSamWidget:
        widget = MedSamWidget(viewer, predictor_factory=lambda source, device: spy)
        viewer.window.add_dock_widget(widget)
        return widget

    return viewer, open_


def test_a_box_already_in_the_viewer_is_picked_and_segmented(open_widget, qtbot):
    viewer, open_ = open_widget
    image = viewer.add_image(np.zeros((4, 40, 60), np.int16), scale=(2.5, 0.8, 0.8), name="ct")
    drawn = viewer.add_shapes(name="my boxes", ndim=3)
    drawn.add_rectangles(np.array([image.data_to_world(c) for c in rectangle(5, 10, 20, 30, 2)]))
    widget = open_()
    assert widget.image_layer is image
    assert widget.boxes_layer is drawn
    viewer.dims.set_point(0, image.data_to_world([2, 0, 0])[0])
    with qtbot.waitSignal(widget.job_finished, timeout=10_000) as blocker:
        widget.segment_button.native.click()
    assert blocker.args == ["done"]
    expected = np.zeros((4, 40, 60), bool)
    expected[2, 5:21, 10:31] = True
    np.testing.assert_array_equal(widget.labels_layer.data == 1, expected)
    assert widget.labels_layer.name == "ct MedSAM"


def test_two_images_each_get_their_own_layers_never_the_other_ones(open_widget):
    viewer, open_ = open_widget
    a = viewer.add_image(np.zeros((4, 40, 60)), name="a")
    b = viewer.add_image(np.zeros((4, 40, 60)), name="b")
    b_boxes = viewer.add_shapes(name="b boxes", ndim=3)
    b_labels = viewer.add_labels(np.zeros((4, 40, 60), np.uint16), name="b MedSAM")
    widget = open_()
    assert widget.image_layer is a
    assert widget.boxes_layer is None  # "b boxes" fits a too, but it is b's
    assert widget.labels_layer is None
    widget.image_layer = b
    assert (widget.boxes_layer, widget.labels_layer) == (b_boxes, b_labels)
    widget.image_layer = a
    a_boxes, a_clicks = widget.add_prompt_layers()
    assert (a_boxes.name, a_clicks.name) == ("a boxes", "a clicks")
    widget.image_layer = b
    assert widget.boxes_layer is b_boxes
    assert widget.clicks_layer is None  # "a clicks" is a's
    widget.image_layer = a
    assert (widget.boxes_layer, widget.clicks_layer) == (a_boxes, a_clicks)


def test_a_layer_added_later_is_picked_unless_the_user_chose(open_widget):
    viewer, open_ = open_widget
    viewer.add_image(np.zeros((4, 40, 60)), name="ct")
    widget = open_()
    first = viewer.add_shapes(name="sketch", ndim=3)
    assert widget.boxes_layer is first  # the only Shapes layer that fits
    second = viewer.add_shapes(name="more", ndim=3)
    assert widget.boxes_layer is first  # two fit: the one picked stays
    widget.boxes_layer = second  # the user's choice ...
    own = viewer.add_shapes(name="ct boxes", ndim=3)
    assert widget.boxes_layer is second  # ... is never overridden, not even by the image's own layer
    points = viewer.add_points(name="points", ndim=3)
    assert widget.clicks_layer is points
    widget.clicks_layer = None  # no clicks, says the user
    viewer.add_points(name="ct clicks", ndim=3)
    assert widget.clicks_layer is None
    viewer.layers.remove(second)  # a removed choice is no choice: the image's own layer now
    assert widget.boxes_layer is own


def test_only_layers_that_fit_the_image_are_picked(open_widget):
    viewer, open_ = open_widget
    image = viewer.add_image(np.zeros((4, 40, 60)), scale=(2.0, 0.5, 0.5), translate=(0, 10, 10), name="ct")
    outside = viewer.add_shapes(name="elsewhere", ndim=3)
    outside.add_rectangles(rectangle(0, 0, 100, 100, 0))  # world extent of the image: 10..30, 10..40
    viewer.add_points(np.zeros((1, 2)), name="2D clicks")  # other dimensions
    viewer.add_labels(np.zeros((4, 40, 60), np.uint8), name="unscaled")  # another transform
    widget = open_()
    assert (widget.boxes_layer, widget.clicks_layer, widget.labels_layer) == (None, None, None)
    inside = viewer.add_shapes(name="inside", ndim=3)
    inside.add_rectangles(rectangle(12, 12, 25, 35, 2))  # its own extent is only its box: inside
    assert widget.boxes_layer is inside
    fits = viewer.add_labels(
        np.zeros((4, 40, 60), np.uint8), name="mine", scale=image.scale, translate=(0, 10, 10)
    )
    assert widget.labels_layer is fits


def test_layers_over_a_flipped_image_fit_it(open_widget):
    """The reader's radiological display flips axes in the affine: a box drawn on it still fits."""
    viewer, open_ = open_widget
    [(data, kwargs, _)] = read_layers(str(ABDOMINAL_CT))
    image = viewer.add_image(data, **kwargs)
    drawn = Shapes(ndim=3, name="drawn")
    drawn.add_rectangles(np.array([image.data_to_world(c) for c in rectangle(20, 30, 60, 80, 15)]))
    viewer.add_layer(drawn)
    widget = open_()
    assert widget.boxes_layer is drawn
    labels = widget.ensure_labels_layer()
    assert labels.name == "abdominal_ct MedSAM"
    np.testing.assert_allclose(labels.data_to_world([3, 4, 5]), image.data_to_world([3, 4, 5]))


@pytest.mark.parametrize("placed", ["in world coordinates", "with the image's scale and translate"])
def test_a_2d_box_of_a_script_over_a_3d_image_segments_the_slice_on_screen(open_widget, placed):
    """``viewer.add_shapes([rectangle])`` over a volume: a 2D layer, drawn on every slice."""
    viewer, open_ = open_widget
    scale, translate = (2.5, 0.8, 0.6), (-10.0, 4.0, -8.0)
    image = viewer.add_image(np.zeros((6, 40, 60), np.int16), scale=scale, translate=translate, name="ct")
    corners = rectangle(5, 10, 20, 30)  # rows 5..20, columns 10..30 of the image
    if placed == "in world coordinates":
        world = np.array([image.data_to_world([0, r, c])[1:] for r, c in corners])
        boxes = viewer.add_shapes([world], shape_type="rectangle", name="boxes")
    else:
        boxes = viewer.add_shapes([corners], shape_type="rectangle", scale=scale[1:], translate=translate[1:])
    assert boxes.ndim == 2
    viewer.add_shapes([rectangle(500, 500, 520, 530)], shape_type="rectangle", name="off the image")
    widget = open_()
    assert widget.boxes_layer is boxes  # the 2D layer that lies on the image, not the one off it
    viewer.dims.set_point(0, image.data_to_world([4, 0, 0])[0])
    assert widget.segment() == [1]
    expected = np.zeros((6, 40, 60), bool)
    expected[4, 5:21, 10:31] = True
    np.testing.assert_array_equal(widget.labels_layer.data == 1, expected)
