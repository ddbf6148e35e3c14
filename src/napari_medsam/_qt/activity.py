"""The line under the status line: what the widget does in the background, while nothing else says so.

Two things run without a button: loading the model ahead (``_qt.preload``, or the background
encoder's own load) and encoding the slices of the image on screen (``_qt.background``). Without
a word, the first looks like a widget that does nothing for seconds after it opens. The line says
which one runs, from their state (never an old message): the model loading, with the seconds it
has taken so far; else the slices encoded of those planned. While the model loads and no job
runs, the progress bar is a busy indicator instead of a bar at 0 %.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from magicgui.widgets import Label, ProgressBar
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from napari_medsam.engine.model_slot import ModelSlot

#: How often (ms) the line is brought up to date.
EVERY_MS = 250


def encoding_text(done: int, total: int) -> str:
    """The background encoding's progress in words ('' when nothing is planned)."""
    if total <= 0:
        return ""
    if done < total:
        return f"Encoding in the background: {done} / {total} slices…"
    return f"Encoded in the background: {total} / {total} slices"


class BackgroundActivity:
    """Keeps ``line`` saying what runs in the background: the model ``models`` loads, else the
    encoding's ``progress()`` (slices encoded, slices planned). ``busy()`` says whether a job
    runs (it owns ``bar`` then); ``preloading()`` names a model loading ahead from the moment it
    starts until its end reaches the viewer's thread (a load shorter than a refresh is said too)."""

    def __init__(
        self,
        parent: QWidget,
        line: Label,
        bar: ProgressBar,
        models: ModelSlot,
        progress: Callable[[], tuple[int, int]],
        busy: Callable[[], bool],
        preloading: Callable[[], tuple[str, str] | None] = lambda: None,
    ) -> None:
        self._line, self._bar, self._models = line, bar, models
        self._progress, self._busy, self._preloading = progress, busy, preloading
        self._since: float | None = None
        self._spinning = False
        self._timer = QTimer(parent)
        self._timer.setInterval(EVERY_MS)
        self._timer.timeout.connect(self.refresh)
        self._timer.start()

    def refresh(self, *_: object) -> None:
        """Say what runs now (called every :data:`EVERY_MS` and whenever the encoding moves)."""
        loading = self._models.loading or self._preloading()  # a short load is said too
        if loading is None:
            self._since = None
            text = encoding_text(*self._progress())
        else:
            self._since = time.monotonic() if self._since is None else self._since
            seconds = time.monotonic() - self._since
            text = f"Loading the model {Path(loading[0]).name} in the background… {seconds:.0f} s"
        if self._line.value != text:
            self._line.value = text
        self._spin(loading is not None and not self._busy())

    def close(self) -> None:
        """Stop (the widget closed)."""
        self._timer.stop()
        self._spin(False)

    def _spin(self, on: bool) -> None:
        """The bar as a busy indicator (no job's measure to show) while ``on``; back to empty after."""
        if on == self._spinning:
            return
        self._spinning = on
        if not self._busy():  # a job owns the bar
            self._bar.max, self._bar.value = (0, 0) if on else (1, 0)
