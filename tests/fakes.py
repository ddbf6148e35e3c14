"""Stand-ins for MedSamPredictor: every one implements its protocol (``engine.predictor.SlicePredictor``,
checked by ``test_fakes.py``), so that production code never needs to ask what it talks to.

Each keeps the current image and answers ``coverage`` and ``cells`` from a 64 x 64
grid of it, as the real predictor answers them from its embedding: a cell's vector is a *look*
of the mean intensity of the pixels it covers (:class:`CellGrid`). ``predict`` returns the real
:class:`~napari_medsam.engine.predictor.Prediction`.

- :class:`SpyPredictor`: a box gives the filled box, a click a 7 x 7 square; records images and prompts.
- :class:`ThresholdPredictor` (and :class:`BoxFillingPredictor`, :class:`OnePiecePredictor`): the
  pixels above a threshold inside the box; records boxes and the slices they followed.
- :class:`VolumeSpy` (and :class:`HeldSpy`): thresholds inside the box like the one above, with an
  embedding cache keyed by the slice's data and window, records encoder runs; can hold the encoder.
- :class:`RecordingPredictor`: records which slices ``precompute`` saw; can block and fail.
- :class:`BackendSpy`: a spy that remembers the encoder backend it was loaded with.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np

from napari_medsam.engine.predictor import Prediction

CELLS = 64


def threshold_look(threshold: float = 120.0) -> Callable[[np.ndarray], np.ndarray]:
    """A look that tells bright from dark: (mean above ``threshold``, mean below it) per cell."""

    def look(means: np.ndarray) -> np.ndarray:
        return np.stack([np.maximum(means - threshold, 0.0), np.maximum(threshold - means, 0.0)], axis=-1)

    return look


def same_look(means: np.ndarray) -> np.ndarray:
    """Every cell looks the same: nothing tells the object from its surroundings."""
    return np.ones((*means.shape, 2))


class CellGrid:
    """``coverage`` and ``cells`` of the image in ``self.image`` (2D), through ``self.look``."""

    image: np.ndarray
    look: Callable[[np.ndarray], np.ndarray] = staticmethod(same_look)

    def coverage(self, mask: np.ndarray) -> np.ndarray:
        return cv2.resize(np.asarray(mask, np.float32), (CELLS, CELLS), interpolation=cv2.INTER_AREA)

    def cells(self) -> np.ndarray:
        plane = np.asarray(self.image, np.float32)
        plane = plane if plane.ndim == 2 else plane.mean(axis=-1)
        return self.look(cv2.resize(plane, (CELLS, CELLS), interpolation=cv2.INTER_AREA))


def _logits(value: float = 0.0) -> np.ndarray:
    return np.full((256, 256), value, np.float32)


class StandIn(CellGrid):
    """What every stand-in shares: a family, no store and no encoder (``precompute`` has nothing to
    compute ahead: False), and the current image kept by ``set_image``."""

    family = "lite-medsam"
    store = None

    def set_image(self, image, window=None):
        self.image = np.asarray(image)

    def precompute(self, image, window=None):
        return False


class SpyPredictor(StandIn):
    """A box gives the filled box; clicks a 7 x 7 square each. Records images and prompts; ``gate``
    (when given) holds ``set_image`` until set."""

    def __init__(self, family: str = "lite-medsam") -> None:
        self.family = family
        self.images: list[tuple[tuple[int, ...], object]] = []
        self.prompts: list[dict] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def set_image(self, image, window=None):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        self.shape = image.shape[:2]
        super().set_image(image, window)
        self.images.append((image.shape, window))

    def predict(self, box=None, points=None, point_labels=None, mask_input=None, multimask=False, zoom=None):
        self.prompts.append({"box": box, "points": points, "labels": point_labels, "multimask": multimask})
        mask = np.zeros(self.shape, bool)
        if box is not None:
            x0, y0, x1, y1 = (round(v) for v in box)
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
        for (x, y), label in zip(
            [] if points is None else points, [] if points is None else point_labels, strict=True
        ):
            mask[round(y) - 3 : round(y) + 4, round(x) - 3 : round(x) + 4] = bool(label)
        return Prediction(mask, 0.9, _logits())


class ThresholdPredictor(StandIn):
    """The 'mask' is the pixels above a threshold inside the box; a cell looks like the object where
    its mean is above 120 (between the object's 140 and the background's 40), so noise specks or a
    dimmer neighbour (about 100) look like the background. Each call's logits hold its number."""

    look = staticmethod(threshold_look(120.0))

    def __init__(self, threshold: float = 90.0, family: str = "lite-medsam") -> None:
        self.threshold = threshold
        self.family = family
        self.image: np.ndarray | None = None
        self.slices_set: list[np.ndarray] = []
        self.calls: list[tuple[tuple[float, ...], object]] = []
        self.call_slices: list[int] = []  # which set_image each call followed

    def set_image(self, image, window=None):
        super().set_image(image, window)
        self.slices_set.append(self.image)

    def predict(self, box=None, points=None, point_labels=None, mask_input=None, multimask=False, zoom=None):
        x0, y0, x1, y1 = box
        self.calls.append((tuple(box), mask_input))
        self.call_slices.append(len(self.slices_set))
        inside = np.zeros(self.image.shape, bool)
        inside[int(np.ceil(y0)) : int(y1) + 1, int(np.ceil(x0)) : int(x1) + 1] = True
        mask = (self.image > self.threshold) & inside
        return Prediction(mask, 1.0, _logits(len(self.calls)))


class BoxFillingPredictor(ThresholdPredictor):
    """Like MedSAM given a loose box: the object plus the middle 80 % of the box."""

    def predict(self, box=None, mask_input=None, **kwargs):
        result = super().predict(box, mask_input=mask_input)
        x0, y0, x1, y1 = box
        dx, dy = (x1 - x0) / 10, (y1 - y0) / 10
        result.mask[round(y0 + dy) : round(y1 - dy) + 1, round(x0 + dx) : round(x1 - dx) + 1] = True
        return result


class OnePiecePredictor(ThresholdPredictor):
    """Like a box-prompted model: the largest bright piece inside the box, one object."""

    def predict(self, box=None, mask_input=None, **kwargs):
        from skimage.measure import label

        result = super().predict(box, mask_input=mask_input)
        pieces = label(result.mask, connectivity=2)
        if pieces.max():
            result = replace(result, mask=pieces == np.argmax(np.bincount(pieces[result.mask])))
        return result


class VolumeSpy(StandIn):
    """The mask is the pixels above ``threshold`` inside the box.

    Keeps an embedding cache like the real one (keyed by the slice's data and the window), records
    every encoder run (``set_image`` and ``precompute``, thread-safe) and every prompt, and can hold
    the encoder (``gate``).
    """

    look = staticmethod(threshold_look(120.0))  # objects (140) look unlike background (40) and dim ones

    def __init__(self, threshold: float = 90.0) -> None:
        self.threshold = threshold
        self.cache: set[tuple] = set()
        self.encoded: list[tuple] = []  # cache keys, in encoding order
        self.prompts: list[dict] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()

    @staticmethod
    def key(image, window=None):
        array = np.ascontiguousarray(image)
        digest = hashlib.blake2b(array.tobytes(), digest_size=8).hexdigest()
        return digest, array.shape, None if window is None else (float(window[0]), float(window[1]))

    def _encode(self, image, window):
        key = self.key(image, window)
        with self._lock:
            if key in self.cache:
                return False
            self.entered.set()
            if self.gate is not None:
                assert self.gate.wait(30)
            self.cache.add(key)
            self.encoded.append(key)
            return True

    def set_image(self, image, window=None):
        self._encode(image, window)
        super().set_image(image, window)

    def precompute(self, image, window=None):
        return self._encode(image, window)

    def is_cached(self, image, window=None):
        return self.key(image, window) in self.cache

    def predict(self, box=None, points=None, point_labels=None, mask_input=None, multimask=False, zoom=None):
        self.prompts.append({"box": box, "points": points, "mask_input": mask_input})
        x0, y0, x1, y1 = box
        inside = np.zeros(self.image.shape, bool)
        inside[round(y0) : round(y1) + 1, round(x0) : round(x1) + 1] = True
        mask = (self.image > self.threshold) & inside
        return Prediction(mask, 0.9, _logits())


class HeldSpy(VolumeSpy):
    """A VolumeSpy whose encoder (``set_image`` or ``precompute``, e.g. a walk's lookahead) stops
    before encoding a slice once ``hold_at`` slices are encoded, until ``go`` is set."""

    def __init__(self, hold_at: int) -> None:
        super().__init__()
        self.hold_at, self.go, self.holding = hold_at, threading.Event(), threading.Event()

    def _encode(self, image, window):
        if self.key(image, window) not in self.cache and len(self.encoded) >= self.hold_at:
            self.holding.set()
            assert self.go.wait(30)
        return super()._encode(image, window)


class RecordingPredictor(SpyPredictor):
    """Records which slices ``precompute`` saw (pixel [0, 0] holds the slice id); ``block_first``
    holds it until ``release`` is set; slice ``fail_on`` raises as a failing encoder would."""

    TIMEOUT = 60.0  # only reached when something hangs

    def __init__(self, block_first: bool = False, fail_on: int | None = None) -> None:
        super().__init__()
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
        assert self.release.wait(self.TIMEOUT)
        if slice_id == self.fail_on:
            raise RuntimeError("encoder failed")
        if slice_id in self.cached:
            return False
        self.cached.add(slice_id)
        return True


class BackendSpy(SpyPredictor):
    """A :class:`SpyPredictor` loaded as the default factory loads one: it remembers its ``backend``."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = backend
