"""Run jobs (``base.jobs``) off the viewer's thread: progress bar, Cancel, notifications.

Errors a user can fix (``base.jobs.user_message``) are shown with their message; any other
error is a bug: it is logged with its traceback and shown as "internal error, see the log",
and the viewer keeps running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from magicgui.widgets import Label, ProgressBar, PushButton
from psygnal import Signal

from napari_medsam.base.jobs import Job, Progress, user_message

T = TypeVar("T")
logger = logging.getLogger(__name__)

class JobError(Exception):
    """Carries an exception out of a worker thread.

    superqt's ``GeneratorWorker`` treats a ``RuntimeError`` raised in the generator as "worker
    deleted" and emits neither ``errored`` nor ``finished``; ``ModelLoadError`` is a
    ``RuntimeError``. Re-raising every failure wrapped in this class keeps them visible.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _drive(job: Job[T]) -> Job[T]:
    try:
        return (yield from job)
    except Exception as err:
        raise JobError(err) from err



class JobRunner:
    """One job at a time in a napari thread worker, reported in a progress bar and a label.

    ``finished`` is emitted on the viewer's thread with ``"done"``, ``"failed"`` or
    ``"cancelled"`` after the job's result (if any) was handed to ``on_done``.
    """

    finished = Signal(str)

    def __init__(
        self,
        progress: ProgressBar,
        status: Label,
        cancel: PushButton,
        notify: Callable[[str, str], None],
        on_busy: Callable[[bool], None] = lambda busy: None,
    ) -> None:
        self._progress, self._status, self._cancel = progress, status, cancel
        self._notify, self._on_busy = notify, on_busy
        self.worker: Any = None
        self._outcome = "done"
        self._cancel.changed.connect(self.cancel)
        self._cancel.enabled = False

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(
        self,
        job: Job[T],
        on_done: Callable[[T], None],
        *,
        title: str,
        also: dict[str, Callable[..., Any]] | None = None,
    ) -> Any:
        """Run ``job`` in a thread; give its result to ``on_done`` on the viewer's thread.

        ``also`` connects more callbacks to the worker's signals (``"yielded"``, ``"aborted"``,
        ``"errored"``) before it starts, after the runner's own.
        """
        from napari.qt.threading import create_worker

        if self.busy:
            raise RuntimeError("another job is still running")
        # Connecting "errored" here (not afterwards) stops superqt re-raising the error.
        connect: dict[str, Any] = {
            "yielded": self.show_progress,
            "returned": lambda result: self._on_returned(on_done, result),
            "errored": self._on_errored,
            "aborted": self._on_aborted,
            "finished": self._on_finished,
        }
        for name, callback in (also or {}).items():
            connect[name] = [connect[name], callback] if name in connect else callback
        worker = create_worker(_drive, job, _start_thread=False, _connect=connect)
        self.worker, self._outcome, self._title = worker, "done", title
        self._progress.value = 0
        self._status.value = f"{title}…"
        self._cancel.enabled = True
        self._on_busy(True)
        worker.start()
        return worker

    def cancel(self, *_: object) -> None:
        """Ask the running job to stop at its next progress step."""
        if self.worker is not None:
            self._status.value = "Cancelling…"
            self.worker.quit()

    def wait(self, timeout: float) -> bool:
        """Block until the job's thread has left it (after :meth:`cancel`: at its next step).

        Returns False if ``timeout`` seconds passed first. A worker not started yet never runs a
        cancelled job, so it is not waited for.
        """
        worker, deadline = self.worker, time.monotonic() + timeout
        while worker is not None and worker.is_running:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def show_progress(self, progress: Progress) -> None:
        """Show a job's ``(done, total, message)`` in the progress bar and the label.

        A ``total`` of 0 has no measure (loading a model, a download whose pip reports no
        bytes): the bar then runs as a busy indicator.
        """
        done, total, message = progress
        self._progress.max = max(int(total), 0)
        self._progress.value = min(int(done), self._progress.max)
        self._status.value = message

    def _on_returned(self, on_done: Callable[[Any], None], result: Any) -> None:
        try:
            on_done(result)
        except Exception as err:
            self._fail(err)

    def _on_errored(self, error: BaseException) -> None:
        self._fail(error.error if isinstance(error, JobError) else error)

    def _fail(self, error: BaseException) -> None:
        self._outcome = "failed"
        shown = user_message(error)
        if shown is None:
            logger.error("%s failed with an internal error", self._title, exc_info=error)
            shown = f"internal error ({type(error).__name__}), see the log"
        message = f"{self._title} failed: {shown}"
        self._status.value = message
        self._notify("error", message)

    def _on_aborted(self) -> None:
        self._outcome = "cancelled"
        self._status.value = f"{self._title} cancelled: nothing was written"
        self._notify("info", self._status.value)

    def _on_finished(self) -> None:
        self.worker = None
        self._cancel.enabled = False
        self._progress.max = max(self._progress.max, 1)  # a busy indicator stops
        self._progress.value = self._progress.max if self._outcome == "done" else 0
        self._on_busy(False)
        self.finished.emit(self._outcome)
