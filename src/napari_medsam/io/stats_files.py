"""Per-object statistics as files: ``.csv`` (one row per object) or ``.json`` (a list of objects).

Both carry :data:`~napari_medsam.base.stats.STATS_COLUMNS`; an unknown value (no volume for 2D
labels, no mean without an image) is an empty CSV cell and a JSON ``null``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from napari_medsam.base.atomic import write_text
from napari_medsam.base.stats import STATS_COLUMNS, ObjectStats
from napari_medsam.io.formats import suffix_of

STATS_SUFFIXES = (".csv", ".json")


def write_stats(path: str | os.PathLike, stats: Sequence[ObjectStats]) -> Path:
    """Write ``stats`` as CSV or JSON by the ending of ``path`` (atomically); returns the path."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in STATS_SUFFIXES:
        raise ValueError(f"{path.name}: statistics are written as {' or '.join(STATS_SUFFIXES)}")
    rows = [{key: _rounded(value) for key, value in s.row().items()} for s in stats]
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        return write_text(path, json.dumps(rows, indent=2) + "\n")
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=STATS_COLUMNS)
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return write_text(path, buffer.getvalue())


def _rounded(value: object) -> object:
    return round(value, 6) if isinstance(value, float) else value
