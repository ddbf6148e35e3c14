"""Taking 2D slices out of a volume along an axis (array-likes: numpy, dask, a PlaneStack)."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_axis(axis: int, ndim: int) -> int:
    """``axis`` as a non-negative index of an ``ndim``-D volume; ValueError when out of range."""
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"axis {axis} is out of range for a {ndim}D volume")
    return int(axis) % ndim


def take_slice(volume: Any, index: int, axis: int) -> np.ndarray:
    """Slice ``index`` of ``volume`` along ``axis`` as a numpy array."""
    key: list[Any] = [slice(None)] * len(np.shape(volume))
    key[axis] = index
    return np.asarray(volume[tuple(key)])
