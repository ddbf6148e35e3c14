"""The polarity of the next click: a checkbox, the clicks layer it sets the default of, and the key
that toggles it (bound with the widget's shortcuts)."""

from __future__ import annotations

from typing import Any

from napari_medsam.layers.prompt_layers import flip_selected_clicks, prepare_clicks_layer, set_click_default


class ClickPolarity:
    """Whether the next click is positive: a checkbox, and the clicks layer it sets the default of.

    :meth:`toggle` flips it, or the selected clicks in select mode (the widget binds it to a key).
    """

    def __init__(self, checkbox: Any) -> None:
        self._checkbox = checkbox
        self.layer: Any = None
        self._checkbox.changed.connect(self._on_checkbox)

    def set_layer(self, layer: Any | None) -> None:
        """Follow a new clicks layer (given the ``positive`` feature if it lacks it)."""
        self.layer = layer
        if layer is not None:
            prepare_clicks_layer(layer, bool(self._checkbox.value))

    def toggle(self) -> None:
        """Flip the selected clicks in select mode, else the polarity of the next click."""
        layer = self.layer
        if layer is not None and layer.mode == "select" and flip_selected_clicks(layer):
            return
        self._checkbox.value = not self._checkbox.value

    def _on_checkbox(self, positive: bool) -> None:
        if self.layer is not None:
            set_click_default(self.layer, bool(positive))
