"""Where the slices a walk asks to check lie, Qt-free: their slider numbers and how to go there."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_medsam.layers.edits import review_of
from napari_medsam.layers.prompts import slider_axis, slider_step


def review_targets(viewer: Any, image: Any, labels: Any, label_id: int) -> list[tuple[int, float, int]]:
    """(slider position, world position, world axis) of each slice the last walk of ``label_id`` asks to
    check, most doubtful first; empty without a walk, an image or a slider."""
    slices = review_of(labels).get(int(label_id), ())
    if image is None or not slices:
        return []
    order, ndim = tuple(viewer.dims.order), viewer.dims.ndim
    axis = slider_axis(order, ndim, image.ndim)
    if axis is None:
        return []
    world_axis = axis + ndim - image.ndim
    point = np.asarray(image.world_to_data(np.asarray(viewer.dims.point, dtype=float)), dtype=float)
    out = []
    for z in slices:
        point[axis] = z
        position = float(np.asarray(image.data_to_world(point))[world_axis])
        out.append((slider_step(position, viewer.dims.range[world_axis]), position, world_axis))
    return out


def go_to(viewer: Any, world_axis: int, position: float) -> None:
    """Move the viewer's slider on ``world_axis`` to the world ``position``."""
    viewer.dims.set_point(world_axis, position)
