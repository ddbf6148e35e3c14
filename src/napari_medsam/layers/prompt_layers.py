"""The prompt layers' features, read and written without a viewer: click polarity (``positive``),
the ``label_id`` written for each prompt, whether a layer fits an image, an image's training window.

The widget creates the layers in the viewer (:mod:`napari_medsam._qt.new_layers`) and binds the
polarity key (:mod:`napari_medsam._qt.click_polarity`).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from napari_medsam.base.windows import WindowChoice, training_window
from napari_medsam.io.volumes import GEOMETRY_KEY
from napari_medsam.layers.prompts import spatial_shape

#: Boolean feature of the clicks layer: True = foreground (positive) click.
POSITIVE = "positive"
#: Integer feature of the boxes (and clicks) layer: the label id written for the object (0 = new).
LABEL_ID = "label_id"
POSITIVE_COLORS = {True: "lime", False: "magenta"}


def prepare_clicks_layer(layer: Any, positive: bool) -> None:
    """Give any Points layer the ``positive`` feature (existing points: positive) and colours."""
    if POSITIVE in layer.features:
        set_click_default(layer, positive)
        return
    features = layer.features.copy()
    features[POSITIVE] = np.ones(len(layer.data), dtype=bool)
    defaults = layer.feature_defaults.copy()
    defaults[POSITIVE] = positive
    layer.features = features
    layer.feature_defaults = defaults
    layer.face_color_cycle = POSITIVE_COLORS
    layer.face_color = POSITIVE


def set_click_default(layer: Any, positive: bool) -> None:
    """Polarity of the next click added to ``layer``."""
    defaults = layer.feature_defaults.copy()
    defaults[POSITIVE] = positive
    layer.feature_defaults = defaults


def flip_selected_clicks(layer: Any) -> int:
    """Flip the polarity of the selected points; returns how many were flipped."""
    selected = sorted(layer.selected_data)
    if not selected or POSITIVE not in layer.features:
        return 0
    features = layer.features.copy()
    values = np.asarray(features[POSITIVE], dtype=bool).copy()
    values[selected] = ~values[selected]
    features[POSITIVE] = values
    set_features(layer, features)
    layer.refresh_colors(update_color_mapping=False)
    return len(selected)


def feature_ids(layer: Any | None) -> np.ndarray:
    """The ``label_id`` feature of a layer as ints (zeros when it has none)."""
    if layer is None:
        return np.zeros(0, dtype=np.int64)
    if LABEL_ID not in layer.features:
        return np.zeros(len(layer.data), dtype=np.int64)
    values = np.asarray(layer.features[LABEL_ID], dtype=float)
    return np.nan_to_num(values, nan=0.0).astype(np.int64)


def store_ids(layer: Any, ids_by_row: dict[int, int]) -> None:
    """Write label ids into rows of the layer's ``label_id`` feature (creating it if needed)."""
    if not ids_by_row:
        return
    ids = feature_ids(layer)
    for row, label_id in ids_by_row.items():
        if row < len(ids):
            ids[row] = label_id
    features = layer.features.copy()
    features[LABEL_ID] = ids
    set_features(layer, features)


def set_features(layer: Any, features: Any) -> None:
    """Replace a layer's features but keep its defaults (what the next shape or point gets).

    napari resets the defaults to the last row's values; a new box would then inherit the last
    box's label id, and a new click the last click's polarity. ``label_id`` defaults to 0.
    """
    kept = {name: layer.feature_defaults[name].iloc[0] for name in layer.feature_defaults}
    layer.features = features
    defaults = layer.feature_defaults.copy()
    for name in defaults:
        if name in kept:
            defaults[name] = kept[name]
        elif name == LABEL_ID:
            defaults[name] = 0
    layer.feature_defaults = defaults


def fits_image(layer: Any, image: Any) -> bool:
    """Whether ``layer`` could belong to ``image``: its dimensions, and its data in the image.

    A Labels layer must have the image's spatial shape and transform. A Shapes or Points layer
    (whose own extent is only the bounding box of its data) must have the image's number of
    dimensions, or two over a 3D or higher image (what ``viewer.add_shapes([rectangle])`` makes
    in a script: napari draws it on every slice, and it prompts the slice on screen), and every
    vertex inside the image's world extent (on the last two world axes, for a 2D layer); an
    empty one fits.
    """
    from napari.layers import Labels

    if isinstance(layer, Labels):
        if layer.ndim != image.ndim:
            return False
        corners = np.vstack([np.zeros(image.ndim), np.eye(image.ndim)])  # where the grid's axes go
        same_transform = all(np.allclose(layer.data_to_world(c), image.data_to_world(c)) for c in corners)
        return tuple(layer.data.shape) == spatial_shape(image) and same_transform
    if layer.ndim != image.ndim and not layer.ndim == 2 < image.ndim:
        return False
    vertices = layer.data if isinstance(layer.data, np.ndarray) else [np.asarray(v) for v in layer.data]
    points = (
        np.concatenate([np.atleast_2d(v) for v in vertices]) if len(vertices) else np.zeros((0, layer.ndim))
    )
    if len(points) == 0:
        return True
    shape = np.asarray(spatial_shape(image))
    centre = np.asarray(image.data_to_world((shape - 1) / 2), dtype=float)  # the axes a 2D layer lacks
    world = np.array([np.concatenate([centre[: -layer.ndim], layer.data_to_world(p)]) for p in points])
    inside = np.array([image.world_to_data(w) for w in world])
    return bool(((inside >= -0.5) & (inside <= shape - 0.5)).all())


_TRAINING_WINDOWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def image_training_window(image: Any) -> WindowChoice:
    """MedSAM's training window for an Image layer's data (its modality from the layer metadata).

    Computed once per layer and data array (the percentiles of an MR volume take a moment).
    """
    data = image.data[0] if image.multiscale else image.data
    cached = _TRAINING_WINDOWS.get(image)
    if cached is not None and cached[0] is data:
        return cached[1]
    metadata = image.metadata or {}
    modality = metadata.get("modality") or (metadata.get(GEOMETRY_KEY) or {}).get("modality")
    choice = training_window(np.asarray(data), modality, rgb=bool(image.rgb))
    _TRAINING_WINDOWS[image] = (data, choice)
    return choice
