"""Background encoder runs that give way: a run stops at the encoder's next preemption point when asked.

A background thread (the widget's volume encoding) runs the encoder inside :func:`preemptible`
with a ``should_stop`` test; encoders call :func:`preemption_point` between their blocks, which raises
:class:`Preempted` in that thread once any of its ``should_stop`` tests is true. Outside such a
context :func:`preemption_point` does nothing, so a user's own encoding is never interrupted. State is
per thread: a preemption point reached by another thread never sees this thread's tests.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

_state = threading.local()


class Preempted(Exception):
    """A background encoder run stopped at a preemption point to give way."""


@contextlib.contextmanager
def preemptible(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Encoder runs inside (in this thread) stop at a preemption point once ``should_stop()`` is true."""
    outer: tuple[Callable[[], bool], ...] = getattr(_state, "tests", ())
    _state.tests = (*outer, should_stop)
    try:
        yield
    finally:
        _state.tests = outer


def in_background() -> bool:
    """Whether this thread runs inside :func:`preemptible` (its encoder runs may be stopped)."""
    return bool(getattr(_state, "tests", ()))


def preemption_point() -> None:
    """Raise :class:`Preempted` if this thread's background run must give way; else nothing."""
    for should_stop in getattr(_state, "tests", ()):
        if should_stop():
            raise Preempted
