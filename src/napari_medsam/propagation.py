"""From one segmented slice to a 3D object, and background encoding of neighbouring slices.

Qt-free. :func:`propagate` and :func:`segment_boxes` are generators in the stardist-napari style:
they yield a :class:`SliceStep` per slice (progress, cancellable by not iterating further) and
*return* the 3D boolean mask, so napari's ``thread_worker`` emits it as ``returned``;
:func:`run_to_end` drives one synchronously (CLI, tests). :class:`Prefetcher` encodes the slices
around the one on screen in a background thread through ``predictor.precompute``.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
#: Whether propagation feeds the previous slice's low-resolution logits back (``mask_input``) by
#: family. MedSAM and LiteMedSAM were trained on boxes only. SAM is untested here (no SAM weights
#: offline), so it stays off until measured.
PREVIOUS_LOGITS_DEFAULT: dict[str, bool] = {"medsam": False, "lite-medsam": False, "sam": False}
_T = TypeVar("_T")
_Y = TypeVar("_Y")


class SlicePredictor(Protocol):
    """The part of :class:`~napari_medsam.predictor.MedSamPredictor` used here."""

    family: str

    def set_image(self, image: np.ndarray, window: Sequence[float] | None = None) -> None: ...

    def predict(self, box: Any = None, mask_input: Any = None, **kwargs: Any) -> Any: ...

    def precompute(self, image: np.ndarray, window: Sequence[float] | None = None) -> bool: ...


@dataclass(frozen=True)
class SliceStep:
    """Progress after one slice: ``done`` of at most ``total`` slices visited.

    ``mask`` is the slice's mask (None when the slice ended a direction), ``box`` the prompt used,
    ``stop`` why a direction ended there ("empty", "small", "low score"), else None, and
    ``score`` the model's predicted IoU (None for a key mask given as such).
    """

    slice_index: int
    done: int
    total: int
    area: int
    mask: np.ndarray | None
    box: Box | None
    stop: str | None = None
    score: float | None = None

    @property
    def message(self) -> str:
        """One line for a status bar."""
        if self.stop == "empty":
            return f"slice {self.slice_index}: nothing found, stopping this direction"
        if self.stop == "small":
            return f"slice {self.slice_index}: mask too small ({self.area} px), stopping"
        if self.stop == "low score":
            return f"slice {self.slice_index}: low predicted IoU, stopping"
        return f"slice {self.slice_index}: {self.area} px"


def as_progress(
    steps: Generator[SliceStep, None, _T], title: str = ""
) -> Generator[tuple[int, int, str], None, _T]:
    """Re-yield a propagation as ``(done, total, message)`` tuples; returns its result."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        yield step.done, step.total, f"{title}{step.message}"


def run_to_end(steps: Generator[_Y, None, _T], callback: Callable[[_Y], Any] | None = None) -> _T:
    """Drive a generator to its end, handing each item it yields to ``callback``; return its result.

    Runs a propagation (its :class:`SliceStep`s, returning the 3D mask) or a widget job (its
    ``(done, total, message)`` progress) synchronously.
    """
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(step)


def mask_box(mask: np.ndarray) -> Box | None:
    """(x0, y0, x1, y1) of a 2D mask, as MedSAM builds training boxes: min and max pixel index."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(mask, axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])


def expand_box(
    box: Sequence[float], shape: tuple[int, int], fraction: float = 0.1, pixels: float = 2.0
) -> Box:
    """Grow ``box`` on each side by ``max(fraction * side, pixels)``, clipped to ``shape``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    dx = max(fraction * (x1 - x0), pixels)
    dy = max(fraction * (y1 - y0), pixels)
    height, width = shape
    return (
        max(x0 - dx, 0.0),
        max(y0 - dy, 0.0),
        min(x1 + dx, width - 1.0),
        min(y1 + dy, height - 1.0),
    )


def interpolate_boxes(key_boxes: Mapping[int, Sequence[float]]) -> dict[int, Box]:
    """Boxes for every slice from the first to the last key slice, linear between key slices.

    Key slices keep their own box (normalised so that x0 <= x1 and y0 <= y1).
    """
    if not key_boxes:
        raise ValueError("interpolate_boxes needs at least one key box")
    keys = sorted(int(k) for k in key_boxes)
    boxes = {k: _normalise_box(key_boxes[k]) for k in keys}
    out: dict[int, Box] = {keys[0]: boxes[keys[0]]}
    for a, b in itertools.pairwise(keys):
        start, stop = np.asarray(boxes[a]), np.asarray(boxes[b])
        for z in range(a + 1, b + 1):
            t = (z - a) / (b - a)
            out[z] = tuple(float(v) for v in (1.0 - t) * start + t * stop)  # type: ignore[assignment]
    return out


def propagate(
    predictor: SlicePredictor,
    volume: Any,
    key_slice: int,
    key_box: Sequence[float] | None = None,
    key_mask: np.ndarray | None = None,
    *,
    axis: int = 0,
    window: Sequence[float] | None = None,
    expand: float = 0.1,
    expand_pixels: float = 2.0,
    refine: int = 2,
    min_area_fraction: float = 0.1,
    min_score: float | None = None,
    max_slices: int | None = None,
    use_previous_logits: bool | None = None,
) -> Generator[SliceStep, None, np.ndarray]:
    """Segment one object through a volume, starting from a key slice.

    The key slice is segmented with ``key_box`` (or taken from ``key_mask``). Then, walking away
    from it in both directions, each slice is prompted with the previous slice's mask bounding
    box grown by :func:`expand_box` (``expand`` of each side, at least ``expand_pixels``), then
    re-prompted ``refine`` times with its own mask's box grown by ``expand_pixels`` (decoder-only
    passes that let the box shrink with the object: without them a box that is too large makes
    the mask too large, and that box the next one). With ``use_previous_logits`` the previous
    low-resolution logits go in as ``mask_input`` (default per family, see
    :data:`PREVIOUS_LOGITS_DEFAULT`).

    A direction ends at an empty mask, at a mask smaller than ``min_area_fraction`` of the key
    mask, at a predicted IoU below ``min_score`` (if given; that slice is left out), at the
    volume's end, or after ``max_slices`` slices beyond the key slice. ``window`` is passed to
    ``set_image`` for every slice (use the layer's contrast limits; None means each slice's own
    min..max). Yields a :class:`SliceStep` per slice; returns a boolean mask of the volume's shape.
    """
    shape = tuple(np.shape(volume))
    if len(shape) != 3:
        raise ValueError(f"volume must be 3D, got shape {shape}")
    axis = _check_axis(axis, 3)
    depth = shape[axis]
    key_slice = int(key_slice)
    if not 0 <= key_slice < depth:
        raise ValueError(f"key_slice {key_slice} is outside 0..{depth - 1} along axis {axis}")
    if (key_box is None) == (key_mask is None):
        raise ValueError("give exactly one of key_box and key_mask")
    if not 0.0 <= min_area_fraction <= 1.0:
        raise ValueError(f"min_area_fraction must be in [0, 1], got {min_area_fraction}")
    if max_slices is not None and max_slices < 0:
        raise ValueError(f"max_slices must be >= 0 or None, got {max_slices}")
    if expand < 0 or expand_pixels < 0 or refine < 0:
        raise ValueError("expand, expand_pixels and refine must be >= 0")
    if use_previous_logits is None:
        use_previous_logits = PREVIOUS_LOGITS_DEFAULT.get(str(predictor.family), False)
    plane = tuple(s for i, s in enumerate(shape) if i != axis)
    limit = depth if max_slices is None else max_slices
    total = 1 + min(depth - 1 - key_slice, limit) + min(key_slice, limit)

    result = np.zeros(shape, dtype=bool)
    view = np.moveaxis(result, axis, 0)
    logits, score = None, None
    if key_mask is not None:
        first = np.asarray(key_mask, dtype=bool)
        if first.shape != plane:
            raise ValueError(f"key_mask has shape {first.shape}, slices have shape {plane}")
        box = mask_box(first)
    else:
        box = _normalise_box(key_box)  # type: ignore[arg-type]
        predictor.set_image(_slice(volume, key_slice, axis), window)
        prediction = predictor.predict(box=box)
        first, logits = np.asarray(prediction.mask, dtype=bool), prediction.logits
        score = float(prediction.score)
    key_area = int(first.sum())
    done = 1
    if key_area == 0:
        yield SliceStep(key_slice, done, done, 0, None, box, "empty", score)
        return result
    view[key_slice] = first
    yield SliceStep(key_slice, done, total, key_area, first, box, None, score)

    for direction in (1, -1):
        mask, previous_logits = first, logits
        z = key_slice + direction
        while 0 <= z < depth and abs(z - key_slice) <= limit:
            box = expand_box(mask_box(mask), plane, expand, expand_pixels)  # type: ignore[arg-type]
            predictor.set_image(_slice(volume, z, axis), window)
            new, score, new_logits = None, 0.0, previous_logits
            for _ in range(1 + refine):
                prediction = predictor.predict(
                    box=box, mask_input=new_logits if use_previous_logits else None
                )
                new = np.asarray(prediction.mask, dtype=bool)
                score, new_logits = float(prediction.score), prediction.logits
                if not new.any():
                    break
                tight = expand_box(mask_box(new), plane, 0.0, expand_pixels)  # type: ignore[arg-type]
                if np.allclose(tight, box):
                    break
                box = tight
            area = int(new.sum())  # type: ignore[union-attr]
            done += 1
            stop = None
            if area == 0:
                stop = "empty"
            elif area < min_area_fraction * key_area:
                stop = "small"
            elif min_score is not None and score < min_score:
                stop = "low score"
            if stop is not None:
                logger.info("propagation stops at slice %d (%s)", z, stop)
                yield SliceStep(z, done, total, area, None, box, stop, score)
                break
            view[z] = new
            yield SliceStep(z, done, total, area, new, box, None, score)
            mask, previous_logits = new, new_logits
            z += direction
    return result


def propagate_labels(
    predictor: SlicePredictor,
    volume: Any,
    key_slice: int,
    key_labels: np.ndarray,
    *,
    axis: int = 0,
    window: Sequence[float] | None = None,
    callback: Callable[[SliceStep], Any] | None = None,
    **options: Any,
) -> np.ndarray:
    """Propagate every object of a 2D label image drawn on ``key_slice``; returns a label volume.

    Each label id is propagated on its own (:func:`propagate` with ``key_mask``, ``options``
    passed on); where objects meet, the lower id keeps the voxel. Synchronous (CLI, scripts).
    """
    key_labels = np.asarray(key_labels)
    if not np.issubdtype(key_labels.dtype, np.integer) and key_labels.dtype != bool:
        raise ValueError(f"key_labels must be an integer label image, got dtype {key_labels.dtype}")
    ids = [int(i) for i in np.unique(key_labels) if i > 0]
    dtype = np.uint8 if not ids or max(ids) < 2**8 else np.uint16 if max(ids) < 2**16 else np.uint32
    out = np.zeros(np.shape(volume), dtype=dtype)
    for label in ids:
        steps = propagate(
            predictor, volume, key_slice, key_mask=key_labels == label, axis=axis, window=window,
            **options,
        )
        mask = run_to_end(steps, callback)
        out[mask & (out == 0)] = label
    return out


def segment_boxes(
    predictor: SlicePredictor,
    volume: Any,
    boxes: Mapping[int, Sequence[float]],
    *,
    axis: int = 0,
    window: Sequence[float] | None = None,
) -> Generator[SliceStep, None, np.ndarray]:
    """Segment each slice ``z`` of ``volume`` with ``boxes[z]`` (see :func:`interpolate_boxes`).

    Yields a :class:`SliceStep` per slice; returns one boolean mask of the volume's shape.
    """
    shape = tuple(np.shape(volume))
    if len(shape) != 3:
        raise ValueError(f"volume must be 3D, got shape {shape}")
    axis = _check_axis(axis, 3)
    slices = sorted(int(z) for z in boxes)
    bad = [z for z in slices if not 0 <= z < shape[axis]]
    if bad:
        raise ValueError(f"slices {bad} are outside 0..{shape[axis] - 1} along axis {axis}")
    result = np.zeros(shape, dtype=bool)
    view = np.moveaxis(result, axis, 0)
    for done, z in enumerate(slices, start=1):
        box = _normalise_box(boxes[z])
        predictor.set_image(_slice(volume, z, axis), window)
        prediction = predictor.predict(box=box)
        mask = np.asarray(prediction.mask, dtype=bool)
        view[z] = mask
        yield SliceStep(
            z, done, len(slices), int(mask.sum()), mask, box, None, float(prediction.score)
        )
    return result


class Prefetcher:
    """Encode the slices around the one on screen in a background thread.

    ``request(volume, z)`` queues slice ``z`` and then ``z +- 1 .. radius`` (nearest first)
    for ``predictor.precompute``, replacing whatever was queued before: at most ``2 * radius + 1``
    slices are pending at any time. A new request, :meth:`cancel`, or :meth:`set_predictor`
    (a model change) drops queued work; a slice already in the encoder finishes, and its embedding
    simply stays in the predictor's cache. The cache must hold ``2 * radius + 1`` embeddings.
    """

    def __init__(self, predictor: SlicePredictor | None = None, radius: int = 2) -> None:
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        self.radius = int(radius)
        self._predictor = predictor
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, SlicePredictor, Any, int, int, Any]] = deque()
        self._generation = 0
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        #: Slices this prefetcher had encoded (precompute returned True), and failures seen.
        self.encoded = 0
        self.errors = 0

    @property
    def predictor(self) -> SlicePredictor | None:
        """The predictor whose cache is filled."""
        return self._predictor

    def set_predictor(self, predictor: SlicePredictor | None) -> None:
        """Switch to another predictor (a model change): queued work is dropped."""
        with self._cond:
            self._predictor = predictor
            self._drop_queue()

    def request(
        self,
        volume: Any,
        center: int,
        axis: int = 0,
        window: Sequence[float] | None = None,
    ) -> None:
        """Queue ``center`` and its neighbours along ``axis``; earlier requests are dropped."""
        shape = tuple(np.shape(volume))
        axis = _check_axis(axis, len(shape))
        depth = shape[axis]
        order = [int(center)]
        for offset in range(1, self.radius + 1):
            order += [int(center) + offset, int(center) - offset]
        window = None if window is None else (float(window[0]), float(window[1]))
        with self._cond:
            if self._closed:
                raise RuntimeError("this Prefetcher is closed")
            self._drop_queue()
            if self._predictor is None:
                return
            for z in order:
                if 0 <= z < depth:
                    self._queue.append(
                        (self._generation, self._predictor, volume, axis, z, window)
                    )
            self._ensure_thread()
            self._cond.notify_all()

    def cancel(self) -> None:
        """Drop queued slices (e.g. when the image layer changes or is removed)."""
        with self._cond:
            self._drop_queue()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or encoding; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    @property
    def pending(self) -> int:
        """Number of slices queued (not counting one being encoded)."""
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = 5.0) -> None:
        """Drop queued work and stop the thread (waits for a slice being encoded)."""
        with self._cond:
            self._closed = True
            self._drop_queue()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _drop_queue(self) -> None:
        self._generation += 1
        self._queue.clear()
        self._cond.notify_all()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="napari-medsam-prefetch", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or bool(self._queue))
                if self._closed:
                    return
                generation, predictor, volume, axis, z, window = self._queue.popleft()
                self._busy = True
            try:
                if generation == self._generation:
                    image = _slice(volume, z, axis)
                    if generation == self._generation and predictor.precompute(image, window):
                        self.encoded += 1
            except Exception:  # never let a background failure kill the thread
                self.errors += 1
                logger.exception("prefetching slice %d failed", z)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def _slice(volume: Any, index: int, axis: int) -> np.ndarray:
    key: list[Any] = [slice(None)] * len(np.shape(volume))
    key[axis] = index
    return np.asarray(volume[tuple(key)])


def _check_axis(axis: int, ndim: int) -> int:
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"axis {axis} is out of range for a {ndim}D volume")
    return int(axis) % ndim


def _normalise_box(box: Sequence[float]) -> Box:
    values = np.asarray(box, dtype=float).reshape(-1)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"a box is 4 finite numbers (x0, y0, x1, y1), got {box!r}")
    x0, x1 = sorted(values[[0, 2]])
    y0, y1 = sorted(values[[1, 3]])
    return float(x0), float(y0), float(x1), float(y1)
