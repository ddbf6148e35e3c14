"""The raw Qt the widget needs: noticing that it was closed or undocked, and a debouncing timer."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QWidget


class CloseWatcher(QObject):
    """Calls ``on_close`` once when ``widget`` is closed or taken out of its dock (parent None),
    or when the window it is docked in (the viewer) closes.

    napari removes a closed dock widget by unparenting it, without a close event; closing the
    viewer closes its main window only, not the widgets docked in it.
    """

    def __init__(self, widget: QWidget, on_close: Callable[[], None]) -> None:
        super().__init__(widget)
        self._widget, self._on_close = widget, on_close
        self._had_parent = widget.parent() is not None
        self._ancestors: list[QObject] = []
        widget.installEventFilter(self)
        self._watch_ancestors()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if "_ancestors" not in self.__dict__:  # Python has torn this object down before Qt did
            return False
        kind = event.type()
        if obj is self._widget and kind == QEvent.Type.ParentChange:
            if obj.parent() is None and self._had_parent:
                self._close()
            self._had_parent = obj.parent() is not None
        if kind == QEvent.Type.ParentChange:
            self._watch_ancestors()  # docked into a dock widget, then that into the main window
        elif kind == QEvent.Type.Close and (obj is self._widget or obj is self._window):
            self._close()
        return False

    def _close(self) -> None:
        self._on_close()
        for ancestor in self._ancestors:  # nothing more to watch
            ancestor.removeEventFilter(self)
        self._ancestors = []

    @property
    def _window(self) -> QObject | None:
        return self._ancestors[-1] if self._ancestors else None

    def _watch_ancestors(self) -> None:
        for ancestor in self._ancestors:
            ancestor.removeEventFilter(self)
        self._ancestors = []
        parent = self._widget.parent()
        while parent is not None:
            parent.installEventFilter(self)
            self._ancestors.append(parent)
            parent = parent.parent()


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
