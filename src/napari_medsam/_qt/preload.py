"""The model loaded ahead: shortly after the widget opens, in a background thread.

The first Segment then finds the model loaded (about 5 s saved on a CPU) and the viewer never
waits for it: the load runs through the widget's ``ModelSlot``, so a run that asks for the same
model meanwhile waits for this load instead of starting another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

logger = logging.getLogger(__name__)
#: How long after the widget opens the model starts loading (ms): the viewer draws first.
PRELOAD_DELAY_MS = 500


class ModelPreload:
    """Load the model that ``plan()`` names with ``load(source, device)``, once, in a thread worker.

    ``plan`` returns ``(source, device)``, or None when nothing should load (a custom model without
    weights, a run already started, the widget closed). ``loaded`` is called on the viewer's
    thread once the model is in (e.g. to encode the slice on screen ahead). A failure is logged
    only: the first run loads again and reports it, with the fix, as every run does.
    """

    def __init__(
        self,
        parent: QWidget,
        plan: Callable[[], tuple[str, str] | None],
        load: Callable[[str, str], object],
        loaded: Callable[[], None] = lambda: None,
        delay_ms: int = PRELOAD_DELAY_MS,
        started: Callable[[], None] = lambda: None,
    ) -> None:
        self._plan, self._load, self._loaded, self._started = plan, load, loaded, started
        self.worker: Any = None
        #: The (source, device) loading ahead, from the start until its end reaches the viewer's thread.
        self.loading: tuple[str, str] | None = None
        self._closed = False
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.start)
        self._timer.start(delay_ms)

    def start(self) -> None:
        """Start loading now (once), if ``plan`` names a model."""
        from napari.qt.threading import create_worker

        target = self._plan()
        if target is None or self.worker is not None:
            return
        self.worker = create_worker(
            self._load, *target, _start_thread=False,
            _connect={"returned": self._on_returned, "errored": self._failed},
        )  # fmt: skip
        self.loading = (str(target[0]), str(target[1]))
        self.worker.start()
        self._started()

    def close(self, timeout: float) -> None:
        """Never start, never call ``loaded``; wait up to ``timeout`` seconds for a load under way."""
        self._closed = True
        self._timer.stop()
        deadline = time.monotonic() + timeout
        while self.worker is not None and self.worker.is_running and time.monotonic() < deadline:
            time.sleep(0.01)

    def _on_returned(self, _: object) -> None:
        self.loading = None
        if not self._closed:  # the result may arrive after the widget closed
            self._loaded()

    def _failed(self, error: BaseException) -> None:
        self.loading = None
        logger.info("loading the model ahead failed; the first run will say why", exc_info=error)
