"""The widget's new layers in the viewer: ``<image> boxes``, ``<image> clicks`` and ``<image> MedSAM``,
placed in the world as their image is."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_medsam.base.objects import NAME, palette_cycle
from napari_medsam.layers.prompt_layers import LABEL_ID, POSITIVE, POSITIVE_COLORS
from napari_medsam.layers.prompts import spatial_shape

#: What the widget's layers are called after their image: ``"<image> boxes"`` and so on.
LAYER_SUFFIXES = {"boxes": "boxes", "clicks": "clicks", "labels": "MedSAM"}


def image_transforms(image: Any) -> dict[str, Any]:
    """Keyword arguments that give a new layer the image's placement in the world."""
    return {
        "scale": image.scale,
        "translate": image.translate,
        "rotate": image.rotate,
        "shear": image.shear,
        "affine": image.affine,
        "units": image.units,
    }


def add_boxes_layer(viewer: Any, image: Any) -> Any:
    """A Shapes layer for box prompts, each box with its ``label_id`` feature shown as text.

    A box's ``name`` feature, when set, names its object.
    """
    size = min(spatial_shape(image)[-2:])
    return viewer.add_shapes(
        ndim=image.ndim,
        name=f"{image.name} {LAYER_SUFFIXES['boxes']}",
        features={LABEL_ID: np.zeros(0, dtype=int), NAME: np.zeros(0, dtype=object)},
        feature_defaults={LABEL_ID: 0, NAME: ""},
        edge_color="yellow",
        face_color="transparent",
        edge_width=max(1.0, size / 256),
        text={"string": "{label_id}", "color": "white", "anchor": "upper_left", "size": 14},
        **image_transforms(image),
    )


def add_clicks_layer(viewer: Any, image: Any, positive: bool = True) -> Any:
    """A Points layer for click prompts, coloured by their ``positive`` feature."""
    size = min(spatial_shape(image)[-2:])
    return viewer.add_points(
        np.zeros((0, image.ndim)),
        name=f"{image.name} {LAYER_SUFFIXES['clicks']}",
        features={POSITIVE: np.zeros(0, dtype=bool), LABEL_ID: np.zeros(0, dtype=int)},
        feature_defaults={POSITIVE: positive, LABEL_ID: 0},
        face_color=POSITIVE,
        face_color_cycle=POSITIVE_COLORS,
        border_color="black",
        size=max(3.0, size / 40),
        **image_transforms(image),
    )


def add_labels_layer(viewer: Any, image: Any, shape: tuple[int, ...]) -> Any:
    """An empty uint16 Labels layer over the image, in the palette's colours, with its metadata.

    The image's ``metadata`` (its file geometry, DICOM files) goes with the labels, so that
    they are saved onto the image's grid and series.
    """
    return viewer.add_labels(
        np.zeros(shape, dtype=np.uint16),
        name=f"{image.name} {LAYER_SUFFIXES['labels']}",
        colormap=palette_cycle(),
        metadata=dict(image.metadata),
        **image_transforms(image),
    )
