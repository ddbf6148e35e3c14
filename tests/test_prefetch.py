"""Prefetch: neighbouring slices are encoded in the background, bounded and cancellable.

Assertions are on encoder call counts and on which slices were encoded, never on clocks.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_medsam.core.prefetch import Prefetcher

TIMEOUT = 60.0  # only reached when something hangs


class RecordingPredictor:
    """Records which slices ``precompute`` saw (pixel [0, 0] holds the slice id); can block."""

    family = "lite-medsam"

    def __init__(self, block_first: bool = False, fail_on: int | None = None) -> None:
        self.seen: list[int] = []
        self.cached: set[int] = set()
        self.started = threading.Event()
        self.release = threading.Event()
        if not block_first:
            self.release.set()
        self.fail_on = fail_on

    def precompute(self, image, window=None):
        slice_id = int(image[0, 0])
        self.seen.append(slice_id)
        self.started.set()
        assert self.release.wait(TIMEOUT)
        if slice_id == self.fail_on:
            raise RuntimeError("encoder failed")
        if slice_id in self.cached:
            return False
        self.cached.add(slice_id)
        return True


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
    assert pre.predictor is other
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
    from napari_medsam.core.predictor import MedSamPredictor

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
    """Pipelined propagation (core/prefetch.Lookahead): slice k+1 is encoded in a worker thread while
    slice k decodes, and every slice of the walk is encoded exactly once."""
    import hashlib
    from dataclasses import replace

    from napari_medsam.core.jobs import run_to_end
    from napari_medsam.core.predictor import MedSamPredictor, Prediction
    from napari_medsam.core.propagation import propagate
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
