"""Prefetch: slices are encoded in the background, nearest first, bounded, cancellable, and give way.

Assertions are on encoder call counts, on which slices were encoded and on the order of events,
never on clocks.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fakes import RecordingPredictor
from napari_medsam.base.preemption import Preempted, in_background, preemptible, preemption_point
from napari_medsam.engine.prefetch import Prefetcher

TIMEOUT = 60.0  # only reached when something hangs


def labelled_volume(depth=10, offset=0):
    """Slice z is filled with offset + z, so a slice says which one it is."""
    return (np.arange(depth)[:, None, None] + offset) * np.ones((1, 16, 16), np.int32)


@pytest.fixture
def prefetcher():
    made = []

    def make(predictor, radius=2):
        made.append(Prefetcher(predictor, radius=radius))
        return made[-1]

    yield make
    for p in made:
        p.close()


def test_neighbours_are_encoded_nearest_first_and_only_once(prefetcher):
    predictor = RecordingPredictor()
    pre = prefetcher(predictor, radius=2)
    volume = labelled_volume()
    pre.request(volume, 5)
    assert pre.wait(TIMEOUT)
    assert predictor.seen == [5, 6, 4, 7, 3]
    assert pre.encoded == 5
    pre.request(volume, 6)  # moving one slice: only the new far neighbour needs the encoder
    assert pre.wait(TIMEOUT)
    assert predictor.seen[5:] == [6, 7, 5, 8, 4]
    assert pre.encoded == 6
    pre.request(volume, 0)  # clipped at the volume's edge
    assert pre.wait(TIMEOUT)
    assert predictor.seen[10:] == [0, 1, 2]


def test_the_whole_axis_nearest_first_within_the_limit_with_progress(prefetcher):
    predictor = RecordingPredictor()
    pre = prefetcher(predictor, radius=None)
    pre.request(labelled_volume(6), 2)
    assert pre.wait(TIMEOUT)
    assert predictor.seen == [2, 3, 1, 4, 0, 5]
    assert pre.progress == (6, 6)
    pre.request(labelled_volume(6), 4, limit=3)  # cached slices count as done without the encoder
    assert pre.wait(TIMEOUT)
    assert predictor.seen[6:] == [4, 5, 3]
    assert pre.progress == (3, 3)
    assert pre.encoded == 6
    pre.cancel()
    assert pre.progress == (0, 0)


def test_other_axes_and_the_window_are_passed_on(prefetcher):
    class WindowSpy(RecordingPredictor):
        def precompute(self, image, window=None):
            self.windows = [*getattr(self, "windows", []), window]
            self.shapes = [*getattr(self, "shapes", []), image.shape]
            return super().precompute(image, window)

    predictor = WindowSpy()
    pre = prefetcher(predictor, radius=1)
    volume = np.zeros((4, 5, 6), np.int32)
    volume[:, :, :] = np.arange(6)  # slice i along the last axis holds i
    pre.request(volume, 2, axis=2, window=(-160, 240))
    assert pre.wait(TIMEOUT)
    assert predictor.seen == [2, 3, 1]
    assert predictor.shapes == [(4, 5)] * 3
    assert predictor.windows == [(-160.0, 240.0)] * 3


def test_a_new_image_cancels_queued_slices_of_the_old_one(prefetcher):
    predictor = RecordingPredictor(block_first=True)
    pre = prefetcher(predictor, radius=2)
    pre.request(labelled_volume(), 5)
    assert predictor.started.wait(TIMEOUT)  # slice 5 is in the encoder
    assert pre.pending == 4  # bounded: 2 * radius + 1 in all
    pre.request(labelled_volume(offset=100), 1)  # the user switched images
    assert pre.pending == 4  # the old neighbours were replaced, not added to
    predictor.release.set()
    assert pre.wait(TIMEOUT)
    assert predictor.seen == [5, 101, 102, 100, 103]


def test_cancel_and_model_change_drop_queued_work(prefetcher):
    predictor = RecordingPredictor(block_first=True)
    pre = prefetcher(predictor, radius=3)
    pre.request(labelled_volume(), 4)
    assert predictor.started.wait(TIMEOUT)
    pre.cancel()
    assert pre.pending == 0
    predictor.release.set()
    assert pre.wait(TIMEOUT)
    assert predictor.seen == [4]  # the slice in flight finished, nothing after it

    other = RecordingPredictor(block_first=True)
    pre.request(labelled_volume(), 4)  # 4 is cached on the first predictor: no encoder work
    pre.set_predictor(other)  # a model change before the queue ran out
    assert pre.wait(TIMEOUT)
    assert other.seen == []
    other.release.set()
    pre.request(labelled_volume(), 4)
    assert pre.wait(TIMEOUT)
    assert sorted(other.seen) == [1, 2, 3, 4, 5, 6, 7]


def test_a_failing_slice_does_not_stop_the_others(prefetcher, caplog):
    predictor = RecordingPredictor(fail_on=6)
    pre = prefetcher(predictor, radius=1)
    pre.request(labelled_volume(), 5)
    assert pre.wait(TIMEOUT)
    assert predictor.seen == [5, 6, 4]
    assert (pre.encoded, pre.errors) == (2, 1)
    assert "prefetching slice 6 failed" in caplog.text


def test_closed_prefetcher_refuses_requests():
    pre = Prefetcher(RecordingPredictor(), radius=1)
    pre.request(labelled_volume(), 1)
    pre.close()
    assert pre.pending == 0
    with pytest.raises(RuntimeError, match="closed"):
        pre.request(labelled_volume(), 1)
    with pytest.raises(ValueError, match="radius"):
        Prefetcher(None, radius=-1)


def test_prefetch_makes_the_next_slice_decoder_only(prefetcher, tiny_sam_dir):
    """Real MedSamPredictor: after prefetching, box -> mask on the next slice does not encode."""
    from napari_medsam.engine.predictor import MedSamPredictor

    predictor = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    encoder_calls = []
    predictor.model.encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    volume = np.random.default_rng(0).normal(0, 100, (6, 48, 64)).astype(np.float32)
    window = (-150.0, 150.0)
    box = (10, 8, 40, 30)

    predictor.set_image(volume[2], window)  # the user looks at slice 2 ...
    predictor.predict(box=box)
    assert len(encoder_calls) == 1
    pre = prefetcher(predictor, radius=1)
    pre.request(volume, 2, window=window)  # ... and the widget asks for its neighbours
    assert pre.wait(TIMEOUT)
    assert len(encoder_calls) == 3  # slices 1 and 3; slice 2 was cached already
    assert pre.encoded == 2
    assert predictor.is_cached(volume[3], window)

    predictor.set_image(volume[3], window)  # moving one slice and drawing a box ...
    mask = predictor.predict(box=box).mask
    assert len(encoder_calls) == 3  # ... is decoder-only
    assert mask.shape == volume.shape[1:]

    predictor.set_image(volume[5], window)  # a slice that was not prefetched does encode
    assert len(encoder_calls) == 4
    predictor.set_image(volume[1], (-100.0, 100.0))  # so does another window
    assert len(encoder_calls) == 5


def test_propagation_encodes_the_next_slice_while_decoding_and_each_slice_once(tiny_sam_dir):
    """Pipelined propagation (engine/prefetch.Lookahead): slice k+1 is encoded in a worker thread while
    slice k decodes, and every slice of the walk is encoded exactly once."""
    import hashlib
    from dataclasses import replace

    from napari_medsam.base.jobs import run_to_end
    from napari_medsam.engine.predictor import MedSamPredictor, Prediction
    from napari_medsam.engine.propagation import propagate
    from napari_medsam.models.loading import load_model

    model = load_model(tiny_sam_dir, device="cpu", dtype="float32")
    predictor = MedSamPredictor(replace(model))
    encodes: list[tuple[str, str]] = []  # (thread, digest of the pixels)
    hook = predictor.model.encoder.register_forward_hook(
        lambda _m, args, _o: encodes.append(
            (threading.current_thread().name, hashlib.sha1(args[0].numpy().tobytes()).hexdigest())
        )
    )
    organ = np.zeros((48, 64), bool)
    organ[12:30, 16:44] = True
    decodes = []
    real_predict = predictor.predict

    def predict(box=None, mask_input=None, **kwargs):  # the real decoder, a steady organ mask
        decodes.append(real_predict(box=box, mask_input=mask_input, **kwargs))
        return Prediction(mask=organ, score=0.9, logits=decodes[-1].logits)

    predictor.predict = predict  # type: ignore[method-assign]
    volume = np.random.default_rng(0).normal(0, 100, (7, 48, 64)).astype(np.float32)
    try:
        steps: list = []
        walk = propagate(  # a random model's features say nothing: the "unlike" stop off
            predictor, volume, 3, key_box=(16, 12, 43, 29), window=(-150.0, 150.0), unlike=None
        )
        run_to_end(walk, steps.append)
    finally:
        hook.remove()
    assert [s.stop for s in steps] == [None] * 7  # the whole volume
    digests = [digest for _, digest in encodes]
    assert len(digests) == len(set(digests)) == 7  # each slice encoded once
    assert sum(thread == "napari-medsam-lookahead" for thread, _ in encodes) >= 4


def test_preemption_points_stop_only_runs_inside_preemptible():
    preemption_point()  # outside: nothing
    stop = threading.Event()
    with preemptible(stop.is_set):
        assert in_background()
        preemption_point()
        stop.set()
        with pytest.raises(Preempted):
            preemption_point()
        outcome = []
        other = threading.Thread(target=lambda: outcome.append((in_background(), preemption_point())))
        other.start()
        other.join()
        assert outcome == [(False, None)]  # another thread never sees this thread's tests
    assert not in_background()


class HeldEncoder:
    """Wraps an encoder: a run in a background thread is held at a loop of preemption points until
    ``hold`` is set; other runs go straight through. Records (thread kind, event) in order."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.hold, self.entered = threading.Event(), threading.Event()
        self.events: list[tuple[str, str]] = []

    def __call__(self, pixels):
        kind = "background" if in_background() else "user"
        self.events.append((kind, "start"))
        if kind == "background":
            self.entered.set()
            for _ in range(int(TIMEOUT / 0.005)):
                if self.hold.wait(0.005):
                    break
                try:
                    preemption_point()
                except Preempted:
                    self.events.append((kind, "gave way"))
                    raise
        out = self.encoder(pixels)
        self.events.append((kind, "end"))
        return out


def test_a_user_encoding_starts_at_once_while_the_background_encodes(prefetcher, tiny_sam_dir):
    """The background run of slice 2 gives way to set_image of slice 4 (which never waits for it),
    then slice 2 is encoded again; embeddings and masks equal those of a run without background."""
    from dataclasses import replace

    from napari_medsam.engine.predictor import MedSamPredictor
    from napari_medsam.models.loading import load_model

    model = load_model(tiny_sam_dir, device="cpu", dtype="float32")
    held = HeldEncoder(model.encoder)
    predictor = MedSamPredictor(replace(model, encoder=held))
    volume = np.random.default_rng(1).normal(0, 100, (5, 48, 64)).astype(np.float32)
    window, box = (-150.0, 150.0), (10, 8, 40, 30)
    pre = prefetcher(predictor, radius=0)
    pre.request(volume, 2, window=window)
    assert held.entered.wait(TIMEOUT)  # the background holds the encoder on slice 2 ...
    predictor.set_image(volume[4], window)  # ... and the user's slice is encoded without waiting
    assert not held.hold.is_set()
    mask = predictor.predict(box=box).mask
    assert held.events[:4] == [("background", "start"), ("background", "gave way"), ("user", "start"),
                               ("user", "end")]  # fmt: skip
    held.hold.set()
    assert pre.wait(TIMEOUT)
    assert (pre.encoded, pre.progress) == (1, (1, 1))
    assert pre.preempted >= 1
    assert held.events[4:] == [("background", "start"), ("background", "end")]

    plain = MedSamPredictor(replace(model))  # no background work at all
    for z in (2, 4):
        plain.set_image(volume[z], window)
        predictor.set_image(volume[z], window)
        assert predictor._embedding.equal(plain._embedding)
    np.testing.assert_array_equal(mask, plain.predict(box=box).mask)


def test_interrupt_and_close_stop_the_slice_in_the_encoder(prefetcher, tiny_sam_dir):
    from dataclasses import replace

    from napari_medsam.engine.predictor import MedSamPredictor
    from napari_medsam.models.loading import load_model

    model = load_model(tiny_sam_dir, device="cpu", dtype="float32")
    held = HeldEncoder(model.encoder)
    predictor = MedSamPredictor(replace(model, encoder=held))
    volume = np.random.default_rng(2).normal(0, 100, (4, 48, 64)).astype(np.float32)
    pre = prefetcher(predictor, radius=None)
    pre.request(volume, 1)
    assert held.entered.wait(TIMEOUT)
    pre.interrupt()  # a user's run starts: the held slice stops, the plan is dropped
    assert pre.wait(TIMEOUT)
    assert (pre.encoded, pre.preempted, pre.pending) == (0, 1, 0)
    held.entered.clear()
    pre.request(volume, 1)
    assert held.entered.wait(TIMEOUT)
    thread = pre._thread
    pre.close(timeout=TIMEOUT)  # closing never waits for the held slice to finish
    assert not thread.is_alive()
    assert not held.hold.is_set()
    assert pre.encoded == 0


@pytest.mark.gui
def test_segment_pressed_while_the_volume_encodes_starts_at_once_and_closing_stops_it(
    make_napari_viewer, qtbot, tiny_sam_dir
):
    """The widget's background holds slice 2 in the encoder (it never finishes on its own): Segment
    there encodes at once, writes what a widget without background work writes; closing the viewer
    ends the background thread."""
    from dataclasses import replace

    from napari_medsam._qt.widget import MedSamWidget
    from napari_medsam.engine.predictor import MedSamPredictor
    from napari_medsam.models.loading import load_model

    earlier = set(threading.enumerate())  # another test's thread may still be ending
    model = load_model(tiny_sam_dir, device="cpu", dtype="float32")
    held = HeldEncoder(model.encoder)
    volume = np.random.default_rng(3).normal(0, 100, (5, 48, 64)).astype(np.float32)
    volume[:, 14:34, 18:46] += 300
    box = np.array([[2, 12, 16], [2, 12, 48], [2, 36, 48], [2, 36, 16]], float)

    def segment_slice_2(encoder, prefetch):
        viewer = make_napari_viewer()
        viewer.add_image(volume, contrast_limits=(-160, 240))
        factory = lambda s, d: MedSamPredictor(replace(model, encoder=encoder))  # noqa: E731
        widget = MedSamWidget(viewer, predictor_factory=factory)
        viewer.window.add_dock_widget(widget)
        widget.model, widget.device, widget.prefetch = str(tiny_sam_dir), "cpu", prefetch
        boxes, _ = widget.add_prompt_layers()
        viewer.dims.set_current_step(0, 2)
        if prefetch:
            qtbot.waitUntil(held.entered.is_set, timeout=60_000)  # the background holds slice 2
        boxes.add_rectangles(box)
        with qtbot.waitSignal(widget.job_finished, timeout=60_000) as blocker:
            widget.segment_button.native.click()
        assert blocker.args == ["done"]
        return viewer, widget

    viewer, widget = segment_slice_2(held, prefetch=True)
    assert not held.hold.is_set()
    assert held.events[:4] == [("background", "start"), ("background", "gave way"), ("user", "start"),
                               ("user", "end")]  # fmt: skip
    labels = widget.labels_layer.data.copy()
    assert labels[2].any()
    qtbot.waitUntil(lambda: held.events[-1] == ("background", "start"), timeout=60_000)  # it goes on
    thread = widget.prefetcher._thread
    viewer.close()
    assert widget._released
    assert not thread.is_alive()
    started = set(threading.enumerate()) - earlier
    assert not any(t.name == "napari-medsam-prefetch" and t.is_alive() for t in started)

    _, plain = segment_slice_2(model.encoder, prefetch=False)
    np.testing.assert_array_equal(labels, plain.labels_layer.data)
