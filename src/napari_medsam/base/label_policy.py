"""The labels policy: which pixels a new mask may change, and new label ids (numpy only).

The widget (through :mod:`napari_medsam.layers.labels`) and the CLI (``segment --labels``) both
follow it: new objects take ids above every id in use and paint background only, unless the user
asked to overwrite.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: The largest label id napari-medsam gives or takes (label files are written as uint16 at most).
MAX_LABEL_ID = 2**16 - 1


def check_label_image(labels: np.ndarray, name: str) -> np.ndarray:
    """``labels`` as integers if they are a label image (whole numbers in 0..MAX_LABEL_ID), else a
    ValueError saying what ``name`` holds instead (an image given as labels, negative or huge ids)."""
    array = np.asarray(labels)
    if array.dtype.kind not in "biuf" or (array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0)):
        raise ValueError(f"{name} is not a label image: it holds {array.dtype} values, not whole numbers")
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0 or high > MAX_LABEL_ID:
        raise ValueError(
            f"{name} is not a label image napari-medsam takes: it holds values {low}..{high}; label ids "
            f"are 1..{MAX_LABEL_ID} (0 = background)"
        )
    return array if array.dtype.kind in "biu" else array.astype(np.min_scalar_type(high))


def next_label_id(labels_data: Any, taken: Iterable[int] = ()) -> int:
    """Smallest id above every id in ``labels_data`` and in ``taken``."""
    arr = np.asarray(labels_data)
    top = max([int(arr.max()) if arr.size else 0, *(int(t) for t in taken)])
    new = top + 1
    if np.issubdtype(arr.dtype, np.integer) and new > np.iinfo(arr.dtype).max:
        raise ValueError(f"no free label id left in a {arr.dtype} labels layer; use a wider dtype")
    return new


def label_changes(
    current: np.ndarray, mask: np.ndarray, label_id: int, *, overwrite: bool = False
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Pixels of a labels plane to change so ``mask`` becomes object ``label_id``.

    Policy: the object's earlier pixels on this plane that the new mask no longer covers are
    cleared to 0 (re-segmenting replaces, it does not accumulate); mask pixels are painted
    ``label_id`` where the plane is background or already ``label_id``, and over other labels
    only when ``overwrite`` is true. Returns ``(index arrays, new values)`` of changed pixels.
    """
    current = np.asarray(current)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != current.shape:
        raise ValueError(f"mask shape {mask.shape} does not match labels {current.shape}")
    if label_id <= 0:
        raise ValueError(f"label id must be positive, got {label_id}")
    new = current.copy()
    new[(current == label_id) & ~mask] = 0
    writable = mask if overwrite else mask & ((current == 0) | (current == label_id))
    new[writable] = label_id
    changed = new != current
    return np.nonzero(changed), new[changed]


def paint_mask(labels: np.ndarray, mask: np.ndarray, label_id: int, *, overwrite: bool = False) -> int:
    """Write ``mask`` into the 2D array ``labels`` in place by the :func:`label_changes` policy.

    Returns the number of pixels changed.
    """
    idx, values = label_changes(labels, mask, label_id, overwrite=overwrite)
    labels[idx] = values
    return len(values)


def assign_label_ids(known: Sequence[int], labels_data: Any | None, taken: Iterable[int] = ()) -> list[int]:
    """Each object's label id: its ``known`` id when positive, else a new id.

    New ids lie above every id in ``labels_data`` (None: no labels yet) and in ``taken`` (ids the
    prompt layers already name), and above each other, in order.
    """
    data = np.zeros(1, np.uint16) if labels_data is None else labels_data
    used = [int(i) for i in taken if int(i) > 0]
    ids = []
    for label_id in known:
        label_id = int(label_id)
        if label_id <= 0:
            label_id = next_label_id(data, used)
            used.append(label_id)
        ids.append(label_id)
    return ids


def add_objects(existing: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """``new`` labels (ids 1..N) added to ``existing`` under new ids, painted on background only.

    Returns the merged labels (``existing`` is not changed) and each new object's id in them.
    """
    existing, new = np.asarray(existing), np.asarray(new)
    if existing.shape != new.shape:
        raise ValueError(f"labels of shape {new.shape} do not fit the existing labels {existing.shape}")
    objects = [int(i) for i in np.unique(new) if i > 0]
    ids = dict(zip(objects, assign_label_ids([0] * len(objects), existing), strict=True))
    top = max(ids.values(), default=0)
    dtype = np.promote_types(existing.dtype, np.min_scalar_type(top))
    lut = np.zeros(int(new.max(initial=0)) + 1, dtype=dtype)
    for old, label in ids.items():
        lut[old] = label
    merged = existing.astype(dtype, copy=True)
    free = (existing == 0) & (new > 0)
    merged[free] = lut[new[free]]
    return merged, ids


#: The sides of a slice an object can be ended on: lower or higher indices along the slice axis.
BEFORE, AFTER = "before", "after"


def slices_past(depth: int, index: int, side: str) -> range:
    """The slice indices of a ``depth``-slice stack past ``index`` on ``side`` (``index`` itself kept)."""
    if not 0 <= index < depth:
        raise ValueError(f"slice {index} is outside the volume (0..{depth - 1})")
    if side == BEFORE:
        return range(0, index)
    if side == AFTER:
        return range(index + 1, depth)
    raise ValueError(f"side must be {BEFORE!r} or {AFTER!r}, not {side!r}")


def end_object(labels: np.ndarray, label_id: int, index: int, side: str, axis: int = 0) -> np.ndarray:
    """A copy of ``labels`` where object ``label_id`` ends at slice ``index``: cleared on every slice past it.

    "Past" is :func:`slices_past` along ``axis``; other objects and the slice itself are kept.
    ValueError when the object is not in ``labels``.
    """
    if not np.any(labels == label_id):
        raise ValueError(f"there is no object {label_id} to end")
    out = np.array(labels, copy=True)
    past = slices_past(out.shape[axis], index, side)
    view = np.moveaxis(out, axis, 0)[past.start : past.stop]  # a view of ``out``
    view[view == label_id] = 0
    return out
