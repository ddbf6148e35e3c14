"""The model loaded ahead: shortly after the widget opens, in a background thread.

The first Segment then finds the model loaded (about 5 s saved on a CPU) and the viewer never
waits for it: the load runs through the widget's ``ModelSlot``, so a run that asks for the same
model meanwhile waits for this load instead of starting another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

logger = logging.getLogger(__name__)
#: How long after the widget opens the model starts loading (ms): the viewer draws first.
PRELOAD_DELAY_MS = 500


class ModelPreload:
    """Load the model that ``plan()`` names with ``load(source, device)``, once, in a thread.

    ``plan`` returns ``(source, device)``, or None when nothing should load (a custom model without
    weights, a run already started, the widget closed). A failure is logged only: the first run
    loads again and reports it, with the fix, as every run does.
    """

    def __init__(
        self,
        parent: QWidget,
        plan: Callable[[], tuple[str, str] | None],
        load: Callable[[str, str], object],
        delay_ms: int = PRELOAD_DELAY_MS,
    ) -> None:
        self._plan, self._load = plan, load
        self.thread: threading.Thread | None = None
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.start)
        self._timer.start(delay_ms)

    def start(self) -> None:
        """Start loading now (once), if ``plan`` names a model."""
        target = self._plan()
        if target is None or self.thread is not None:
            return
        self.thread = threading.Thread(target=self._run, args=target, name="medsam-preload", daemon=True)
        self.thread.start()

    def close(self, timeout: float) -> None:
        """Never start; wait up to ``timeout`` seconds for a load under way."""
        self._timer.stop()
        if self.thread is not None:
            self.thread.join(timeout)

    def _run(self, source: str, device: str) -> None:
        try:
            self._load(source, device)
        except Exception:
            logger.info("loading %s ahead failed; the first run will say why", source, exc_info=True)
