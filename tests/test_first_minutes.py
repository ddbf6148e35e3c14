"""The first five minutes (issue 32), one test per item of the walk-through, driven as a user would:
stand-in predictors (``VolumeSpy``) keep these fast; ``test_widget_walkthrough.py`` walks the same
items with the real model on the shared CT."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from napari.errors import MultipleReaderError
from qtpy.QtCore import QRect, Qt
from qtpy.QtGui import QFontMetrics

import test_widget_volume as volume_tests
from conftest import rectangle
from fakes import VolumeSpy
from napari_medsam._qt.widget import MedSamWidget
from napari_medsam.io.samples import ABDOMINAL_CT
from napari_medsam.layers.volume import NEEDS_3D
from test_widget_volume import box_around, ellipsoids

#: The fixtures of the volume tests: a viewer with a 3D image and the widget, its stand-in model.
make_setup, spy, notices = volume_tests.make_setup, volume_tests.spy, volume_tests.notices

pytestmark = pytest.mark.gui
TIMEOUT_MS = 20_000


def segmented(make_setup, z=6):
    """The ellipsoid phantom with object 1 segmented on slice ``z`` and propagated."""
    volume, (organ,) = ellipsoids()
    s = make_setup(volume)
    s.viewer.dims.set_current_step(0, z)
    s.boxes.add_rectangles(box_around(organ[z], z))
    assert s.widget.segment() == [1]
    assert s.widget.propagate() == [1]
    s.organ = organ
    return s


# 1 -------------------------------------------------------------------------------------------
def test_1_the_background_selected_says_so_before_any_work(make_setup, spy, notices, caplog):
    """napari's label picker on an empty pixel selects label 0: Correct, Propagate and End here say
    what to do, at once, and nothing runs."""
    s = segmented(make_setup)
    w = s.widget
    s.viewer.dims.set_current_step(0, 4)
    s.boxes.add_rectangles(box_around(s.organ[4], 4))
    w.labels_layer.selected_label = 0
    before, encoded = w.labels_layer.data.copy(), len(spy.encoded)
    expected = "the background (label 0) is selected: select an object in the objects table"
    for button in (w.correct_button, w.propagate_button, w.end_buttons["after"]):
        button.native.click()
        assert not w.jobs.busy  # nothing started
        assert expected in w.status_label.value
        severity, message = notices()[-1]
        assert expected in message
        assert str(severity) == "warning"
    for run in (w.correct, w.propagate, lambda: w.end_here("before")):
        with pytest.raises(ValueError, match=r"background \(label 0\) is selected"):
            run()
    assert len(spy.encoded) == encoded
    np.testing.assert_array_equal(w.labels_layer.data, before)
    assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere


# 2 -------------------------------------------------------------------------------------------
def test_2_the_widget_offers_once_to_open_medical_files_with_medsam(make_napari_viewer, tmp_path):
    from napari.settings import get_settings

    from napari_medsam._qt.reader_default import ANSWER_KEY, PATTERNS, QUESTION
    from napari_medsam._qt.store_setting import settings

    settings().remove(ANSWER_KEY)  # never asked yet
    preference = get_settings().plugins
    preference.extension2reader = {"*.tif": "some-other-plugin"}
    viewer = make_napari_viewer()
    _, (organ,) = ellipsoids()
    labels = viewer.add_labels(organ.astype(np.uint16), features={"index": [1], "name": ["liver"]})
    paths = [tmp_path / "organs.nii.gz", tmp_path / "organs.seg.nrrd"]
    for path in paths:
        with pytest.warns(UserWarning, match="No image geometry"):  # an array without a file: fine here
            labels.save(str(path), plugin="napari-medsam")
    with pytest.raises(MultipleReaderError):  # File > Open would ask which reader, every time
        viewer.open(str(paths[0]), plugin=None)

    w = MedSamWidget(viewer, predictor_factory=lambda source, device: VolumeSpy())
    offer = w.reader_offer
    assert not offer.native.isHidden()
    assert offer.question.text() == QUESTION
    assert w.native.layout().itemAt(0).widget() is offer.native  # on top of the dock
    offer.yes.click()
    assert offer.native.isHidden()
    ours = dict.fromkeys(PATTERNS, "napari-medsam")
    assert preference.extension2reader == {"*.tif": "some-other-plugin", **ours}  # the user's own stay
    opened = []
    for path in paths:  # File > Open (or a file dropped on the viewer), and viewer.open(path, plugin=None)
        viewer.window._qt_viewer._qt_open([str(path)], stack=False)
        opened += [viewer.layers[-1], *viewer.open(str(path), plugin=None)]
    for layer in opened:  # labels with their names, never a grey image
        assert layer.__class__.__name__ == "Labels", layer.name
        np.testing.assert_array_equal(np.asarray(layer.data) == 1, organ)
        assert list(layer.features["name"]) == ["liver"]
    assert again(viewer).reader_offer.native.isHidden()

    settings().remove(ANSWER_KEY)
    preference.extension2reader = {}
    declined = again(viewer)
    assert not declined.reader_offer.native.isHidden()
    declined.reader_offer.no.click()
    assert preference.extension2reader == {}  # No changes nothing ...
    assert again(viewer).reader_offer.native.isHidden()  # ... and is not asked again


def again(viewer):
    """The widget opened again on ``viewer``."""
    return MedSamWidget(viewer, predictor_factory=lambda source, device: VolumeSpy())


# 3 -------------------------------------------------------------------------------------------
def test_3_the_model_loading_ahead_is_announced_and_the_bar_is_busy(make_napari_viewer, qtbot):
    volume, _ = ellipsoids()
    viewer = make_napari_viewer()
    viewer.add_image(volume)
    release, started = threading.Event(), threading.Event()
    spy = VolumeSpy()

    def slow(source, device):
        started.set()
        assert release.wait(30)
        return spy

    w = MedSamWidget(viewer, predictor_factory=slow)
    line = w.controls.encoding_status
    try:
        qtbot.waitUntil(started.is_set, timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: line.value.startswith("Loading the model lite-medsam in the background…"))
        assert w.progress_bar.max == 0  # a busy indicator, not a bar at 0 %
        assert w.index(line) == w.index(w.status_label) + 1  # right under the status line
    finally:
        release.set()
    qtbot.waitUntil(lambda: line.value == "Encoded in the background: 12 / 12 slices", timeout=TIMEOUT_MS)
    assert w.progress_bar.max == 1
    assert w.progress_bar.value == 0


# 4 -------------------------------------------------------------------------------------------
def wrapped_lines(label, width: int = 420) -> int:
    """How many lines ``label`` (a status line) takes at ``width`` px, about a dock's width."""
    metrics = QFontMetrics(label.native.font())
    flags = int(Qt.TextFlag.TextWordWrap)
    height = metrics.boundingRect(QRect(0, 0, width, 10_000), flags, label.value).height()
    return height // metrics.lineSpacing()


def test_4_a_box_outside_the_image_is_named_by_its_slice_in_one_short_line(make_setup, spy, notices):
    volume, (organ,) = ellipsoids()
    s = make_setup(volume)
    w = s.widget
    for z in (3, 4, 5):  # three boxes on other slices first: the walk-through's fourth box
        s.boxes.add_rectangles(box_around(organ[z], z))
    s.viewer.dims.set_current_step(0, 6)
    s.boxes.add_rectangles(rectangle(200, 200, 240, 260, 6))  # the image is 48 x 56
    w.segment_button.native.click()
    expected = "A box on slice 6 lies outside the image: draw it on the image."
    assert w.status_label.value == expected
    assert notices()[-1][1] == expected
    assert wrapped_lines(w.status_label) == 1
    assert not spy.prompts  # nothing ran

    s.boxes.add_rectangles(box_around(organ[6], 6))  # one good box beside it: that one is segmented
    s.boxes.features = s.boxes.features.assign(name=["", "", "", "", "liver"])
    assert w.segment() == [1]
    assert notices()[-1] == ("warning", "A box on slice 6 lies outside the image: skipped.")
    s.boxes.features = s.boxes.features.assign(name=["", "", "", "tumour", "liver"])
    s.boxes.selected_data = {4}
    s.boxes.remove_selected()
    w.segment_button.native.click()
    assert w.status_label.value == "The box 'tumour' on slice 6 lies outside the image: draw it on the image."
    assert wrapped_lines(w.status_label) <= 2


# 5 -------------------------------------------------------------------------------------------
def end_texts(w):
    return [button.text for button in w.end_buttons.values()]


def test_5_end_here_names_its_side_in_the_patient_from_the_geometry(make_napari_viewer, make_setup):
    """On the shared CT the slider runs from head to feet (slider 29 is the lowest slice): the
    feet-side button ends the liver's lower part, whatever the array's order."""
    viewer = make_napari_viewer()
    [image] = viewer.open(str(ABDOMINAL_CT), plugin="napari-medsam")
    spy = VolumeSpy(threshold=60.0)
    w = MedSamWidget(viewer, predictor_factory=lambda source, device: spy)
    w.prefetch = False
    boxes, _ = w.add_prompt_layers()
    assert end_texts(w) == ["◀ End (head side)", "End (feet side) ▶"]
    assert "toward the feet" in w.end_buttons["after"].tooltip
    depth = image.data.shape[0]
    viewer.dims.set_current_step(0, 12)
    z = w.current_stack().index
    boxes.add_rectangles(rectangle(20, 40, 80, 100, z))
    assert w.segment() == [1]
    assert w.propagate(max_slices=4) == [1]

    def liver_sliders():
        return {depth - 1 - int(k) for k in np.flatnonzero((w.labels_layer.data == 1).any(axis=(1, 2)))}

    assert liver_sliders() == set(range(8, 17))
    w.end_buttons["after"].native.click()  # feet side: the slices below, at higher slider positions
    assert liver_sliders() == set(range(8, 13))
    assert w.status_label.value.endswith("removed from slice(s) 13..16, toward the feet")
    viewer.dims.order = (2, 0, 1)  # a sagittal view: the slider moves right-left
    assert end_texts(w) == ["◀ End (right side)", "End (left side) ▶"]

    volume, _ = ellipsoids()  # an array without a file: its own axis
    s = make_setup(volume)
    assert end_texts(s.widget) == ["◀ End (first side)", "End (last side) ▶"]
    assert "toward the file's last slice" in s.widget.end_buttons["after"].tooltip
    s.image.scale = (-2.5, 0.8, 0.8)  # flipped: the slider runs from the file's last slice
    s.widget._refresh()
    assert end_texts(s.widget) == ["◀ End (last side)", "End (first side) ▶"]


# 6 -------------------------------------------------------------------------------------------
def test_6_a_2d_image_propagates_nothing_and_no_old_line_stays(make_setup, spy):
    """The dock's width with a long name typed into the table: ``test_widget_objects.py``."""
    s = segmented(make_setup)
    w = s.widget
    w.end_here("after")
    assert w.status_label.value.startswith("Ended 'object 1' (label 1) at slice 6")
    assert w.propagate_button.text == "Propagate object 1"
    flat = s.viewer.add_image(s.image.data[6], name="a 2D slice")
    w.image_layer = flat
    assert w.propagate_button.text == "Propagate"  # nothing to carry on a 2D image
    assert not w.propagate_button.enabled
    assert w.propagate_button.tooltip == NEEDS_3D
    assert w.status_label.value == "Ready"  # the volume's last line went with it
    w.labels_layer = None
    w.image_layer = s.image
    w.labels_layer.selected_label = 0
    assert w.propagate_button.text == "Propagate"  # no object selected


# 7 -------------------------------------------------------------------------------------------
def press(viewer, key: str) -> None:
    """A key pressed over the canvas: napari's handler tries the selected layer, then the viewer."""
    handler = viewer.window._qt_viewer._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


def test_7_shortcuts_run_the_buttons_and_objects_show_and_hide(make_setup, spy, qtbot, tmp_path):
    organs = (((6.0, 14.0, 15.0), (4.6, 9.0, 10.0)), ((6.0, 34.0, 42.0), (2.6, 8.0, 9.0)))
    volume, (liver, spleen) = ellipsoids(shape=(12, 48, 56), objects=organs)
    s = make_setup(volume)
    w, viewer = s.widget, s.viewer
    for button, key in ((w.segment_button, "Shift+S"), (w.propagate_button, "Shift+G"),
                        (w.correct_button, "Shift+C"), (w.end_buttons["before"], "Shift+Left"),
                        (w.end_buttons["after"], "Shift+Right")):  # fmt: skip
        assert button.tooltip.endswith(f"Shortcut: {key}"), button.tooltip
    viewer.dims.set_current_step(0, 6)
    s.boxes.add_rectangles(box_around(liver[6], 6))
    assert viewer.layers.selection.active is s.boxes  # the boxes layer's own keys come first
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS):
        press(viewer, "Shift-S")
    assert (w.labels_layer.data[6] == 1).any()
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS):
        press(viewer, "Shift-G")
    present = set(np.flatnonzero((w.labels_layer.data == 1).any(axis=(1, 2))))
    assert present == set(np.flatnonzero(liver.any(axis=(1, 2))))
    press(viewer, "Shift-Right")  # End here on the higher slider side: one step, no job
    assert set(np.flatnonzero((w.labels_layer.data == 1).any(axis=(1, 2)))) == {z for z in present if z <= 6}
    w.labels_layer.selected_label = 0
    press(viewer, "Shift-C")  # a key says why it cannot run, as the button does
    assert "background (label 0) is selected" in w.status_label.value

    s.boxes.add_rectangles(box_around(spleen[6], 6))
    prompts = len(spy.prompts)
    assert w.segment() == [2]  # the liver's box, segmented and left alone, is not run again
    assert len(spy.prompts) == prompts + 1
    w.objects.refresh()
    colours = {i: w.labels_layer.get_color(i) for i in (1, 2)}
    w.objects.table.item(0, 0).setCheckState(Qt.CheckState.Unchecked)  # hide object 1 in the table
    assert w.labels_layer.get_color(1)[3] == 0
    np.testing.assert_allclose(w.labels_layer.get_color(2), colours[2])
    swatch = w.objects.table.item(0, 0).data(Qt.ItemDataRole.DecorationRole)
    np.testing.assert_allclose(swatch.getRgbF()[:3], colours[1][:3], atol=1e-2)
    with pytest.warns(UserWarning, match="No image geometry"):  # hidden: its colour is kept
        w.labels_layer.save(str(tmp_path / "organs.seg.nrrd"), plugin="napari-medsam")
    [back] = viewer.open(str(tmp_path / "organs.seg.nrrd"), plugin="napari-medsam")
    np.testing.assert_allclose(back.get_color(1), colours[1], atol=2e-3)
    w.objects.table.item(0, 0).setCheckState(Qt.CheckState.Checked)
    np.testing.assert_allclose(w.labels_layer.get_color(1), colours[1])

    w.close()
    assert viewer.keymap == {}  # the keys go back when the widget closes


# left from issue 26 --------------------------------------------------------------------------
def test_undoing_a_correction_frees_its_box_and_redo_claims_it_again(make_setup, spy, qtbot):
    s = segmented(make_setup)
    w = s.widget
    w.end_here("after")  # the object stops at slice 6; a correction on slice 8 adds it back there
    s.viewer.dims.set_current_step(0, 8)
    s.boxes.add_rectangles(box_around(s.organ[8], 8))
    before = w.labels_layer.data.copy()
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS) as blocker:
        w.correct_button.native.click()
    assert blocker.args == ["done"]
    assert not np.array_equal(w.labels_layer.data, before)
    assert s.boxes.features["label_id"].tolist() == [1, 1]  # the correction's box is the object's
    w.labels_layer.undo()
    np.testing.assert_array_equal(w.labels_layer.data, before)
    assert s.boxes.features["label_id"].tolist() == [1, 0]  # new again, as before Correct
    w.labels_layer.redo()
    assert s.boxes.features["label_id"].tolist() == [1, 1]
    w.labels_layer.undo()
    assert w.correct() == [1]  # the freed box corrects again


def test_deleting_a_box_keeps_the_claims_of_the_boxes_after_it(make_setup, spy):
    organs = (((6.0, 14.0, 15.0), (4.6, 9.0, 10.0)), ((6.0, 34.0, 42.0), (2.6, 8.0, 9.0)))
    volume, (liver, spleen) = ellipsoids(shape=(12, 48, 56), objects=organs)
    s = make_setup(volume)
    w = s.widget
    s.viewer.dims.set_current_step(0, 6)
    s.boxes.add_rectangles(box_around(liver[6], 6))
    s.boxes.add_rectangles(box_around(spleen[6], 6))
    assert w.segment() == [1, 2]
    s.boxes.selected_data = {0}
    s.boxes.remove_selected()  # the spleen's box is row 0 now
    with pytest.raises(ValueError, match="Every box on slice 6 is segmented already"):
        w.segment()
    s.boxes.data = [box_around(spleen[6], 6, margin=-2)]  # made smaller: it runs again, as object 2
    assert w.segment() == [2]
    w.labels_layer.undo()
    assert s.boxes.features["label_id"].tolist() == [2]  # the id it had before the move's run
    w.labels_layer.undo()
    assert s.boxes.features["label_id"].tolist() == [0]  # the first Segment undone: new again
