"""Where the slices a walk asks to check lie, Qt-free and viewer-free: their slider numbers and world
positions, from the viewer's position, dims order and slider ranges as the widget reads them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from napari_medsam.layers.edits import review_of
from napari_medsam.layers.prompts import slider_axis, slider_positions


def review_targets(
    image: Any,
    labels: Any,
    label_id: int,
    world_point: Sequence[float],
    dims_order: Sequence[int],
    dims_range: Sequence[Sequence[float]],
) -> list[tuple[int, float, int]]:
    """(slider position, world position, world axis) of each slice the last walk of ``label_id`` asks
    to check, most doubtful first; empty without a walk along the slider's axis, an image or a
    slider. ``world_point``, ``dims_order`` and ``dims_range`` are the viewer's (``dims.point``,
    ``dims.order``, ``dims.range``)."""
    if image is None:
        return []
    order, ndim = tuple(dims_order), len(dims_order)
    axis = slider_axis(order, ndim, image.ndim)
    slices = () if axis is None else review_of(labels, axis).get(int(label_id), ())
    if not slices:
        return []
    world_axis = axis + ndim - image.ndim
    positions = slider_positions(image, world_point, axis, slices, dims_range)
    return [(step, position, world_axis) for step, position in positions]
