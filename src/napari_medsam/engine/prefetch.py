"""Background encoding of a volume's slices, nearest to the one on screen first (a box then only decodes).

Also :class:`Lookahead`, which encodes the next slice of a propagation while the current one decodes.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_medsam.base.preemption import Preempted, preemptible
from napari_medsam.base.slicing import check_axis, take_slice
from napari_medsam.engine.predictor import SlicePredictor

logger = logging.getLogger(__name__)
#: Prefetchers not closed yet: closed (and joined) at interpreter exit, so that no thread is left
#: inside the encoder while Python and PyTorch shut down.
_OPEN: weakref.WeakSet[Prefetcher] = weakref.WeakSet()
#: How long closing at exit waits for a slice being encoded.
EXIT_TIMEOUT_S = 60.0
#: Gives the predictor to encode with, or None (nothing to encode with); called in the background
#: thread, so it may load the model.
PredictorLoader = Callable[[], SlicePredictor | None]


@dataclass(frozen=True)
class _Plan:
    generation: int
    load: PredictorLoader
    volume: Any
    axis: int
    window: tuple[float, float] | None
    total: int


class Prefetcher:
    """Encode the slices around the one on screen in a background thread, nearest first.

    ``request(volume, z)`` plans slice ``z``, then ``z + 1``, ``z - 1``, ``z + 2``... up to
    ``radius`` slices away (``radius=None``: the whole axis) and at most ``limit`` slices, for
    ``predictor.precompute``, replacing whatever was planned before. Slices already in the
    predictor's cache cost only their lookup, so a new request after a slider move soon catches up.
    :attr:`progress` says how many slices of the plan are encoded.

    A new request or :meth:`cancel` drops queued slices and lets the slice in the encoder finish
    (its embedding stays in the cache). :meth:`interrupt` (a user's run starts), :meth:`set_loader`
    (a model change) and :meth:`close` also stop the slice in the encoder at the encoder's next
    preemption point (``base/preemption``). The encoder runs inside ``preemptible``, so a
    ``MedSamPredictor`` gives way at once to any other caller that needs its encoder; the slice
    given up is encoded again afterwards. The predictor's cache should hold ``limit`` embeddings.
    """

    def __init__(self, predictor: SlicePredictor | None = None, radius: int | None = 2) -> None:
        if radius is not None and radius < 0:
            raise ValueError(f"radius must be >= 0 or None, got {radius}")
        self.radius = radius
        self._load: PredictorLoader | None = None if predictor is None else (lambda: predictor)
        self._cond = threading.Condition()
        self._queue: deque[tuple[_Plan, int]] = deque()
        self._generation = 0
        self._interrupts = 0
        self._done = 0
        self._total = 0
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        #: Slices this prefetcher had encoded (precompute returned True), given up, and failures seen.
        self.encoded = 0
        self.preempted = 0
        self.errors = 0
        _OPEN.add(self)

    @property
    def loader(self) -> PredictorLoader | None:
        """What gives the predictor whose cache is filled (None: nothing is encoded)."""
        return self._load

    def set_predictor(self, predictor: SlicePredictor | None) -> None:
        """Encode with ``predictor`` from now on (None: stop); see :meth:`set_loader`."""
        self.set_loader(None if predictor is None else (lambda: predictor))

    def set_loader(self, load: PredictorLoader | None) -> None:
        """Encode with what ``load()`` gives (called in the background thread, so it may load a model).

        A model change: planned work is dropped and the slice in the encoder stops. A plan whose
        ``load()`` gives None or fails is dropped.
        """
        with self._cond:
            self._load = load
            self._interrupts += 1
            self._drop_queue()

    def request(
        self,
        volume: Any,
        center: int,
        axis: int = 0,
        window: Sequence[float] | None = None,
        limit: int | None = None,
    ) -> None:
        """Plan ``center`` and its neighbours along ``axis`` (at most ``limit``), dropping earlier plans."""
        shape = tuple(np.shape(volume))
        axis = check_axis(axis, len(shape))
        depth = shape[axis]
        reach = depth if self.radius is None else self.radius
        order = [int(center)]
        for offset in range(1, reach + 1):
            order += [int(center) + offset, int(center) - offset]
        order = [z for z in order if 0 <= z < depth][: limit if limit is not None else None]
        window = None if window is None else (float(window[0]), float(window[1]))
        with self._cond:
            if self._closed:
                raise RuntimeError("this Prefetcher is closed")
            self._drop_queue()
            if self._load is None:
                return
            plan = _Plan(self._generation, self._load, volume, axis, window, len(order))
            self._total = plan.total
            self._queue.extend((plan, z) for z in order)
            self._ensure_thread()
            self._cond.notify_all()

    @property
    def progress(self) -> tuple[int, int]:
        """(slices of the current plan in the cache, slices planned); (0, 0) with no plan."""
        with self._cond:
            return self._done, self._total

    def cancel(self) -> None:
        """Drop queued slices (e.g. when the image layer changes or is removed)."""
        with self._cond:
            self._drop_queue()

    def interrupt(self) -> None:
        """Drop queued slices and stop the slice in the encoder at its next preemption point."""
        with self._cond:
            self._interrupts += 1
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
        """Drop queued work, stop the slice in the encoder and the thread (waits up to ``timeout``)."""
        _OPEN.discard(self)
        with self._cond:
            self._closed = True
            self._interrupts += 1
            self._drop_queue()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _drop_queue(self) -> None:
        self._generation += 1
        self._queue.clear()
        self._done = self._total = 0
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
                plan, z = self._queue.popleft()
                interrupts = self._interrupts
                self._busy = True
            try:
                self._encode(plan, z, interrupts)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _encode(self, plan: _Plan, z: int, interrupts: int) -> None:
        def current() -> bool:
            return plan.generation == self._generation

        if not current():
            return
        try:
            predictor = plan.load()
        except Exception:  # e.g. the model cannot be loaded: the user's own run will say why
            logger.warning("background encoding: no model", exc_info=True)
            predictor = None
        if predictor is None:  # nothing to encode with: drop the plan
            with self._cond:
                if current():
                    self._drop_queue()
            return
        try:
            image = take_slice(plan.volume, z, plan.axis)
            with preemptible(lambda: self._interrupts != interrupts):
                encoded = current() and predictor.precompute(image, plan.window)
            with self._cond:
                self.encoded += bool(encoded)
                self._done += current()
        except Preempted:  # gave way: encode it again once the other caller is done
            self.preempted += 1
            with self._cond:
                if current() and self._interrupts == interrupts:
                    self._queue.appendleft((plan, z))
        except Exception:  # never let a background failure kill the thread
            self.errors += 1
            logger.exception("prefetching slice %d failed", z)


class Lookahead:
    """Encode the next slice of a walk through a volume while the caller decodes the current one.

    ``propagate`` calls :meth:`submit` with the slice it will ask for next, right after
    ``set_image`` of the current one: the encoder (a worker thread, through
    ``predictor.precompute``) then runs beside the decoder's refinement retries, and the next
    ``set_image`` finds the embedding in the cache, or waits for the encode in progress (the
    predictor encodes one slice at a time and a second caller for it then hits the cache). So
    each slice is encoded at most once. One slice is in flight at a time; :meth:`close` waits for
    it. A walk that stops early has encoded one slice past its end (``precompute`` is thread-safe
    and leaves the current image alone: the ``SlicePredictor`` contract). With
    ``Lookahead.enabled`` False, :meth:`submit` does nothing.
    """

    #: Switch for A/B measurements (``benchmarks/bench_inference.py``).
    enabled = True

    def __init__(self, predictor: SlicePredictor, volume: Any, axis: int, window: Any) -> None:
        self.predictor, self.volume, self.axis, self.window = predictor, volume, axis, window
        self._thread: threading.Thread | None = None
        #: Slices whose encoder run this lookahead started (precompute returned True).
        self.encoded = 0

    def submit(self, z: int) -> None:
        """Encode slice ``z`` in the background (after the one in flight; outside the volume: nothing)."""
        if not self.enabled or not 0 <= z < np.shape(self.volume)[self.axis]:
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
