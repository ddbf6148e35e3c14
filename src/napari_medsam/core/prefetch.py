"""Background encoding of the slices around the one on screen, so a box there costs only the decoder."""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_medsam.core.predictor import MedSamPredictor, SlicePredictor
from napari_medsam.core.slicing import check_axis, take_slice

logger = logging.getLogger(__name__)
#: Prefetchers not closed yet: closed (and joined) at interpreter exit, so that no thread is left
#: inside the encoder while Python and PyTorch shut down.
_OPEN: weakref.WeakSet[Prefetcher] = weakref.WeakSet()
#: How long closing at exit waits for a slice being encoded.
EXIT_TIMEOUT_S = 60.0


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
        _OPEN.add(self)

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
        axis = check_axis(axis, len(shape))
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
                    self._queue.append((self._generation, self._predictor, volume, axis, z, window))
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
        """Drop queued work and stop the thread (waits up to ``timeout`` for a slice being encoded)."""
        _OPEN.discard(self)
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
            self._thread = threading.Thread(target=self._run, name="napari-medsam-prefetch", daemon=True)
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
                    image = take_slice(volume, z, axis)
                    if generation == self._generation and predictor.precompute(image, window):
                        self.encoded += 1
            except Exception:  # never let a background failure kill the thread
                self.errors += 1
                logger.exception("prefetching slice %d failed", z)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


class Lookahead:
    """Encode the next slice of a walk through a volume while the caller decodes the current one.

    ``propagate`` calls :meth:`submit` with the slice it will ask for next, right after
    ``set_image`` of the current one: the encoder (a worker thread, through
    ``predictor.precompute``) then runs beside the decoder's refinement retries, and the next
    ``set_image`` finds the embedding in the cache, or waits for the encode in progress (the
    predictor encodes one slice at a time and a second caller for it then hits the cache). So
    each slice is encoded at most once. One slice is in flight at a time; :meth:`close` waits for it.
    A walk that stops early has encoded one slice past its end. Only a ``MedSamPredictor`` (whose
    ``precompute`` is thread-safe and leaves the current image alone) is pipelined; with others,
    and with ``Lookahead.enabled`` False, :meth:`submit` does nothing.
    """

    #: Switch for A/B measurements (``benchmarks/bench_inference.py``).
    enabled = True

    def __init__(self, predictor: SlicePredictor, volume: Any, axis: int, window: Any) -> None:
        self.predictor, self.volume, self.axis, self.window = predictor, volume, axis, window
        self.active = self.enabled and isinstance(predictor, MedSamPredictor)
        self._thread: threading.Thread | None = None
        #: Slices whose encoder run this lookahead started (precompute returned True).
        self.encoded = 0

    def submit(self, z: int) -> None:
        """Encode slice ``z`` in the background (after the one in flight; outside the volume: nothing)."""
        if not self.active or not 0 <= z < np.shape(self.volume)[self.axis]:
            return
        self.close()
        self._thread = threading.Thread(target=self._encode, args=(z,), name="napari-medsam-lookahead")
        self._thread.start()

    def _encode(self, z: int) -> None:
        try:
            if self.predictor.precompute(take_slice(self.volume, z, self.axis), self.window):
                self.encoded += 1
        except Exception:  # the caller's own set_image of this slice then reports the problem
            logger.debug("lookahead encoding of slice %d failed", z, exc_info=True)

    def close(self) -> None:
        """Wait for the slice in flight."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Lookahead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _close_open_prefetchers() -> None:
    for prefetcher in list(_OPEN):
        prefetcher.close(timeout=EXIT_TIMEOUT_S)
