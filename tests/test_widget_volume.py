"""The widget on volumes, driven as a user would: auto-segment, 3D view, options, Propagate,
Interpolate and prefetching. Waits are on signals and conditions, never on clocks."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks
from napari.utils.notifications import notification_manager

from conftest import dice, rectangle
from fakes import VolumeSpy
from napari_medsam._qt.widget import ALL_OBJECTS, ALL_SLICES, MedSamWidget

pytestmark = pytest.mark.gui
TIMEOUT_MS = 20_000


def ellipsoids(shape=(12, 48, 56), objects=(((6.0, 24.0, 20.0), (4.6, 12.0, 10.0)),)):
    """A clean CT-like volume (40 HU, objects 140 HU); voxel [z, 0, 0] marks the slice."""
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    truths = [
        sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0
        for centre, radii in objects
    ]
    volume = np.full(shape, 40, np.int16)
    for truth in truths:
        volume[truth] = 140
    volume[:, 0, 0] = np.arange(shape[0]) - 100
    return volume, truths


def box_around(mask2d, *lead, margin=2):
    rows, cols = np.nonzero(mask2d)
    return rectangle(
        rows.min() - margin, cols.min() - margin, rows.max() + margin, cols.max() + margin, *lead
    )


@pytest.fixture
def spy():
    return VolumeSpy()


@pytest.fixture
def notices():
    """Notifications shown during the test, as (severity, message)."""
    start = len(notification_manager.records)
    return lambda: [(n.severity, str(n.message)) for n in notification_manager.records[start:]]


@pytest.fixture
def make_setup(make_napari_viewer, spy):
    """A viewer with a 3D CT-like image (anisotropic, offset) and the docked widget."""

    def make(volume, *, prefetch=False, calls=None):
        viewer = make_napari_viewer()
        image = viewer.add_image(
            volume, scale=(2.5, 0.8, 0.8), translate=(5.0, -3.0, 2.0), contrast_limits=(-160, 240)
        )

        def factory(source, device):
            if calls is not None:
                calls.append((source, device))
            return spy

        widget = MedSamWidget(viewer, predictor_factory=factory)
        viewer.window.add_dock_widget(widget)
        widget.prefetch = prefetch
        boxes, clicks = widget.add_prompt_layers()
        return SimpleNamespace(viewer=viewer, image=image, widget=widget, boxes=boxes, clicks=clicks)

    return make


def labels_of(setup):
    return setup.widget.labels_layer.data


# ---------------------------------------------------------------- auto-segment


@dataclass
class Mouse:
    """The fields of a vispy mouse event that napari's mouse bindings read."""

    type: str
    position: tuple
    is_dragging: bool = False
    button: int = 1
    modifiers: list = field(default_factory=list)
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: list | None = None
    up_direction: list | None = None
    dims_displayed: list = field(default_factory=lambda: [1, 2])
    delta: tuple | None = None
    handled: bool = False


class Persisted:
    """The handle napari keeps for a drag: later events are swapped in as ``__wrapped__``."""

    def __init__(self, event: Mouse) -> None:
        self.__wrapped__ = event

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)


def test_auto_segment_runs_once_per_drawn_box(make_setup, spy, qtbot):
    volume, _ = ellipsoids()
    s = make_setup(volume)
    w, boxes = s.widget, s.boxes
    s.viewer.dims.set_current_step(0, 6)
    w.auto_segment = True
    assert boxes.mode == "add_rectangle"
    start = s.image.data_to_world((6, 10, 12))
    end = s.image.data_to_world((6, 30, 40))
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS) as blocker:
        mouse_press_callbacks(boxes, Persisted(Mouse("mouse_press", tuple(start))))
        assert not w.auto.pending  # a box still being dragged out runs nothing
        mouse_move_callbacks(boxes, Mouse("mouse_move", tuple(end), is_dragging=True))
        mouse_release_callbacks(boxes, Mouse("mouse_release", tuple(end)))
    assert blocker.args == ["done"]
    assert len(spy.prompts) == 1  # one drawing gesture, one run
    np.testing.assert_allclose(spy.prompts[0]["box"], (12, 10, 40, 30))
    expected = np.zeros(volume.shape, bool)
    expected[6, 10:31, 12:41] = volume[6, 10:31, 12:41] > 90
    np.testing.assert_array_equal(labels_of(s) == 1, expected)
    assert boxes.features["label_id"].tolist() == [1]
    assert w.status_label.value == "Wrote label(s) [1]"


def test_auto_segment_debounces_edits_and_waits_for_a_running_job(make_setup, spy, qtbot):
    volume, _ = ellipsoids(
        objects=(((6.0, 14.0, 14.0), (4.6, 8.0, 8.0)), ((6.0, 34.0, 40.0), (4.6, 8.0, 9.0)))
    )
    s = make_setup(volume)
    w, boxes = s.widget, s.boxes
    s.viewer.dims.set_current_step(0, 6)
    boxes.add_rectangles(rectangle(2, 2, 6, 6, 6))  # before auto-segment: never run
    assert not w.auto.pending
    assert not w.jobs.busy
    w.auto_segment = True
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS):
        boxes.add_rectangles(rectangle(4, 4, 24, 24, 6))
        boxes.add_rectangles(rectangle(24, 29, 44, 51, 6))  # same burst: the same run
    assert len(spy.encoded) == 1
    assert len(spy.prompts) == 2
    assert boxes.features["label_id"].tolist() == [0, 1, 2]
    assert not (labels_of(s)[6, 2:7, 2:7] > 0).all()  # the box drawn before was left alone

    # a click inside box 2 refines object 2 only; a box drawn during that run waits for it
    spy.gate, spy.entered = threading.Event(), threading.Event()
    spy.cache.clear()  # make the next run encode, so that it blocks in the gate
    s.clicks.add([6, 30, 40])
    qtbot.waitUntil(spy.entered.is_set, timeout=TIMEOUT_MS)
    assert w.jobs.busy
    boxes.add_rectangles(rectangle(1, 44, 10, 54, 6))
    with qtbot.waitSignals([w.job_finished, w.job_finished], timeout=TIMEOUT_MS):
        spy.gate.set()
    qtbot.waitUntil(lambda: not w.jobs.busy and not w.auto.pending, timeout=TIMEOUT_MS)
    np.testing.assert_allclose(spy.prompts[2]["box"], (29, 24, 51, 44))
    np.testing.assert_allclose(spy.prompts[2]["points"], [[40, 30]])
    np.testing.assert_allclose(spy.prompts[3]["box"], (44, 1, 54, 10))
    assert len(spy.prompts) == 4
    assert boxes.features["label_id"].tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------- 3D view and options


def test_3d_view_disables_runs_and_says_switch_to_2d(make_setup, notices):
    volume, truths = ellipsoids()
    s = make_setup(volume)
    w = s.widget
    s.boxes.add_rectangles(box_around(truths[0][6], 6))
    s.viewer.dims.ndisplay = 3
    for button in w.run_buttons:
        assert not button.enabled
        assert "switch the viewer to 2D" in button.tooltip
    assert "switch the viewer to 2D" in w.status_label.value
    with pytest.raises(ValueError, match="switch the viewer to 2D"):
        w.segment()
    with pytest.raises(ValueError, match="switch the viewer to 2D"):
        w.propagate()
    s.viewer.dims.ndisplay = 2
    assert all(button.enabled for button in w.run_buttons)
    s.viewer.dims.set_current_step(0, 6)
    assert w.segment() == [1]


def test_public_options_drive_the_run(make_setup, spy):
    calls = []
    volume, truths = ellipsoids()
    s = make_setup(volume, calls=calls)
    w = s.widget
    w.model, w.device, w.window = "sam-vit-base", "cpu", "CT lung (L-600 W1500)"
    assert (w.model, w.device, w.model_source) == ("sam-vit-base", "cpu", "sam-vit-base")
    w.model = "/weights/medsam_vit_b.pth"
    assert w.model == w.model_source == "/weights/medsam_vit_b.pth"
    assert not w.controls.weights.native.isHidden()
    w.model = "lite-medsam"
    with pytest.raises(ValueError, match="device must be one of"):
        w.device = "tpu"
    with pytest.raises(ValueError, match="window must be one of"):
        w.window = "my window"
    s.boxes.add_rectangles(box_around(truths[0][4], 4))
    s.boxes.add_rectangles(box_around(truths[0][6], 6))
    w.scope = ALL_SLICES
    assert w.segment() == [1, 2]
    assert calls == [("lite-medsam", "cpu")]
    assert {key[2] for key in spy.encoded} == {(-1350.0, 150.0)}
    manual = s.viewer.add_labels(
        np.zeros(volume.shape, np.uint8), scale=s.image.scale, translate=s.image.translate
    )
    w.labels_layer = manual
    assert w.labels_layer is manual
    assert w.segment() == [1, 2]
    with pytest.raises(ValueError, match="labels_layer must be one of"):
        w.labels_layer = "not a layer"


def test_2d_image_disables_volume_buttons(make_napari_viewer, spy):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 40), np.float32))
    w = MedSamWidget(viewer, predictor_factory=lambda s, d: spy)
    assert w.segment_button.enabled
    for button in (w.propagate_button, w.interpolate_button):
        assert not button.enabled
        assert "need a 3D image" in button.tooltip
    with pytest.raises(ValueError, match="need a 3D image"):
        w.interpolate()


# ---------------------------------------------------------------- Propagate


def test_propagate_button_carries_each_object_through_the_volume(make_setup, spy, qtbot):
    volume, (first, second) = ellipsoids(
        objects=(((6.0, 14.0, 15.0), (4.6, 9.0, 10.0)), ((5.0, 34.0, 38.0), (3.6, 8.0, 12.0)))
    )
    s = make_setup(volume)
    w, viewer = s.widget, s.viewer
    viewer.dims.set_current_step(0, 6)
    s.boxes.add_rectangles(box_around(first[6], 6))
    s.boxes.add_rectangles(box_around(second[6], 6))
    assert w.segment() == [1, 2]
    labels = w.labels_layer
    labels.data[4, 12:16, 12:16] = 9  # painted by hand inside object 1, two slices down
    w.propagate_scope = ALL_OBJECTS
    # the bar as the job leaves it (a model loading ahead afterwards may turn it into a busy bar)
    bar_at_end = []
    w.job_finished.connect(lambda _: bar_at_end.append((w.progress_bar.value, w.progress_bar.max)))
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS) as blocker:
        w.propagate_button.native.click()
        assert w.jobs.busy
        assert not w.propagate_button.enabled
    assert blocker.args == ["done"]
    assert bar_at_end == [(1 + 2 * volume.shape[0],) * 2]
    # the status names the slices each walk asks to check (their slider numbers), as the list does
    assert w.status_label.value.startswith("Wrote label(s) [1, 2]. 'object 1' (label 1): check slice")
    hand = np.zeros(volume.shape, bool)
    hand[4, 12:16, 12:16] = True
    np.testing.assert_array_equal(labels.data == 1, first & ~hand)
    np.testing.assert_array_equal(labels.data == 2, second)
    assert (labels.data[hand] == 9).all()  # never overwritten without 'overwrite'
    assert spy.prompts[2]["mask_input"] is None  # LiteMedSAM: boxes only
    labels.undo()  # the whole propagation is one step
    assert not labels.data[[0, 1, 2, 3, 5, 7, 8, 9, 10, 11]].any()
    assert (labels.data[hand] == 9).all()
    w.overwrite = True
    assert w.propagate() == [1, 2]
    np.testing.assert_array_equal(labels.data == 1, first)


def test_a_box_on_another_slice_of_the_selected_object_corrects_it_in_3d(make_setup, spy, qtbot):
    """Object 1 leaked onto a dimmer neighbour on slices 2-6: select it, box it on slice 4, Correct."""
    volume, (organ, neighbour) = ellipsoids(
        objects=(((6.0, 14.0, 15.0), (4.6, 9.0, 10.0)), ((4.0, 34.0, 38.0), (2.6, 8.0, 12.0)))
    )
    volume[neighbour] = 75  # bright enough for the stand-in's masks (above 70), not like the object
    spy.threshold = 70
    s = make_setup(volume)
    w, viewer = s.widget, s.viewer
    viewer.dims.set_current_step(0, 6)
    s.boxes.add_rectangles(box_around(organ[6], 6))
    assert w.segment() == [1]
    assert w.propagate() == [1]
    labels = w.labels_layer
    leaked = labels.data.copy()
    leaked[:6][neighbour[:6]] = 1  # the bad part: slices 2..5 of the neighbour (6, the key slice, the
    # user made: a correction keeps it as it is)
    leaked[9, 30:40, 30:40] = 7  # another object, never touched
    labels.data = leaked
    labels.selected_label = 1  # what a click in the objects table does
    viewer.dims.set_current_step(0, 4)
    s.boxes.add_rectangles(box_around(organ[4], 4))  # a new box, no label id yet
    prompts = len(spy.prompts)
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS) as blocker:
        w.correct_button.native.click()
    assert blocker.args == ["done"]
    fixed = labels.data
    np.testing.assert_array_equal(fixed == 1, organ)  # the neighbour's voxels are gone
    np.testing.assert_array_equal(fixed == 7, leaked == 7)
    visited = [p["box"] for p in spy.prompts[prompts:]]
    assert len(visited) < volume.shape[0]  # it stopped where the masks agreed again
    for z in (0, 1, 10, 11):
        np.testing.assert_array_equal(fixed[z], leaked[z])
    assert int(s.boxes.features["label_id"].iloc[-1]) == 1  # the box now belongs to object 1
    labels.undo()  # one step
    np.testing.assert_array_equal(labels.data, leaked)


def test_propagate_along_a_reordered_axis(make_setup, spy):
    volume, (truth,) = ellipsoids(objects=(((6.0, 24.0, 28.0), (4.6, 12.0, 14.0)),))
    s = make_setup(volume)
    w, viewer = s.widget, s.viewer
    viewer.dims.order = (2, 0, 1)  # rows: axis 0, columns: axis 1, slider: axis 2
    viewer.dims.set_current_step(2, 28)
    rows, cols = np.nonzero(truth[:, :, 28])
    r0, c0, r1, c1 = rows.min() - 1, cols.min() - 1, rows.max() + 1, cols.max() + 1
    s.boxes.add_rectangles(np.array([[r0, c0, 28], [r0, c1, 28], [r1, c1, 28], [r1, c0, 28]], float))
    assert w.segment() == [1]
    assert spy.image.shape == (12, 48)
    assert w.propagate() == [1]
    areas = truth.sum(axis=(0, 1))  # propagation stops where the mask falls below 10 % of the key's
    np.testing.assert_array_equal(labels_of(s) == 1, truth & (areas >= 0.1 * areas[28]))


def test_propagate_needs_labels_on_this_slice_and_cancel_writes_nothing(make_setup, spy, qtbot, notices):
    volume, (truth,) = ellipsoids()
    s = make_setup(volume)
    w = s.widget
    s.viewer.dims.set_current_step(0, 6)
    with pytest.raises(ValueError, match="segment an object here first"):
        w.propagate()
    s.boxes.add_rectangles(box_around(truth[6], 6))
    w.segment()
    before = labels_of(s).copy()
    spy.gate = threading.Event()
    spy.entered = threading.Event()
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS) as blocker:
        w.propagate_button.native.click()
        qtbot.waitUntil(spy.entered.is_set, timeout=TIMEOUT_MS)
        w.cancel_button.native.click()
        spy.gate.set()
    assert blocker.args == ["cancelled"]
    np.testing.assert_array_equal(labels_of(s), before)
    assert "Propagate cancelled" in notices()[-1][1]
    assert w.propagate(max_slices=1) == [1]  # options reach propagation.propagate
    np.testing.assert_array_equal(np.flatnonzero(labels_of(s).any(axis=(1, 2))), [5, 6, 7])


@pytest.mark.xfail(
    strict=True,
    reason="issue 31's walk learns each slice's look: at this phantom's tips the masks take in noise, which "
    "it learns, and it runs 1-2 slices past each tip over noise (3D Dice 0.899); docs/propagation.md",
)
def test_real_litemedsam_propagates_the_phantom(make_napari_viewer, qtbot):
    """The bundled LiteMedSAM through the widget: one box, Propagate, 3D Dice >= 0.9."""
    from napari_medsam.base.phantoms import ct_phantom_volume

    volume, organ = ct_phantom_volume(depth=12, height=96, width=96)
    viewer = make_napari_viewer()
    viewer.add_image(volume, contrast_limits=(-160, 240), scale=(2.5, 0.8, 0.8))
    w = MedSamWidget(viewer)
    w.model, w.device, w.prefetch = "lite-medsam", "cpu", False
    boxes, _ = w.add_prompt_layers()
    z = volume.shape[0] // 2
    viewer.dims.set_current_step(0, z)
    boxes.add_rectangles(box_around(organ[z], z, margin=4))
    w.segment()
    with qtbot.waitSignal(w.job_finished, timeout=300_000) as blocker:
        w.propagate_button.native.click()
    assert blocker.args == ["done"]
    score = dice(w.labels_layer.data == 1, organ)
    assert score >= 0.9, score


# ---------------------------------------------------------------- Interpolate


def test_interpolate_segments_between_key_boxes_as_one_object(make_setup, spy, qtbot):
    volume = np.full((12, 48, 64), 40, np.int16)
    truth = np.zeros(volume.shape, bool)
    for z in range(3, 10):  # a block that drifts down and right, slice by slice
        truth[z, 8 + z : 20 + z, 6 + 2 * z : 26 + 2 * z] = True
    volume[truth] = 140
    volume[:, 0, 0] = np.arange(12) - 100
    s = make_setup(volume)
    w, boxes = s.widget, s.boxes
    boxes.add_rectangles(rectangle(10, 11, 24, 33, 3))  # key boxes of a new object (label_id 0)
    boxes.add_rectangles(rectangle(16, 23, 30, 45, 9))
    boxes.add_rectangles(rectangle(2, 50, 8, 60, 6))  # another object (id 5), on one slice only
    boxes.features = boxes.features.assign(label_id=[0, 0, 5])
    s.viewer.dims.set_current_step(0, 6)
    with pytest.raises(ValueError, match="Interpolate needs an object with a box on this slice"):
        w.interpolate()
    s.viewer.dims.set_current_step(0, 9)
    with qtbot.waitSignal(w.job_finished, timeout=TIMEOUT_MS) as blocker:
        w.interpolate_button.native.click()
    assert blocker.args == ["done"]
    labels = w.labels_layer
    np.testing.assert_array_equal(labels.data == 6, truth)
    assert set(np.unique(labels.data)) == {0, 6}
    assert boxes.features["label_id"].tolist() == [6, 6, 5]
    np.testing.assert_allclose(spy.prompts[3]["box"], (17, 13, 39, 27))  # slice 6: halfway
    labels.undo()
    assert not labels.data.any()
    w.scope = ALL_SLICES  # boxes already carrying id 6: the same object again
    assert w.interpolate() == [6]
    np.testing.assert_array_equal(labels.data == 6, truth)


# ---------------------------------------------------------------- prefetch


def slice_keys(volume, window):
    return {VolumeSpy.key(volume[z], window): z for z in range(volume.shape[0])}


def test_the_volume_is_encoded_in_the_background_nearest_first(make_setup, spy, qtbot):
    volume, (truth,) = ellipsoids()
    s = make_setup(volume, prefetch=True)
    w, viewer = s.widget, s.viewer
    window = w.intensity_window(s.image)  # auto: MedSAM's training window for this phantom
    keys = slice_keys(volume, window)

    def encoded():
        return [keys[k] for k in spy.encoded]

    def settled():
        return not w.encoding.planned and w.prefetcher.wait(0)

    viewer.dims.set_current_step(0, 6)
    qtbot.waitUntil(lambda: len(spy.encoded) == 12 and settled(), timeout=TIMEOUT_MS)
    assert encoded() == [6, 7, 5, 8, 4, 9, 3, 10, 2, 11, 1, 0]  # the model loaded; nearest first
    status = w.controls.encoding_status
    qtbot.waitUntil(lambda: status.value == "Encoded in the background: 12 / 12 slices", timeout=TIMEOUT_MS)
    viewer.dims.set_current_step(0, 7)
    qtbot.waitUntil(settled, timeout=TIMEOUT_MS)
    assert len(spy.encoded) == 12  # every slice is in the cache already
    s.boxes.add_rectangles(box_around(truth[7], 7))
    assert w.segment() == [1]
    assert len(spy.prompts) == 1
    assert len(spy.encoded) == 12  # decoder only

    w.window = "CT bone (L400 W1800)"  # other pixels for the model: encode again, from slice 7
    qtbot.waitUntil(lambda: len(spy.encoded) == 24 and settled(), timeout=TIMEOUT_MS)
    bone = slice_keys(volume, (-500.0, 1300.0))
    assert [bone[k] for k in spy.encoded[12:]] == [7, 8, 6, 9, 5, 10, 4, 11, 3, 2, 1, 0]

    w.prefetch = False
    w.window = "CT soft tissue (L40 W400)"
    qtbot.waitUntil(settled, timeout=TIMEOUT_MS)
    assert len(spy.encoded) == 24
    assert status.value == ""  # switched off
    w.prefetch = True
    w.model = "sam-vit-base"  # not on this machine: never loaded (nor downloaded) in the background
    assert w.prefetcher.loader is None
    viewer.dims.set_current_step(0, 2)
    qtbot.waitUntil(settled, timeout=TIMEOUT_MS)
    assert len(spy.encoded) == 24


def test_a_2d_image_encodes_only_itself(make_napari_viewer, spy, qtbot):
    viewer = make_napari_viewer()
    image = viewer.add_image(ellipsoids()[0][6], contrast_limits=(-160, 240))
    w = MedSamWidget(viewer, predictor_factory=lambda source, device: spy)
    qtbot.waitUntil(lambda: len(spy.encoded) == 1 and w.prefetcher.wait(0), timeout=TIMEOUT_MS)
    assert spy.encoded == [VolumeSpy.key(image.data, w.intensity_window(image))]
    line = w.controls.encoding_status
    qtbot.waitUntil(lambda: line.value == "Encoded in the background: 1 / 1 slices", timeout=TIMEOUT_MS)


def test_prefetch_follows_the_image_and_stops_when_closed(make_setup, spy, qtbot):
    volume, _ = ellipsoids(shape=(6, 48, 56), objects=(((3.0, 24.0, 20.0), (2.6, 12.0, 10.0)),))
    spy.gate = threading.Event()
    s = make_setup(volume, prefetch=True)
    w, viewer = s.widget, s.viewer
    viewer.dims.set_current_step(0, 3)
    qtbot.waitUntil(spy.entered.is_set, timeout=TIMEOUT_MS)  # slice 3 is held in the encoder
    other = viewer.add_image(
        volume[:, ::-1].copy(), contrast_limits=(-160, 240), scale=s.image.scale, translate=s.image.translate
    )
    w.image_layer = other  # the first image's queued slices are dropped
    qtbot.waitUntil(lambda: not w.encoding.planned, timeout=TIMEOUT_MS)
    spy.gate.set()
    qtbot.waitUntil(lambda: w.prefetcher.wait(0) and not w.encoding.planned, timeout=TIMEOUT_MS)
    window = w.intensity_window(s.image)
    first, flipped = slice_keys(volume, window), slice_keys(other.data, window)
    assert [first[k] for k in spy.encoded if k in first] == [3]  # the slice in flight finished
    assert [flipped[k] for k in spy.encoded if k in flipped] == [3, 4, 2, 5, 1, 0]
    thread = w.prefetcher._thread
    w.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        w.prefetcher.request(volume, 0)
    viewer.dims.set_current_step(0, 1)  # no error, nothing encoded
    assert len(spy.encoded) == 7


def test_prefetch_fills_the_real_predictors_cache(make_napari_viewer, qtbot, tiny_sam_dir):
    """A tiny SAM as custom weights: prefetched embeddings are the ones Segment looks up."""
    volume, (truth,) = ellipsoids(shape=(5, 48, 64), objects=(((2.0, 24.0, 30.0), (3.0, 10.0, 12.0)),))
    viewer = make_napari_viewer()
    image = viewer.add_image(volume.astype(np.float32), contrast_limits=(-160, 240))
    w = MedSamWidget(viewer)
    w.model, w.device = str(tiny_sam_dir), "cpu"
    boxes, _ = w.add_prompt_layers()
    viewer.dims.set_current_step(0, 2)
    boxes.add_rectangles(box_around(truth[2], 2))
    with qtbot.waitSignal(w.job_finished, timeout=60_000) as blocker:
        w.segment_button.native.click()
    assert blocker.args == ["done"]
    predictor = w.predictor
    window = w.intensity_window(image)
    qtbot.waitUntil(lambda: all(predictor.is_cached(image.data[z], window) for z in range(5)), timeout=60_000)
    assert w.prefetcher.encoded + 1 == len(predictor.cache) == 5  # Segment or the background: slice 2
    viewer.dims.set_current_step(0, 3)
    boxes.add_rectangles(box_around(truth[3], 3))
    misses = predictor.cache.misses
    w.segment()
    assert predictor.cache.misses == misses  # the embedding came from the cache
