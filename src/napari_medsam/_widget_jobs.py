"""Run long computations off the viewer's thread: progress, cancel, notifications.

A *job* is a plain generator that yields ``(done, total, message)`` tuples and returns its
result; it touches no napari layer (read what it needs before, write the result after).
:func:`~napari_medsam.propagation.run_to_end` runs one synchronously (scripts, tests);
:class:`JobRunner` runs one under ``napari.qt.threading`` with a progress bar and a Cancel button.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from magicgui.widgets import Label, ProgressBar, PushButton
from psygnal import Signal

T = TypeVar("T")
Progress = tuple[int, int, str]
Job = Generator[Progress, None, T]

logger = logging.getLogger(__name__)

#: Errors a user can fix: shown as their message alone.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    MemoryError,
    RuntimeError,
)


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


def describe_error(error: BaseException) -> str:
    """Message for a notification: the text of errors users can fix, the type otherwise."""
    if isinstance(error, USER_ERRORS) and str(error):
        return str(error)
    return f"{type(error).__name__}: {error}"


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

    def start(self, job: Job[T], on_done: Callable[[T], None], *, title: str) -> Any:
        """Run ``job`` in a thread; give its result to ``on_done`` on the viewer's thread."""
        from napari.qt.threading import create_worker

        if self.busy:
            raise RuntimeError("another job is still running")
        # Connecting "errored" here (not afterwards) stops superqt re-raising the error.
        worker = create_worker(
            _drive,
            job,
            _start_thread=False,
            _connect={
                "yielded": self.show_progress,
                "returned": lambda result: self._on_returned(on_done, result),
                "errored": self._on_errored,
                "aborted": self._on_aborted,
                "finished": self._on_finished,
            },
        )
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

    def show_progress(self, progress: Progress) -> None:
        """Show a job's ``(done, total, message)`` in the progress bar and the label."""
        done, total, message = progress
        self._progress.max = max(int(total), 1)
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
        if not isinstance(error, USER_ERRORS):
            logger.error("%s failed", self._title, exc_info=error)
        message = f"{self._title} failed: {describe_error(error)}"
        self._status.value = message
        self._notify("error", message)

    def _on_aborted(self) -> None:
        self._outcome = "cancelled"
        self._status.value = f"{self._title} cancelled: nothing was written"
        self._notify("info", self._status.value)

    def _on_finished(self) -> None:
        self.worker = None
        self._cancel.enabled = False
        if self._outcome == "done":
            self._progress.value = self._progress.max
        self._on_busy(False)
        self.finished.emit(self._outcome)
