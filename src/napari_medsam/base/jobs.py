"""Jobs: long computations as plain generators, and which of their errors a user can fix.

A *job* yields ``(done, total, message)`` progress tuples and returns its result; it touches no
napari layer (read what it needs before, write the result after). :func:`run_to_end` drives one
synchronously (scripts, tests, CLI); the widget's ``_qt.jobs.JobRunner`` runs one in a thread
worker with a progress bar and Cancel.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

from napari_medsam.base.errors import MissingExtraError, ModelLoadError

T = TypeVar("T")
Y = TypeVar("Y")
Progress = tuple[int, int, str]
Job = Generator[Progress, None, T]

#: Errors a user can fix from the message alone (bad input, a missing file, a model that will not load).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, ModelLoadError, MissingExtraError,
)  # fmt: skip
OUT_OF_MEMORY_ADVICE = (
    "out of memory: pick a smaller model (LiteMedSAM), run on the CPU, or work on fewer slices at once"
)


def user_message(error: BaseException) -> str | None:
    """The message to show for an error the user can fix; None for a programming error.

    Out-of-memory errors (Python's, PyTorch's CPU allocator, CUDA's) get advice on what to change.
    """
    if _is_out_of_memory(error):
        return f"{OUT_OF_MEMORY_ADVICE} ({type(error).__name__})"
    if isinstance(error, USER_ERRORS):
        return str(error) or type(error).__name__
    return None


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def run_to_end(steps: Generator[Y, None, T], callback: Callable[[Y], Any] | None = None) -> T:
    """Drive a generator to its end, handing each item it yields to ``callback``; return its result."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(step)


def relay(steps: Generator[Y, None, T], to_progress: Callable[[Y], Progress]) -> Job[T]:
    """Re-yield each item of ``steps`` as progress (``to_progress(item)``); return its result."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        yield to_progress(step)
