"""Writing a file whole or not at all: every file napari-medsam writes goes through here.

A file is written under a hidden temporary name in its target's folder (the same file system),
flushed to disk, and renamed over the target (:func:`os.replace`, atomic on POSIX and Windows).
A process killed at any moment leaves the old file or the new one, never a partial one; at
worst a hidden ``.<name>.tmp-<random><ending>`` file stays behind.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

#: What every temporary name holds (``.organs.tmp-1a2b3c4d.nii.gz``), so left-overs can be recognised.
TMP_MARK = ".tmp-"


def temp_path(target: str | os.PathLike[str], ending: str = "") -> Path:
    """A fresh hidden name beside ``target`` that keeps ``ending`` (writers that choose the format
    by the file name, as SimpleITK does, need it): ``organs.nii.gz`` + ``.nii.gz`` ->
    ``.organs.tmp-<random>.nii.gz``. ``ending`` must be what ``target``'s name ends with, in any case.
    """
    target = Path(target)
    name = target.name
    if ending and not name.lower().endswith(ending.lower()):
        raise ValueError(f"{name} does not end with {ending}")
    stem = name[: len(name) - len(ending)] if ending else name
    return target.with_name(f".{stem}{TMP_MARK}{uuid.uuid4().hex[:12]}{ending}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], ending: str = "") -> Iterator[Path]:
    """Yield a temporary path (:func:`temp_path`) to write; on a clean exit it replaces ``target``.

    The written file is flushed to disk before the rename, and the folder after it. On an error
    the temporary file is removed and ``target`` is untouched. A writer that makes no file at the
    temporary path is a bug (FileNotFoundError from the rename).
    """
    target = Path(target)
    tmp = temp_path(target, ending)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(target.parent)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``target`` with ``data`` atomically; returns its path."""
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Replace ``target`` with ``text`` (UTF-8) atomically; returns its path."""
    return write_bytes(target, text.encode("utf-8"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); not possible on Windows, where it is skipped."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
