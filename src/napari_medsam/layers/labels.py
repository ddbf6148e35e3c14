"""The one write path into a Labels layer, by the labels policy of :mod:`napari_medsam.base.label_policy`.

Segment, Propagate and Interpolate all write through :func:`write_planes` (one undo step per
action) and take new ids from :func:`~napari_medsam.base.label_policy.assign_label_ids`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from napari_medsam.base.label_policy import label_changes
from napari_medsam.layers.prompts import Plane


def write_planes(
    labels: Any, writes: Iterable[tuple[Plane, int, np.ndarray]], *, overwrite: bool
) -> list[int]:
    """Write each ``(plane, label id, 2D mask)`` into a Labels layer as one undo step.

    Follows :func:`label_changes` on each plane. Returns the ids whose masks had pixels, in order.
    """
    written: list[int] = []
    with labels.block_history():
        for plane, label_id, mask in writes:
            changes, values = label_changes(plane.extract(labels.data), mask, label_id, overwrite=overwrite)
            if len(values):
                labels.data_setitem(plane.indices(*changes), values, refresh=False)
            if mask.any() and label_id not in written:
                written.append(label_id)
    labels.refresh()
    return written
