"""The selected object, driven as a user would: the objects table and the labels layer agree on
it; Propagate, Correct and End here act on it alone, and say so; messages name slider positions.
Stand-in predictors (``VolumeSpy``) keep these fast; the real model walks the same path in
``test_widget_walkthrough.py``."""

from __future__ import annotations

import re
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from qtpy.QtCore import Qt

import test_widget_volume as volume_tests
from conftest import dice, rectangle
from fakes import HeldSpy, VolumeSpy
from napari_medsam._qt.widget import NEW_OBJECTS, MedSamWidget
from napari_medsam.io.samples import ABDOMINAL_CT
from realdata import SEG_SM, oracle_box
from test_widget_volume import box_around, ellipsoids

#: The fixtures of the volume tests: a viewer with a 3D image and the widget, its stand-in model.
make_setup, spy, notices = volume_tests.make_setup, volume_tests.spy, volume_tests.notices

pytestmark = pytest.mark.gui


def test_propagate_runs_the_selected_object_only_and_the_table_shows_which(make_setup, spy, notices):
    """Liver done, spleen new: Propagate carries the spleen alone (the encoder never sees the liver's)."""
    organs = (((8.0, 14.0, 15.0), (7.0, 9.0, 10.0)), ((8.0, 34.0, 40.0), (2.6, 8.0, 10.0)))
    volume, (liver, spleen) = ellipsoids(shape=(16, 48, 56), objects=organs)
    s = make_setup(volume)
    w, viewer, labels_of = s.widget, s.viewer, lambda: s.widget.labels_layer
    viewer.dims.set_current_step(0, 8)
    s.boxes.add_rectangles(box_around(liver[8], 8))
    assert w.segment() == [1]
    assert w.propagate() == [1]
    labels = labels_of()
    assert dice(labels.data == 1, liver) > 0.98
    viewer.dims.set_current_step(0, 7)
    s.boxes.add_rectangles(box_around(spleen[7], 7))
    assert w.segment() == [2]
    w.objects.refresh()
    assert labels.selected_label == 2  # the new object is selected ...
    assert w.objects.table.selectedIndexes()[0].row() == 1  # ... and highlighted in the table
    assert w.propagate_button.text == "Propagate object 2"

    spy.cache.clear()  # a cold encoder: every slice Propagate visits is encoded once
    encoded, prompts = len(spy.encoded), len(spy.prompts)
    assert w.propagate() == [2]
    assert dice(labels.data == 2, spleen) > 0.98
    assert dice(labels.data == 1, liver) > 0.98
    spleen_slices = np.flatnonzero(spleen.any(axis=(1, 2)))
    # its slices, the one past each end that stops the walk, and the one the walk's lookahead
    # encoded beyond that (the encoder runs a slice ahead of the decoder)
    assert len(spy.encoded) - encoded <= len(spleen_slices) + 4
    assert all(p["box"][0] > 25 for p in spy.prompts[prompts:])  # every prompt on the spleen's side

    w.objects.table.selectRow(0)  # a click on the liver's row selects it for painting too
    assert labels.selected_label == 1
    assert w.propagate_button.text == "Propagate object 1"
    labels.selected_label = 2  # the layer's label picker highlights the spleen's row
    assert [i.row() for i in w.objects.table.selectionModel().selectedRows()] == [1]
    swatch = w.objects.table.item(1, 0).data(Qt.ItemDataRole.DecorationRole)
    np.testing.assert_allclose(swatch.getRgbF(), labels.get_color(2), atol=1e-2)

    w.propagate_scope = NEW_OBJECTS
    assert w.propagate_button.text == "Propagate new"
    with pytest.raises(ValueError, match="No new objects on slice 7"):
        w.propagate()
    w.propagate_button.native.click()  # the button says it in the status line and a notification
    assert "No new objects on slice 7" in w.status_label.value
    assert w.status_label.tooltip == w.status_label.value
    assert "No new objects" in notices()[-1][1]


def test_correct_without_a_usable_box_says_what_to_draw(make_setup, spy, notices):
    volume, (organ,) = ellipsoids()
    s = make_setup(volume)
    w = s.widget
    s.viewer.dims.set_current_step(0, 6)
    s.boxes.add_rectangles(box_around(organ[6], 6))
    w.segment()
    w.propagate()
    s.viewer.dims.set_current_step(0, 4)
    w.correct_button.native.click()
    assert "Draw a box around 'object 1' (label 1) on slice 4" in notices()[-1][1]
    s.boxes.add_rectangles(box_around(organ[4], 4))
    s.boxes.add_rectangles(box_around(organ[4], 4, margin=4))
    with pytest.raises(ValueError, match="2 new boxes on slice 4"):
        w.correct()
    w.labels_layer.selected_label = 5
    with pytest.raises(ValueError, match="The selected object \\(label 5\\) is not in this volume"):
        w.correct()


@pytest.fixture
def ct_setup(make_napari_viewer):
    """The shared CT opened with the plugin's reader (its slider runs against the array's index)."""
    viewer = make_napari_viewer()
    [image] = viewer.open(str(ABDOMINAL_CT), plugin="napari-medsam")
    [reference] = viewer.open(str(SEG_SM), plugin="napari-medsam")
    liver = np.asarray(reference.data) == 5
    viewer.layers.remove(reference)
    spy = VolumeSpy(threshold=60.0)
    widget = MedSamWidget(viewer, predictor_factory=lambda source, device: spy)
    viewer.window.add_dock_widget(widget)
    widget.prefetch = False
    boxes, _ = widget.add_prompt_layers()
    return SimpleNamespace(viewer=viewer, image=image, widget=widget, boxes=boxes, liver=liver, spy=spy)


def liver_box(liver, z):
    x0, y0, x1, y1 = oracle_box(liver[z])
    return rectangle(y0, x0, y1, x1, z)


def test_messages_and_end_here_use_the_slider_positions_of_the_reversed_ct(ct_setup, monkeypatch):
    s = ct_setup
    w, viewer, depth = s.widget, s.viewer, s.liver.shape[0]
    viewer.dims.set_current_step(0, 5)
    z = w.current_stack().index
    assert z == depth - 1 - 5  # slider 5 shows array index 24: the slider runs reversed
    s.boxes.add_rectangles(liver_box(s.liver, z))
    assert w.segment() == [1]
    messages = []
    monkeypatch.setattr(w.jobs, "show_progress", lambda progress: messages.append(progress[2]))
    assert w.propagate(max_slices=3) == [1]
    named = {int(n) for n in re.findall(r"slice (\d+) \(-?\d+\.\d mm\)", " ".join(messages))}
    assert named == set(range(2, 9))  # slider positions 5 +- 3, never the array's 21..27
    for position in named:  # each one shows the slice it names
        viewer.dims.set_current_step(0, position)
        assert (w.labels_layer.data[w.current_stack().index] == 1).any()

    viewer.dims.set_current_step(0, 7)
    w.labels_layer.selected_label = 3
    with pytest.raises(ValueError, match=r"not on slice 7 \("):
        w.end_here("after")
    w.labels_layer.selected_label = 1
    assert w.end_here("after") == [8]  # higher slider positions: array indices below
    present = {depth - 1 - int(k) for k in np.flatnonzero((w.labels_layer.data == 1).any(axis=(1, 2)))}
    assert present == {2, 3, 4, 5, 6, 7}
    assert "removed from slice(s) 8..8" in w.status_label.value
    w.end_buttons["before"].native.click()  # the button: lower slider positions, one undo step
    present = {depth - 1 - int(k) for k in np.flatnonzero((w.labels_layer.data == 1).any(axis=(1, 2)))}
    assert present == {7}
    w.labels_layer.undo()
    present = {depth - 1 - int(k) for k in np.flatnonzero((w.labels_layer.data == 1).any(axis=(1, 2)))}
    assert present == {2, 3, 4, 5, 6, 7}


def test_the_model_loads_ahead_in_a_thread_and_the_first_segment_says_what_it_waits_for(
    make_napari_viewer, qtbot
):
    volume, (organ,) = ellipsoids()
    viewer = make_napari_viewer()
    viewer.add_image(volume)
    spy, loads, release = VolumeSpy(), [], threading.Event()

    def slow(source, device):
        loads.append((source, device, threading.current_thread().name))
        assert release.wait(30)  # the load takes as long as the test says
        return spy

    widget = MedSamWidget(viewer, predictor_factory=slow)
    widget.prefetch = False
    qtbot.waitUntil(lambda: bool(loads), timeout=10_000)  # started without any run asked for it
    assert loads[0][:2] == ("lite-medsam", "auto")
    assert loads[0][2] != threading.main_thread().name
    boxes, _ = widget.add_prompt_layers()  # the viewer's thread is free while the model loads
    viewer.dims.set_current_step(0, 6)
    boxes.add_rectangles(box_around(organ[6], 6))
    messages = []
    widget.jobs.show_progress = lambda progress: messages.append(progress[2])
    release.set()
    assert widget.segment() == [1]
    assert len(loads) == 1  # the run took the model loaded ahead
    assert messages[0].startswith("Loading the model lite-medsam")
    assert "Encoding slice 1 of 1" in messages[1]


def shown(widget) -> int:
    """How many slices show object 1."""
    return int((widget.labels_layer.data == 1).any(axis=(1, 2)).sum())


def test_propagate_shows_each_slice_as_found_and_cancel_takes_them_back(make_setup, qtbot):
    volume, (organ,) = ellipsoids()
    s = make_setup(volume)
    w = s.widget
    w.prefetch = False  # the held encoder counts the run's own slices only
    s.viewer.dims.set_current_step(0, 6)
    s.boxes.add_rectangles(box_around(organ[6], 6))
    assert w.segment() == [1]
    before = w.labels_layer.data.copy()
    for cancel in (True, False):
        held = HeldSpy(hold_at=3)  # the key slice and two more, then it waits
        w.models.get = lambda source, device, held=held: held
        with qtbot.waitSignal(w.job_finished, timeout=20_000) as blocker:
            w.propagate_button.native.click()
            qtbot.waitUntil(held.holding.is_set, timeout=20_000)
            # the key slice (encoded for the key object's features) and the two found after it
            qtbot.waitUntil(lambda: shown(w) == 3, timeout=20_000)
            assert w.jobs.busy  # the organ grows on screen while the run goes on
            if cancel:
                w.cancel_button.native.click()
            held.go.set()
        assert blocker.args == ["cancelled" if cancel else "done"]
        if cancel:
            np.testing.assert_array_equal(w.labels_layer.data, before)  # nothing stays
    assert dice(w.labels_layer.data == 1, organ) > 0.95
    w.labels_layer.undo()  # the whole run is one step
    np.testing.assert_array_equal(w.labels_layer.data, before)


def test_the_dock_keeps_its_width_with_long_messages_names_and_a_3d_visit(make_napari_viewer, spy):
    from qtpy.QtWidgets import QApplication

    volume, (organ,) = ellipsoids()
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(volume, name="an image with a rather long name from a PACS export, series 3")
    widget = MedSamWidget(viewer, predictor_factory=lambda source, device: spy)
    widget.prefetch = False
    dock = viewer.window.add_dock_widget(widget)
    boxes, _ = widget.add_prompt_layers()
    QApplication.processEvents()
    width = dock.width()
    viewer.dims.set_current_step(0, 6)
    boxes.add_rectangles(box_around(organ[6], 6))
    widget.segment()
    name = "left kidney upper pole cyst, second reader's outline"
    widget.labels_layer.features = {"index": [1], "name": [name]}
    widget.objects.refresh()  # the table shows it at once, and the buttons name it, cut
    QApplication.processEvents()
    assert widget.propagate_button.text.startswith("Propagate left")
    assert widget.propagate_button.text.endswith("…")
    assert name in widget.propagate_button.tooltip
    assert abs(dock.width() - width) <= 10, (width, dock.width())
    widget.propagate()
    long = "Propagate object 1 of 1 (label 1): " + "slice 25 (-106.3 mm): low predicted IoU, stopping; " * 6
    widget.status_label.value = long
    viewer.dims.ndisplay = 3
    QApplication.processEvents()
    viewer.dims.ndisplay = 2
    widget.status_label.value = long
    QApplication.processEvents()
    assert abs(dock.width() - width) <= 10, (width, dock.width())
    assert widget.status_label.tooltip == long
    assert image.name in [widget._image.native.itemText(i) for i in range(widget._image.native.count())]
