"""Boxes on a key slice to a label volume: the one path ``segment`` and ``batch`` share.

``napari-medsam batch`` runs :func:`volume_labels` once per manifest row, so each row's object is
exactly what ``napari-medsam segment IMAGE --slice S --box ... --propagate`` gives for that row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from napari_medsam.base.slicing import check_axis, take_slice
from napari_medsam.engine.predictor import SlicePredictor
from napari_medsam.engine.propagation import label_volume


def key_predictions(
    predictor: SlicePredictor,
    plane: np.ndarray,
    window: Sequence[float] | None,
    boxes: Sequence[Sequence[float] | None],
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
) -> list[tuple[np.ndarray, float]]:
    """(mask, predicted IoU) per box on ``plane`` (a box of None: the clicks alone), clicks shared by all."""
    predictor.set_image(plane, window)
    out = []
    for box in boxes:
        prediction = predictor.predict(box=box, points=points, point_labels=point_labels)
        out.append((np.asarray(prediction.mask, dtype=bool), float(prediction.score)))
    return out


def volume_labels(
    predictor: SlicePredictor,
    volume: Any,
    key_slice: int,
    boxes: Sequence[Sequence[float] | None],
    window: Sequence[float] | None,
    *,
    propagate: bool,
    axis: int = 0,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    callback: Callable[[Any], Any] | None = None,
) -> np.ndarray:
    """Objects 1..N of a volume from their boxes on ``key_slice``, each propagated on its own
    (:func:`~napari_medsam.engine.propagation.label_volume`, with the key masks' predicted IoU, so
    the result equals ``propagate`` from the same box) or kept on the key slice alone. ``callback``
    gets every walk's steps (each object's walk starts with its key slice's step, ``done == 1``)."""
    shape = tuple(np.shape(volume))
    if len(shape) != 3:
        raise ValueError(f"expected a 3D volume, got shape {shape}")
    axis = check_axis(axis, 3)
    if not 0 <= key_slice < shape[axis]:
        raise ValueError(f"slice {key_slice} is outside the volume (0..{shape[axis] - 1} along axis {axis})")
    plane = take_slice(volume, key_slice, axis)
    masks, scores = zip(*key_predictions(predictor, plane, window, boxes, points, point_labels), strict=True)
    return label_volume(
        predictor, volume, key_slice, masks, propagate_objects=propagate, axis=axis, window=window,
        key_scores=scores, callback=callback,
    )  # fmt: skip
