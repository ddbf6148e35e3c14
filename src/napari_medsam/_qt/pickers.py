"""The layer pickers: which image is segmented, and which boxes, clicks and labels layers go with it.

At open and whenever layers are added, a picker left to itself takes the image's own layer
(``<image> boxes``, ``<image> clicks``, ``<image> MedSAM``), else the only layer of its kind that
fits the image (:func:`~napari_medsam.layers.prompt_layers.fits_image`; a layer it picked that
still fits stays when another one comes). A choice the user (or a script) made is never
overridden, and a layer named after another image is never taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import napari.layers
from magicgui.widgets import ComboBox

from napari_medsam._qt.new_layers import LAYER_SUFFIXES, add_boxes_layer, add_clicks_layer, add_labels_layer
from napari_medsam.layers.prompt_layers import fits_image
from napari_medsam.layers.prompts import spatial_shape

KINDS: dict[str, type] = {
    "boxes": napari.layers.Shapes,
    "clicks": napari.layers.Points,
    "labels": napari.layers.Labels,
}


class LayerPickers:
    """An image picker and its three companion pickers, following the viewer's layer list."""

    def __init__(self, viewer: Any) -> None:
        self._viewer = viewer

        def layers_of(kind: type) -> Callable[[Any], list[tuple[str, Any]]]:
            return lambda _: [(ly.name, ly) for ly in self._viewer.layers if isinstance(ly, kind)]

        self.image = ComboBox(label="image", choices=layers_of(napari.layers.Image))
        self.companions = {
            "boxes": ComboBox(label="boxes", choices=layers_of(KINDS["boxes"]), nullable=True),
            "clicks": ComboBox(label="clicks", choices=layers_of(KINDS["clicks"]), nullable=True),
            "labels": ComboBox(
                label="labels", choices=layers_of(KINDS["labels"]), nullable=True,
                tooltip="Output Labels layer; empty: a new one is created on the first Segment",
            ),
        }  # fmt: skip
        #: Pickers whose value the user (or a script) chose; auto-picking leaves them alone.
        self.chosen: set[str] = set()
        self._picking = False
        for kind, picker in self.companions.items():
            picker.changed.connect(lambda value, kind=kind: self._on_user_choice(kind, value))
        self.image.changed.connect(self._on_image_changed)

    @property
    def widgets(self) -> list[ComboBox]:
        """The pickers, image first, as the widget shows them."""
        return [self.image, *self.companions.values()]

    def set(self, kind: str, layer: Any) -> None:
        """Pick ``layer`` as ``kind`` for the program (not a user choice): used for layers it creates."""
        self._picking = True
        try:
            self.companions[kind].value = layer
        finally:
            self._picking = False

    def refresh(self) -> None:
        """Re-read the layer list, then fill the pickers left to themselves.

        A chosen layer that left the viewer is no choice any more: that picker is left to itself.
        """
        self.chosen -= {k for k, p in self.companions.items() if p.value not in (None, *self._viewer.layers)}
        self._picking = True
        try:
            self.image.reset_choices()
            for picker in self.companions.values():
                picker.reset_choices()
        finally:
            self._picking = False
        self.auto_pick()

    def auto_pick(self) -> None:
        """Give each picker the user has not chosen the image's own layer of its kind, if any."""
        image = self.image.value
        for kind, picker in self.companions.items():
            if kind in self.chosen:
                continue
            layer = None if image is None else self.companion_of(image, kind, picker.value)
            if picker.value is not layer and (layer is not None or picker.value is not None):
                self.set(kind, layer)

    def companion_of(self, image: Any, kind: str, current: Any | None = None) -> Any | None:
        """The ``kind`` layer that belongs to ``image``: its own by name, else the one that fits.

        Of several layers that fit, ``current`` (the one picked now) stays; else none is taken.
        """
        layers = [ly for ly in self._viewer.layers if isinstance(ly, KINDS[kind])]
        own = [ly for ly in layers if ly.name == f"{image.name} {LAYER_SUFFIXES[kind]}"]
        if own:
            return own[0]
        others = {ly.name for ly in self._viewer.layers if isinstance(ly, napari.layers.Image)} - {image.name}
        foreign = {f"{name} {LAYER_SUFFIXES[kind]}" for name in others}
        fitting = [ly for ly in layers if ly.name not in foreign and fits_image(ly, image)]
        if current in fitting:
            return current
        return fitting[0] if len(fitting) == 1 else None

    def add_prompt_layers(self, image: Any, positive: bool) -> tuple[Any, Any]:
        """Add ``<image> boxes`` (in rectangle mode) and ``<image> clicks`` and pick them."""
        boxes = add_boxes_layer(self._viewer, image)
        clicks = add_clicks_layer(self._viewer, image, positive=positive)
        self.refresh()
        self.set("boxes", boxes)
        self.set("clicks", clicks)
        self._viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"
        return boxes, clicks

    def add_labels_layer(self, image: Any) -> Any:
        """Add an empty ``<image> MedSAM`` Labels layer and pick it."""
        labels = add_labels_layer(self._viewer, image, spatial_shape(image))
        self.refresh()
        self.set("labels", labels)
        return labels

    def _on_user_choice(self, kind: str, value: Any) -> None:
        if not self._picking:
            self.chosen.add(kind)

    def _on_image_changed(self, *_: object) -> None:
        if not self._picking:
            self.chosen.clear()  # a new image: its own layers, unless the user picks again
        self.auto_pick()
