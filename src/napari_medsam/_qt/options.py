"""The widget's choices (models, devices, windows, scopes) and its public options as attributes."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

from napari_medsam.base.windows import PRESET_TITLES, WINDOW_PRESETS
from napari_medsam.engine.cache import DEFAULT_MAX_BYTES, embeddings_held
from napari_medsam.layers.prompt_layers import image_training_window

CUSTOM = "custom"
MODELS = [
    ("LiteMedSAM (fast)", "lite-medsam"),
    ("MedSAM ViT-B", "medsam"),
    ("SAM ViT-B", "sam-vit-base"),
    ("SAM ViT-L", "sam-vit-large"),
    ("SAM ViT-H", "sam-vit-huge"),
    ("Custom weights…", CUSTOM),
]
DEVICES = ["auto", "cpu", "cuda", "mps"]
AUTO_WINDOW = "auto (MedSAM training window)"
LAYER_WINDOW = "layer contrast limits"
#: The window menu: MedSAM's training window for the image (the default), the layer's contrast
#: limits, each slice's min..max, then the CT presets.
WINDOWS: dict[str, tuple[float, float] | None] = {
    AUTO_WINDOW: None,  # replaced by base.windows.training_window of the image
    LAYER_WINDOW: None,  # replaced by the image layer's contrast limits
    "slice min..max": None,
    **{PRESET_TITLES[name]: window for name, window in WINDOW_PRESETS.items()},
}
THIS_SLICE, ALL_SLICES = "this slice", "all slices"
TOGGLE_KEY = "t"
#: The most slices encoded in the background: what the default memory cache holds.
BACKGROUND_SLICES = embeddings_held(DEFAULT_MAX_BYTES)
#: How long closing waits for a running job to reach its next step, and for a slice being encoded.
JOIN_TIMEOUT_S = 60.0
CHOOSE_WEIGHTS = "Choose a weights file (.pth) or Hugging Face folder for 'Custom'."



def default_model() -> str:
    """MedSAM ViT-B when its weights are on this machine, else the bundled LiteMedSAM."""
    from napari_medsam.models.loading import default_source

    return default_source()


class Option:
    """A public option backed by one of the widget's value widgets, so GUI and scripts agree.

    Reading gives the widget's value; setting changes the widget (and fires its events), and
    raises ValueError for a value the widget does not offer.
    """

    def __init__(self, widget: str, doc: str, convert: Callable[[Any], Any] | None = None) -> None:
        self.widget, self.__doc__, self.convert = widget, doc, convert

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else attrgetter(self.widget)(obj).value

    def __set__(self, obj: Any, value: Any) -> None:
        widget = attrgetter(self.widget)(obj)
        value = self.convert(value) if self.convert is not None else value
        choices = getattr(widget, "choices", None)
        if choices is not None and value not in choices:
            shown = [getattr(c, "name", c) for c in choices]
            raise ValueError(f"{self.name} must be one of {shown}, got {value!r}")
        widget.value = value


class ModelOption:
    """The model: an alias of ``MODELS`` (``"lite-medsam"``, ``"sam-vit-base"``...) or a path.

    Setting a path (``.pth`` file or Hugging Face folder) picks "Custom weights…" with it;
    reading gives ``"custom"`` while no path is chosen.
    """

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if obj.controls.model.value != CUSTOM:
            return str(obj.controls.model.value)
        path = str(obj.controls.weights.value or "").strip()
        return CUSTOM if path in ("", ".") else path

    def __set__(self, obj: Any, value: str) -> None:
        value = str(value)
        if value not in [alias for _, alias in MODELS]:
            obj.controls.weights.value = value
            value = CUSTOM
        obj.controls.model.value = value


def layer_window(choice: str, image: Any) -> tuple[float, float] | None:
    """The (low, high) window the menu's ``choice`` gives for an Image layer (None: slice min..max)."""
    if image.rgb:
        return None
    if choice == AUTO_WINDOW:
        return image_training_window(image).window
    if choice == LAYER_WINDOW:
        low, high = (float(v) for v in image.contrast_limits)
        return low, high
    return WINDOWS[choice]
