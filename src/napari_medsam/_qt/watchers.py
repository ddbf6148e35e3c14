"""The raw Qt the widget needs: noticing that it was closed or undocked, and a debouncing timer."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QWidget


class CloseWatcher(QObject):
    """Calls ``on_close`` once when ``widget`` is closed or taken out of its dock (parent None).

    napari removes a closed dock widget by unparenting it, without a close event.
    """

    def __init__(self, widget: QWidget, on_close: Callable[[], None]) -> None:
        super().__init__(widget)
        self._on_close = on_close
        self._had_parent = widget.parent() is not None
        widget.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind == QEvent.Type.ParentChange:
            if obj.parent() is None and self._had_parent:
                self._on_close()
            self._had_parent = obj.parent() is not None
        elif kind == QEvent.Type.Close:
            self._on_close()
        return False


class Debouncer(QObject):
    """Calls ``callback`` once, ``delay_ms`` after the last of a burst of :meth:`trigger` calls."""

    def __init__(self, parent: QObject | None, delay_ms: int, callback: Callable[[], None]) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(delay_ms))
        self._timer.timeout.connect(callback)

    def trigger(self) -> None:
        """(Re)start the quiet period."""
        self._timer.start()

    def cancel(self) -> None:
        """Forget a pending call."""
        self._timer.stop()

    @property
    def pending(self) -> bool:
        """Whether a call is scheduled."""
        return self._timer.isActive()
