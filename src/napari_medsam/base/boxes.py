"""Boxes as the models take them: ``(x0, y0, x1, y1)`` in pixels of a slice, x the column.

The one home of the box type and of the rules that make, grow and check boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: ``(x0, y0, x1, y1)`` in pixels of a 2D slice; x is the column, y the row.
BoxXYXY = tuple[float, float, float, float]


def normalise_box(box: Sequence[float]) -> BoxXYXY:
    """A box as 4 floats with ``x0 <= x1`` and ``y0 <= y1``; ValueError when it is not 4 finite numbers."""
    values = np.asarray(box, dtype=float).reshape(-1)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"a box is 4 finite numbers (x0, y0, x1, y1), got {box!r}")
    x0, x1 = sorted(values[[0, 2]])
    y0, y1 = sorted(values[[1, 3]])
    return float(x0), float(y0), float(x1), float(y1)


def mask_box(mask: np.ndarray) -> BoxXYXY | None:
    """(x0, y0, x1, y1) of a 2D mask, as MedSAM builds training boxes: min and max pixel index."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(mask, axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])


def expand_box(
    box: Sequence[float], shape: tuple[int, int], fraction: float = 0.1, pixels: float = 2.0
) -> BoxXYXY:
    """Grow ``box`` on each side by ``max(fraction * side, pixels)``, clipped to ``shape``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    dx = max(fraction * (x1 - x0), pixels)
    dy = max(fraction * (y1 - y0), pixels)
    height, width = shape
    return (
        max(x0 - dx, 0.0),
        max(y0 - dy, 0.0),
        min(x1 + dx, width - 1.0),
        min(y1 + dy, height - 1.0),
    )


def box_union(a: Sequence[float], b: Sequence[float]) -> BoxXYXY:
    """The smallest box holding boxes ``a`` and ``b``."""
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def check_box(box: object, width: int, height: int) -> np.ndarray:
    """Validate an (x0, y0, x1, y1) box and clip it to the image; raise ValueError if unusable."""
    try:
        values = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got {box!r}") from err
    if values.shape != (4,):
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"box contains NaN or infinite values: {values.tolist()}")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {values.tolist()} is empty or inverted: it needs x1 > x0 and y1 > y0")
    if x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1:
        raise ValueError(
            f"box {values.tolist()} lies wholly outside the image (width {width}, height {height})"
        )
    clipped = np.clip(values, 0, [width - 1, height - 1, width - 1, height - 1])
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ValueError(f"box {values.tolist()} has no area inside the image")
    return clipped
