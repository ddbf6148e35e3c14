"""The first five minutes (issue 32), one test per item of the walk-through, driven as a user would:
stand-in predictors (``VolumeSpy``) keep these fast; ``test_widget_walkthrough.py`` walks the same
items with the real model on the shared CT."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import test_widget_volume as volume_tests
from napari_medsam._qt.widget import MedSamWidget
from test_widget_volume import VolumeSpy, box_around, ellipsoids

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
