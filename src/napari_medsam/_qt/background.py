"""What the widget does on its own: auto-segment drawn prompts, encode the volume in the background.

Auto-segment. napari reports a drawn rectangle as ``ADDING`` on the mouse press and ``ADDED`` on
the release (programmatic ``add_*`` calls emit both at once); an edit (move, resize, vertex
change) as one ``CHANGED`` when the drag ends. Only ``ADDED`` and ``CHANGED`` count, so a box
still being dragged out never runs the model, and a short quiet time merges a burst of events
into one run.

Background encoding. While the user looks at an image, a :class:`~napari_medsam.engine.prefetch.
Prefetcher` encodes every slice of the plane on screen with the widget's predictor (loading the
model first when it is on this machine), nearest to the slice on screen first, so that a box on
any slice, a propagation or an interpolation needs only the decoder. A new slice, window or image
replans after a quiet time (scrolling does not restart the encoder on every step; the slice in
the encoder finishes). A user's run interrupts it at once and it goes on afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from napari.layers.base import ActionType
from qtpy.QtCore import QTimer

from napari_medsam._qt.watchers import Debouncer
from napari_medsam.engine.prefetch import PredictorLoader, Prefetcher

KINDS = ("boxes", "clicks")
#: Quiet time (ms) after the last drawing event before the run starts.
DELAY_MS = 120
#: Quiet time (ms) after the last slice, image, window or model change before replanning.
PREFETCH_DELAY_MS = 150
#: How often (ms) the status line shows the progress while slices are planned.
STATUS_EVERY_MS = 250


@dataclass(frozen=True)
class EncodeTarget:
    """What to encode: the slices (array-like, slice axis first) around ``centre`` in ``window``,
    at most ``limit``, with the predictor ``load()`` gives for ``model`` (compared to notice a change).
    """

    model: tuple[str, str]
    load: PredictorLoader
    slices: Any
    centre: int
    window: Sequence[float] | None
    limit: int


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


class VolumeEncoding:
    """Keeps a :class:`Prefetcher` encoding the slices of the image on screen, nearest first.

    Call :meth:`schedule` whenever the slice, image, window or model may have changed: after
    :data:`PREFETCH_DELAY_MS` ``target()`` says what to encode (None: nothing, e.g. the option
    is off or a job runs: the slice in the encoder stops) and the plan is replaced (the slice in
    the encoder finishes). :meth:`stop` (a job starts) stops the slice in the encoder at once.
    ``report(text)`` shows the progress ("encoded 18 / 30 slices").
    """

    def __init__(
        self, parent: Any, target: Callable[[], EncodeTarget | None], report: Callable[[str], None]
    ) -> None:
        self.prefetcher = Prefetcher(None, radius=None)
        self._target, self._report = target, report
        self._later = Debouncer(parent, PREFETCH_DELAY_MS, self._request)
        self._status = QTimer(parent)
        self._status.setInterval(STATUS_EVERY_MS)
        self._status.timeout.connect(self._show_progress)
        self._model: tuple[str, str] | None = None
        self._image: Any = None
        self._closed = False

    def schedule(self, image: Any | None = None) -> None:
        """Plan again after the quiet time; follow ``image``'s contrast limits (the window)."""
        if self._closed:
            return
        self._watch(image)
        self._later.trigger()

    @property
    def planned(self) -> bool:
        """Whether a request waits for the quiet time to pass."""
        return self._later.pending

    def stop(self) -> None:
        """Drop planned slices and stop the one in the encoder at once (a job is starting)."""
        self._later.cancel()
        self.prefetcher.interrupt()
        self._show_progress()

    def forget_predictor(self) -> None:
        """The model changed: never encode with the old one again."""
        self._model = None
        self.prefetcher.set_loader(None)

    def close(self, timeout: float | None = None) -> None:
        """Stop for good (the widget closed): the slice in the encoder stops, then its thread ends."""
        self._closed = True
        self._later.cancel()
        self._status.stop()
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
        if target is None:  # e.g. switched off: the slice in the encoder stops too
            self.prefetcher.interrupt()
        else:
            if target.model != self._model:
                self._model = target.model
                self.prefetcher.set_loader(target.load)
            self.prefetcher.request(target.slices, target.centre, window=target.window, limit=target.limit)
            self._status.start()
        self._show_progress()

    def _show_progress(self) -> None:
        done, total = self.prefetcher.progress
        self._report(f"encoded {done} / {total} slices" if total else "")
        if done == total or self._closed:
            self._status.stop()
