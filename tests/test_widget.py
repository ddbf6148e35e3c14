"""Drive MedSamWidget as a user would: add layers, draw boxes and clicks, press Segment."""

from __future__ import annotations

import threading
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

from conftest import rectangle
from napari_medsam._qt.widget import ALL_SLICES, TOGGLE_KEY, MedSamWidget
from napari_medsam.base.errors import ModelLoadError

pytestmark = pytest.mark.gui


@pytest.fixture
def notices():
    """Notifications shown during the test, as (severity, message)."""
    start = len(notification_manager.records)

    def read():
        return [(n.severity, str(n.message)) for n in notification_manager.records[start:]]

    return read


@pytest.fixture
def setup(make_napari_viewer, spy):
    """A viewer with a 3D image (anisotropic, offset), the widget docked, prompt layers added."""
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    image = viewer.add_image(
        rng.normal(size=(6, 40, 64)).astype(np.float32),
        scale=(3.0, 0.5, 0.5),
        translate=(10.0, -2.0, 4.0),
        name="ct",
    )
    widget = MedSamWidget(viewer, predictor_factory=lambda source, device: spy)
    viewer.window.add_dock_widget(widget)
    boxes, clicks = widget.add_prompt_layers()
    return SimpleNamespace(viewer=viewer, image=image, widget=widget, boxes=boxes, clicks=clicks)


def world(layer, data_coords):
    """World coordinates of data coordinates of ``layer`` (vertices drawn by a user)."""
    return np.array([layer.data_to_world(c) for c in np.atleast_2d(data_coords)])


def test_segment_box_writes_labels_and_ids(setup, spy):
    v, w = setup.viewer, setup.widget
    v.dims.set_current_step(0, 2)
    setup.boxes.add_rectangles(rectangle(5, 10, 20, 30, 2))
    ids = w.segment()
    labels = w.labels_layer
    assert ids == [1]
    assert labels.data.shape == (6, 40, 64)
    assert labels.data.dtype == np.uint16
    expected = np.zeros((6, 40, 64), np.uint16)
    expected[2, 5:21, 10:31] = 1
    np.testing.assert_array_equal(labels.data, expected)
    assert setup.boxes.features["label_id"].tolist() == [1]
    # the spy saw the slice and the (x, y) box; window: MedSAM's training window for this
    # non-CT image, the 0.5-99.5 percentiles of its voxels > 0 (MedSAM's MR rule)
    data = setup.image.data
    assert (data < 0).any()  # where the rule differs from taking the non-zero voxels
    assert spy.images == [((40, 64), tuple(np.percentile(data[data > 0], [0.5, 99.5])))]
    w.window = "layer contrast limits"
    w.segment()
    assert spy.images[-1] == ((40, 64), tuple(setup.image.contrast_limits))
    assert spy.prompts[0]["box"] == (10.0, 5.0, 30.0, 20.0)


def test_all_slices_is_one_undo_step_and_ids_are_kept(setup, spy):
    w = setup.widget
    setup.boxes.add_rectangles(rectangle(5, 10, 20, 30, 1))
    setup.boxes.add_rectangles(rectangle(2, 2, 8, 9, 4))
    setup.boxes.add_rectangles(rectangle(25, 40, 35, 60, 4))
    w.scope = ALL_SLICES
    assert w.segment() == [1, 2, 3]
    labels = w.labels_layer
    assert [int((labels.data == i).sum()) for i in (1, 2, 3)] == [16 * 21, 7 * 8, 11 * 21]
    assert len(spy.images) == 2  # one encoding per slice
    # move box 0 and run again: only it runs; its old pixels are replaced, the id stays
    setup.boxes.data = [rectangle(0, 0, 3, 3, 1), *setup.boxes.data[1:]]
    assert w.segment() == [1]
    assert len(spy.images) == 3  # slice 4's boxes were left alone
    assert int((labels.data == 1).sum()) == 16
    assert labels.data[1, 0:4, 0:4].min() == 1
    assert setup.boxes.features["label_id"].tolist() == [1, 2, 3]
    labels.undo()  # the second Segment only
    assert int((labels.data == 1).sum()) == 16 * 21
    assert setup.boxes.features["label_id"].tolist() == [1, 2, 3]
    labels.undo()  # the first Segment, all three boxes at once: they are new again
    assert not labels.data.any()
    assert setup.boxes.features["label_id"].tolist() == [0, 0, 0]
    labels.redo()
    assert setup.boxes.features["label_id"].tolist() == [1, 2, 3]


def test_existing_labels_are_kept_unless_overwrite(setup):
    w = setup.widget
    image = setup.image
    labels = setup.viewer.add_labels(
        np.zeros((6, 40, 64), np.uint8), name="manual", scale=image.scale, translate=image.translate
    )
    labels.data[0, 10:15, 10:15] = 9
    w.labels_layer = labels
    setup.viewer.dims.set_current_step(0, 0)
    setup.boxes.add_rectangles(rectangle(5, 5, 20, 20, 0))
    assert w.segment() == [10]
    assert int((labels.data == 9).sum()) == 25
    w.overwrite = True
    w.segment()
    assert int((labels.data == 9).sum()) == 0
    assert int((labels.data == 10).sum()) == 16 * 16


def test_clicks_flip_to_xy_and_toggle_key(setup, spy, notices):
    v, w, clicks = setup.viewer, setup.widget, setup.clicks
    v.dims.set_current_step(0, 3)
    setup.boxes.add_rectangles(rectangle(4, 4, 30, 50, 3))
    clicks.add([3, 10, 20])  # positive, inside the box
    v.layers.selection.active = clicks
    press = v.window._qt_viewer._key_map_handler.press_key  # what a key press in the canvas calls
    press(TOGGLE_KEY)
    assert w.positive_clicks is False
    clicks.add([3, 12, 40])  # negative
    clicks.add([3, 35, 60])  # positive, outside the box: a click-only object
    press(TOGGLE_KEY)
    assert clicks.features["positive"].tolist() == [True, False, False]
    clicks.mode = "select"
    clicks.selected_data = {2}
    press(TOGGLE_KEY)  # select mode: flips the selected click, not the next-click default
    assert clicks.features["positive"].tolist() == [True, False, True]
    assert w.positive_clicks is True
    face = clicks.face_color
    assert not np.allclose(face[1], face[2])  # negative clicks look different
    assert w.segment() == [1, 2]
    box_prompt, click_prompt = spy.prompts
    np.testing.assert_allclose(box_prompt["points"], [[20, 10], [40, 12]])  # (x, y)
    assert box_prompt["labels"].tolist() == [1, 0]
    assert click_prompt["box"] is None
    np.testing.assert_allclose(click_prompt["points"], [[60, 35]])
    assert clicks.features["label_id"].tolist() == [0, 0, 2]
    warnings = [m for s, m in notices() if s == NotificationSeverity.WARNING]
    assert any("trained on boxes only" in m for m in warnings)


def test_sam_single_click_uses_multimask(setup, spy):
    spy.family = "sam"
    setup.viewer.dims.set_current_step(0, 0)
    setup.clicks.add([0, 10, 10])
    setup.widget.segment()
    assert spy.prompts[0]["multimask"] is True


def test_nothing_to_segment_and_bad_layers(setup, notices):
    w = setup.widget
    setup.viewer.dims.set_current_step(0, 0)
    with pytest.raises(ValueError, match="Nothing to segment on slice 0"):
        w.segment()
    setup.boxes.add_rectangles(rectangle(1000, 1000, 1010, 1010, 0))
    with pytest.raises(ValueError, match=r"A box on slice 0 lies outside the image: draw it on the image\.$"):
        w.segment()
    w.segment_button.native.click()  # the button reports instead of raising
    assert "lies outside the image" in notices()[-1][1]
    wrong = setup.viewer.add_labels(np.zeros((6, 40, 63), np.uint8))
    w.labels_layer = wrong
    assert not w.segment_button.enabled
    assert "has shape (6, 40, 63)" in w.status_label.value
    with pytest.raises(ValueError, match="has shape"):
        w.segment()
    w.labels_layer = None
    assert w.segment_button.enabled


def test_button_runs_in_worker_with_progress(setup, spy, qtbot):
    w = setup.widget
    setup.viewer.dims.set_current_step(0, 0)
    setup.boxes.add_rectangles(rectangle(5, 10, 20, 30, 0))
    # the bar as the job leaves it (a model loading ahead afterwards may turn it into a busy bar)
    bar_at_end = []
    w.job_finished.connect(lambda _: bar_at_end.append((w.progress_bar.value, w.progress_bar.max)))
    with qtbot.waitSignal(w.job_finished, timeout=10_000) as blocker:
        w.segment_button.native.click()
        assert w.jobs.busy
        assert not w.segment_button.enabled
    assert blocker.args == ["done"]
    assert int((w.labels_layer.data == 1).sum()) == 16 * 21
    assert bar_at_end == [(3, 3)]
    assert w.status_label.value == "Wrote label(s) [1]"
    assert w.segment_button.enabled


def test_cancel_writes_nothing(setup, spy, qtbot, notices):
    w = setup.widget
    spy.gate = threading.Event()
    setup.viewer.dims.set_current_step(0, 0)
    setup.boxes.add_rectangles(rectangle(5, 10, 20, 30, 0))
    with qtbot.waitSignal(w.job_finished, timeout=10_000) as blocker:
        w.segment_button.native.click()
        qtbot.waitUntil(spy.entered.is_set, timeout=10_000)
        w.cancel_button.native.click()
        spy.gate.set()
    assert blocker.args == ["cancelled"]
    assert w.labels_layer is None
    assert "cancelled" in notices()[-1][1]


def test_model_load_error_is_a_notification(make_napari_viewer, qtbot, notices):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)))

    def broken(source, device):
        raise ModelLoadError(f"cannot load {source!r}: weights missing")

    w = MedSamWidget(viewer, predictor_factory=broken)
    viewer.add_shapes([rectangle(2, 2, 20, 20)], shape_type="rectangle")
    assert w.boxes_layer is not None  # a new Shapes layer is picked up
    with qtbot.waitSignal(w.job_finished, timeout=10_000) as blocker:
        w.segment_button.native.click()
    assert blocker.args == ["failed"]
    severity, message = notices()[-1]
    assert severity == NotificationSeverity.ERROR
    assert f"cannot load {w.model_source!r}: weights missing" in message
    assert "Traceback" not in message
    assert w.segment_button.enabled
    with pytest.raises(ModelLoadError):
        w.segment()


def test_a_bug_in_a_job_is_logged_with_its_traceback_and_shown_as_internal(
    make_napari_viewer, qtbot, notices, caplog
):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)))

    def buggy(source, device):
        raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")

    w = MedSamWidget(viewer, predictor_factory=buggy)
    viewer.add_shapes([rectangle(2, 2, 20, 20)], shape_type="rectangle")
    with caplog.at_level("ERROR"), qtbot.waitSignal(w.job_finished, timeout=10_000) as blocker:
        w.segment_button.native.click()
    assert blocker.args == ["failed"]
    severity, message = notices()[-1]
    assert severity == NotificationSeverity.ERROR
    assert "internal error (TypeError), see the log" in message
    assert "NoneType" not in message
    (record,) = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert record.exc_info[0] is TypeError  # the traceback is in the log
    assert w.segment_button.enabled  # the viewer and the widget keep working


def test_custom_model_needs_weights(setup, spy):
    w = setup.widget
    w.model = "custom"
    assert not w.controls.weights.native.isHidden()
    assert not w.segment_button.enabled
    assert "Choose a weights file" in w.status_label.value
    w.model = "/some/medsam_vit_b.pth"
    assert w.segment_button.enabled
    assert w.model_source == "/some/medsam_vit_b.pth"


def test_key_binding_released_on_close(make_napari_viewer, spy):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 16)))
    w = MedSamWidget(viewer, predictor_factory=lambda s, d: spy)
    dock = viewer.window.add_dock_widget(w)
    assert TOGGLE_KEY.upper() in {str(k) for k in viewer.keymap}
    viewer.window.remove_dock_widget(dock)
    assert viewer.keymap == {}
    w2 = MedSamWidget(viewer, predictor_factory=lambda s, d: spy)
    w3 = MedSamWidget(viewer, predictor_factory=lambda s, d: spy)
    assert list(viewer.keymap.values()) == list(w3.keys.bindings.values())
    w2.close()  # w3 holds the keys now: closing w2 leaves them alone
    assert list(viewer.keymap.values()) == list(w3.keys.bindings.values())
    w3.close()
    assert viewer.keymap == {}


def test_plugin_menu_widget_segments_through_public_api(make_napari_viewer, spy, monkeypatch):
    """napari hands plugins a viewer proxy that forbids private attributes: segment through it."""
    import napari_medsam._qt.widget as widget_module

    monkeypatch.setattr(widget_module, "load_predictor", lambda source, device, backend="auto": spy)
    monkeypatch.setattr(widget_module, "unload_predictor", lambda predictor: None)  # the spy's release
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((30, 40), np.uint8))
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM segmentation")
    assert isinstance(widget, MedSamWidget)
    assert widget.model in ("lite-medsam", "medsam")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Private attribute access")
        boxes, _ = widget.add_prompt_layers()
        boxes.add_rectangles(rectangle(2, 3, 10, 20))
        assert widget.segment() == [1]
        viewer.layers.remove(boxes)
    assert int((widget.labels_layer.data == 1).sum()) == 9 * 18


def test_real_litemedsam_segments_phantom(make_napari_viewer, qtbot):
    """The bundled LiteMedSAM through the widget (thread worker) on the CT phantom."""
    from napari_medsam.base.phantoms import ct_phantom_volume

    volume, organ = ct_phantom_volume()
    viewer = make_napari_viewer()
    image = viewer.add_image(volume, contrast_limits=(-160, 240), scale=(2.5, 0.8, 0.8))
    w = MedSamWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model, w.device = "lite-medsam", "cpu"
    boxes, _ = w.add_prompt_layers()
    z = volume.shape[0] // 2
    viewer.dims.set_current_step(0, z)
    rows, cols = np.nonzero(organ[z])
    data_box = rectangle(rows.min() - 5, cols.min() - 5, rows.max() + 5, cols.max() + 5, z)
    boxes.add_rectangles(data_box)
    assert image.ndim == 3
    with qtbot.waitSignal(w.job_finished, timeout=120_000) as blocker:
        w.segment_button.native.click()
    assert blocker.args == ["done"]
    mask = w.labels_layer.data[z] == 1
    dice = 2 * (mask & organ[z]).sum() / (mask.sum() + organ[z].sum())
    assert dice >= 0.95, dice
    assert w.predictor.family == "lite-medsam"
    assert not w.labels_layer.data[z - 1].any()


def test_custom_weights_folder_runs_the_real_predictor(make_napari_viewer, qtbot, tiny_sam_dir):
    """A (tiny, random) SAM folder as custom weights: the real MedSamPredictor in the worker."""
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).normal(size=(48, 80)).astype(np.float32))
    w = MedSamWidget(viewer)
    w.model, w.device = str(tiny_sam_dir), "cpu"
    _, clicks = w.add_prompt_layers()
    clicks.add([20, 30])
    with qtbot.waitSignal(w.job_finished, timeout=60_000) as blocker:
        w.segment_button.native.click()
    assert blocker.args == ["done"]
    assert w.predictor.family == "sam"
    assert w.predictor.image_shape == (48, 80)
    assert w.labels_layer.data.shape == (48, 80)
    assert clicks.features["label_id"].tolist() == [1]


def test_rgb_image_goes_in_whole_without_window(make_napari_viewer, spy):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((30, 50, 3), np.uint8), rgb=True)
    w = MedSamWidget(viewer, predictor_factory=lambda s, d: spy)
    boxes, _ = w.add_prompt_layers()
    boxes.add_rectangles(rectangle(5, 5, 20, 40))
    assert w.segment() == [1]
    assert spy.images == [((30, 50, 3), None)]
    assert w.labels_layer.data.shape == (30, 50)
