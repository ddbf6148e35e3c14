"""What the widget does on its own: auto-segment drawn prompts, encode neighbouring slices ahead.

Auto-segment. napari reports a drawn rectangle as ``ADDING`` on the mouse press and ``ADDED`` on
the release (programmatic ``add_*`` calls emit both at once); an edit (move, resize, vertex
change) as one ``CHANGED`` when the drag ends. Only ``ADDED`` and ``CHANGED`` count, so a box
still being dragged out never runs the model, and a short quiet time merges a burst of events
into one run.

Prefetch. While the user looks at a slice, a :class:`~napari_medsam.core.propagation.Prefetcher`
encodes it and its neighbours with the widget's predictor, so that drawing a box there needs
only the decoder. Requests wait for a quiet time too, so scrolling through slices or dragging
the contrast slider does not start the encoder on every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from napari.layers.base import ActionType

from napari_medsam._qt.watchers import Debouncer
from napari_medsam.core.prefetch import Prefetcher

KINDS = ("boxes", "clicks")
#: Quiet time (ms) after the last drawing event before the run starts.
DELAY_MS = 120
#: Quiet time (ms) after the last slice, image, window or model change before prefetching.
PREFETCH_DELAY_MS = 150
#: What to prefetch: (predictor, slices (array-like, slice axis first), centre slice, window).
PrefetchTarget = tuple[Any, Any, int, Sequence[float] | None]


class AutoSegment:
    """Collects the rows of the boxes and clicks layers that were added or edited.

    After :data:`DELAY_MS` without further edits, ``run(box_rows, click_rows)`` is called on the
    viewer's thread. While ``busy()`` is true the rows wait; :meth:`resume` runs them later.
    """

    def __init__(
        self,
        parent: Any,
        run: Callable[[set[int], set[int]], None],
        busy: Callable[[], bool],
        delay_ms: int = DELAY_MS,
    ) -> None:
        self.enabled = False
        self._run, self._busy = run, busy
        self._layers: dict[str, Any] = dict.fromkeys(KINDS)
        self._rows: dict[str, set[int]] = {kind: set() for kind in KINDS}
        self._count_before: dict[str, int] = {}
        self._debounce = Debouncer(parent, delay_ms, self._fire)

    @property
    def pending(self) -> bool:
        """Whether edits wait for a run."""
        return any(self._rows.values())

    def watch(self, kind: str, layer: Any | None) -> None:
        """Follow the data events of ``layer`` as the ``kind`` ("boxes" or "clicks") layer."""
        old = self._layers[kind]
        if old is layer:
            return
        if old is not None:
            old.events.data.disconnect(self._on_boxes if kind == "boxes" else self._on_clicks)
        self._layers[kind] = layer
        self._rows[kind].clear()
        if layer is not None:
            layer.events.data.connect(self._on_boxes if kind == "boxes" else self._on_clicks)

    def close(self) -> None:
        """Stop following layers and drop pending edits."""
        self._debounce.cancel()
        for kind in KINDS:
            self.watch(kind, None)

    def resume(self) -> None:
        """Run edits that waited for a job to finish."""
        if self.enabled and self.pending:
            self._debounce.trigger()

    def _on_boxes(self, event: Any) -> None:
        self._on_data("boxes", event)

    def _on_clicks(self, event: Any) -> None:
        self._on_data("clicks", event)

    def _on_data(self, kind: str, event: Any) -> None:
        layer = self._layers[kind]
        action = getattr(event, "action", None)
        count = len(layer.data)
        if action == ActionType.ADDING:
            self._count_before[kind] = count
            return
        if action == ActionType.REMOVED:  # rows shift: forget what was pending
            self._rows[kind].clear()
            return
        if not self.enabled:
            return
        if action == ActionType.ADDED:
            rows = range(min(self._count_before.pop(kind, count - 1), count), count)
        elif action == ActionType.CHANGED:
            rows = [i % count for i in getattr(event, "data_indices", ()) if -count <= i < count]
        else:
            return
        self._rows[kind].update(int(i) for i in rows)
        if self._rows[kind]:
            self._debounce.trigger()

    def _fire(self) -> None:
        if not self.enabled or not self.pending or self._busy():
            return  # busy: resume() runs these rows once the job is done
        boxes, clicks = set(self._rows["boxes"]), set(self._rows["clicks"])
        for rows in self._rows.values():
            rows.clear()
        self._run(boxes, clicks)


class NeighbourPrefetch:
    """Keeps a :class:`Prefetcher` fed with the slices around the one on screen.

    Call :meth:`schedule` whenever the slice, image, window or model may have changed: queued
    work is dropped at once, and after :data:`PREFETCH_DELAY_MS` ``target()`` says what to encode
    (None: nothing, e.g. no predictor loaded yet, a 2D image, or a job running).
    """

    def __init__(self, parent: Any, target: Callable[[], PrefetchTarget | None], radius: int) -> None:
        self.prefetcher = Prefetcher(None, radius=radius)
        self._target = target
        self._later = Debouncer(parent, PREFETCH_DELAY_MS, self._request)
        self._image: Any = None
        self._closed = False

    def schedule(self, image: Any | None = None) -> None:
        """Drop queued slices and plan new ones; follow ``image``'s contrast limits (the window)."""
        if self._closed:
            return
        self._watch(image)
        self.prefetcher.cancel()
        self._later.trigger()

    @property
    def planned(self) -> bool:
        """Whether a request waits for the quiet time to pass."""
        return self._later.pending

    def stop(self) -> None:
        """Drop queued and planned slices (a job is starting)."""
        self._later.cancel()
        self.prefetcher.cancel()

    def forget_predictor(self) -> None:
        """The model changed: never encode with the old one again."""
        self.prefetcher.set_predictor(None)

    def close(self, timeout: float | None = None) -> None:
        """Stop for good (the widget closed): waits for a slice being encoded, then its thread ends."""
        self._closed = True
        self._later.cancel()
        self._watch(None)
        self.prefetcher.close(timeout=timeout)

    def _watch(self, image: Any | None) -> None:
        if image is self._image:
            return
        if self._image is not None:
            self._image.events.contrast_limits.disconnect(self._on_contrast)
        self._image = image
        if image is not None:
            image.events.contrast_limits.connect(self._on_contrast)

    def _on_contrast(self, *_: object) -> None:
        self.schedule(self._image)

    def _request(self) -> None:
        target = None if self._closed else self._target()
        if target is None:
            self.prefetcher.cancel()
            return
        predictor, slices, centre, window = target
        if self.prefetcher.predictor is not predictor:
            self.prefetcher.set_predictor(predictor)
        self.prefetcher.request(slices, centre, window=window)
