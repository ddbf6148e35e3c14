"""The widget as a clinician walks it, with the real LiteMedSAM on the shared CT, under Xvfb:
open the sample, draw, Segment, Propagate, name, save, close, reopen; the dock keeps its width;
a correction on the liver's lower tip. Screenshots go to the test's folder for a look.

The first five minutes (issue 32) on the same path: the offer to open medical files with MedSAM,
the model's loading announced, shortcuts, the background selected, a box off the image, End here
named from the anatomy, a long name, a 2D image, hiding an object, Segment of the new box only,
and the files opened again with a plain File > Open."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from conftest import dice, rectangle
from napari_medsam._qt.widget import MedSamWidget
from napari_medsam.io.samples import ABDOMINAL_CT
from realdata import SEG_SM, oracle_box

pytestmark = pytest.mark.gui
TIMEOUT_MS = 600_000
#: How far the dock's width may move during a session (px).
WIDTH_TOLERANCE = 10


def settle(viewer) -> None:
    for _ in range(5):
        QApplication.processEvents()
    viewer.window._qt_window.repaint()


def open_widget(viewer):
    widget = MedSamWidget(viewer)
    widget.model, widget.device, widget.prefetch = "lite-medsam", "cpu", False
    dock = viewer.window.add_dock_widget(widget, name="MedSAM")
    boxes, _ = widget.add_prompt_layers()
    settle(viewer)
    return widget, dock, boxes


def box_on(mask2d, z):
    x0, y0, x1, y1 = oracle_box(mask2d)
    return rectangle(y0, x0, y1, x1, z)


def reference_organs(viewer):
    [reference] = viewer.open(str(SEG_SM), plugin="napari-medsam")
    data = np.asarray(reference.data)
    viewer.layers.remove(reference)
    return {"liver": data == 5, "spleen": data == 1, "kidney": data == 2}


def press(viewer, key: str) -> None:
    """A key pressed over the canvas: napari's handler tries the selected layer, then the viewer."""
    handler = viewer.window._qt_viewer._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


def test_walk_through_segment_propagate_name_save_close_reopen(make_napari_viewer, qtbot, tmp_path):
    from napari_medsam._qt.reader_default import ANSWER_KEY
    from napari_medsam._qt.store_setting import settings
    from napari_medsam.models.loading import unload_model

    settings().remove(ANSWER_KEY)  # a first use: never asked
    unload_model()  # and the model not loaded yet in this process
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    [image] = viewer.open_sample("napari-medsam", "abdominal_ct")
    organs = reference_organs(viewer)
    w, dock, boxes = open_widget(viewer)
    width = dock.width()
    assert not w.reader_offer.native.isHidden()  # 2: the offer, on top
    w.reader_offer.yes.click()
    line = w.controls.encoding_status  # 3: the model loading ahead is announced, the bar busy
    qtbot.waitUntil(lambda: line.value.startswith("Loading the model lite-medsam in the background"))
    assert w.progress_bar.max == 0
    qtbot.waitUntil(lambda: w.predictor is not None, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: not line.value.startswith("Loading"))  # said at the next refresh
    assert w.progress_bar.max == 1  # the busy bar stops with the load
    depth = image.data.shape[0]
    z = 15
    viewer.dims.set_current_step(0, depth - 1 - z)  # the slider runs against the array on this CT
    assert w.current_stack().index == z
    assert [b.text for b in w.end_buttons.values()] == ["◀ End (head side)", "End (feet side) ▶"]  # 5
    boxes.add_rectangles(box_on(organs["liver"][z], z))
    boxes.add_rectangles(box_on(organs["spleen"][z], z))
    boxes.add_rectangles(rectangle(300, 300, 340, 360, z))  # 4: a box off the image (101 x 122)
    assert "Shortcut: Shift+S" in w.segment_button.tooltip  # 7: Segment by its key
    said = len(notification_manager.records)
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS):
        press(viewer, "Shift-S")
    labels = w.labels_layer
    assert labels.selected_label == 2  # the object segmented last is the one selected
    notes = [str(n.message) for n in notification_manager.records[said:]]
    assert notes == [f"A box on slice {depth - 1 - z} lies outside the image: skipped."]  # not "box 3"
    boxes.selected_data = {2}
    boxes.remove_selected()
    labels.selected_label = 0  # 1: napari's picker on the background: Correct says so, runs nothing
    w.correct_button.native.click()
    assert not w.jobs.busy
    assert "the background (label 0) is selected" in w.status_label.value
    labels.selected_label = 2
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS) as blocker:
        w.propagate_button.native.click()  # "Propagate object 2": the spleen alone
    assert blocker.args == ["done"]
    assert (labels.data[z] == 1).any()
    assert not (labels.data[np.arange(depth) != z] == 1).any()  # the liver was not carried
    assert dice(labels.data == 2, organs["spleen"]) > 0.85
    w.objects.refresh()
    w.objects.table.item(0, 0).setText("liver")  # named as a user does: typed into the table
    w.objects.table.item(1, 0).setText("spleen, the second reader's outline of it")  # 6: a long name
    w.objects.refresh()
    settle(viewer)
    assert w.propagate_button.text.endswith("…")
    assert abs(dock.width() - width) <= WIDTH_TOLERANCE, (width, dock.width())
    w.objects.table.item(1, 0).setText("spleen")

    boxes.add_rectangles(box_on(organs["kidney"][z], z))  # Segment takes the new box alone
    predicted = []
    predict = w.predictor.predict
    w.predictor.predict = lambda *args, **kwargs: predicted.append(1) or predict(*args, **kwargs)
    try:
        assert w.segment() == [3]
    finally:
        del w.predictor.predict
    assert len(predicted) == 1
    labels.undo()  # the kidney's Segment undone: its box is new again
    assert boxes.features["label_id"].tolist() == [1, 2, 0]
    boxes.selected_data = {2}
    boxes.remove_selected()

    spleen_slices = {depth - 1 - k for k in np.flatnonzero((labels.data == 2).any(axis=(1, 2)))}
    middle = sorted(spleen_slices)[len(spleen_slices) // 2]
    viewer.dims.set_current_step(0, middle)
    w.objects.table.selectRow(1)  # the spleen
    press(viewer, "Shift-Right")  # 5: End here on the feet side: the spleen's lower part goes
    below = {depth - 1 - k for k in np.flatnonzero((labels.data == 2).any(axis=(1, 2)))}
    assert below == {s for s in spleen_slices if s <= middle}  # higher slider positions lie lower
    assert w.status_label.value.endswith("toward the feet")
    labels.undo()
    viewer.dims.set_current_step(0, depth - 1 - z)
    w.objects.table.item(0, 0).setCheckState(Qt.CheckState.Unchecked)  # 7: the liver hidden a moment
    assert labels.get_color(1)[3] == 0
    w.objects.table.item(0, 0).setCheckState(Qt.CheckState.Checked)
    viewer.dims.ndisplay = 3  # a visit to the 3D view puts its long message in the status line
    settle(viewer)
    assert "switch the viewer to 2D" in w.status_label.value
    viewer.dims.ndisplay = 2
    settle(viewer)
    assert abs(dock.width() - width) <= WIDTH_TOLERANCE, (width, dock.width())
    shot = viewer.screenshot(str(tmp_path / "after-propagate.png"), canvas_only=False)
    assert shot.shape[1] >= viewer.window._qt_window.width()  # the whole window, dock included

    saved = np.asarray(labels.data).copy()
    colors = {i: np.asarray(labels.get_color(i)) for i in (1, 2)}
    paths = [tmp_path / "organs.nii.gz", tmp_path / "organs.seg.nrrd"]
    for path in paths:
        labels.save(str(path), plugin="napari-medsam")
    viewer.close()

    again = make_napari_viewer(show=True)
    again.open(str(ABDOMINAL_CT), plugin="napari-medsam")

    def file_open(path):  # File > Open: MedSAM is napari's reader since the offer was accepted
        again.window._qt_viewer._qt_open([str(path)], stack=False)
        return [again.layers[-1]]

    def script_open(path):
        return again.open(str(path), plugin=None)  # the reader napari's preference names

    for path, opener in [(path, opener) for path in paths for opener in (file_open, script_open)]:
        [layer] = opener(path)
        assert layer.__class__.__name__ == "Labels", path.name
        np.testing.assert_array_equal(layer.data, saved)
        assert dict(zip(layer.features["index"], layer.features["name"], strict=True)) == {
            1: "liver", 2: "spleen"
        }
        for label_id, color in colors.items():
            np.testing.assert_allclose(layer.get_color(label_id), color, atol=2e-3)
        again.layers.remove(layer)
    w2, _, _ = open_widget(again)
    assert w2.reader_offer.native.isHidden()  # answered once, never asked again
    again.open(str(paths[0]), plugin="napari-medsam")
    w2.objects.refresh()
    assert [s.name for s in w2.objects.stats] == ["liver", "spleen"]
    w2.image_layer = again.add_image(np.asarray(again.layers[0].data)[z], name="a 2D slice")  # 6
    settle(again)
    assert w2.propagate_button.text == "Propagate"
    assert w2.status_label.value == "Ready"


def test_a_box_on_the_livers_lower_tip_fixes_it_and_keeps_what_was_right(make_napari_viewer, qtbot):
    """Issue 31: a box on the liver's lowest slice fixed the tip and shrank the good slices 9-12 by a
    third (0.91-0.93 -> 0.74-0.84) with no word of it. Now no slice with Dice >= 0.9 loses more than
    0.02, the box changes only the slices it must (its own), and the status says which. The review
    list under the objects table goes to a slice it names."""
    viewer = make_napari_viewer()
    viewer.open(str(ABDOMINAL_CT), plugin="napari-medsam")
    liver = reference_organs(viewer)["liver"]
    w, _, boxes = open_widget(viewer)
    depth, key = liver.shape[0], int(liver.sum(axis=(1, 2)).argmax())
    viewer.dims.set_current_step(0, depth - 1 - key)
    boxes.add_rectangles(box_on(liver[key], key))
    assert w.segment() == [1]
    assert w.propagate() == [1]
    review = w.objects.review
    qtbot.waitUntil(lambda: bool(review.buttons))  # the slices to check, most doubtful first
    review.buttons[0].click()
    assert int(viewer.dims.current_step[0]) == int(review.buttons[0].text())
    before = w.labels_layer.data == 1
    tip = int(np.flatnonzero(liver.any(axis=(1, 2)))[0])  # the lowest slice (the file's first)
    viewer.dims.set_current_step(0, depth - 1 - tip)
    boxes.add_rectangles(box_on(liver[tip], tip))
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS) as blocker:
        w.correct_button.native.click()
    assert blocker.args == ["done"]
    after = w.labels_layer.data == 1
    assert dice(after[tip], liver[tip]) >= dice(before[tip], liver[tip])
    for z in range(depth):
        was = dice(before[z], liver[z])
        if was >= 0.9:
            assert dice(after[z], liver[z]) >= was - 0.02, z
    changed = [z for z in range(depth) if not np.array_equal(after[z], before[z])]
    assert set(changed) <= {tip, tip + 1}
    status = w.status_label.value
    assert status.startswith("Wrote label(s) [1]. Corrected ")
    assert f"(label 1) on {len(changed)} slice(s)" in status
