"""The widget's controls: option widgets, action buttons, progress bar and status line (magicgui)."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton

from napari_medsam._qt.options import (
    ALL_SLICES,
    AUTO_WINDOW,
    DEVICES,
    MODELS,
    THIS_SLICE,
    TOGGLE_KEY,
    WINDOWS,
)
from napari_medsam._qt.store_setting import StoreSetting
from napari_medsam.layers.volume import INTERPOLATE, PROPAGATE
from napari_medsam.models import BACKENDS


class Controls:
    """Every value widget and button of the dock widget, built once; the widget connects them."""

    def __init__(self, model: str) -> None:
        self.new_layers = PushButton(text="New box + click layers")
        self.positive = CheckBox(value=True, text=f"next click positive ({TOGGLE_KEY.upper()})")
        self.auto = CheckBox(value=False, text="auto-segment each box / click drawn")
        self.model = ComboBox(label="model", choices=MODELS, value=model)
        self.weights = FileEdit(label="weights", mode="r", visible=False)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.backend = ComboBox(label="encoder", choices=list(BACKENDS), value="auto")
        self.window = ComboBox(label="window", choices=list(WINDOWS), value=AUTO_WINDOW)
        self.scope = ComboBox(label="segment", choices=[THIS_SLICE, ALL_SLICES], value=THIS_SLICE)
        self.overwrite = CheckBox(value=False, text="overwrite other labels")
        self.prefetch = CheckBox(value=True, text="encode every slice in the background")
        self.encoding_status = Label(value="")
        self.store = StoreSetting()
        self.segment_button = PushButton(text="Segment")
        self.propagate_button = PushButton(text=PROPAGATE)
        self.interpolate_button = PushButton(text=INTERPOLATE)
        self.cancel_button = PushButton(text="Cancel")
        #: Buttons that start a job: disabled while one runs or the inputs are incomplete.
        self.run_buttons = [self.segment_button, self.propagate_button, self.interpolate_button]
        #: The row of action buttons; another action can be inserted before Cancel.
        buttons = [*self.run_buttons, self.cancel_button]
        self.actions = Container(widgets=buttons, layout="horizontal", labels=False)
        self.actions.margins = (0, 0, 0, 0)
        self.progress_bar = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status_label = Label(value="")
        #: Everything below the layer pickers, in order.
        self.widgets = [
            self.new_layers, self.positive, self.auto, self.model, self.weights, self.device, self.backend,
            self.window, self.scope, self.overwrite, self.prefetch, self.encoding_status, self.store.edit,
            self.actions, self.progress_bar, self.status_label,
        ]  # fmt: skip
