"""The widget's controls: option widgets, action buttons, progress bar and status line (magicgui)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from qtpy.QtWidgets import QComboBox, QSizePolicy

from napari_medsam._qt.captions import END_PLAIN
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
from napari_medsam.base.label_policy import AFTER, BEFORE
from napari_medsam.layers.requests import PROPAGATE_SCOPES, SELECTED_OBJECT
from napari_medsam.layers.volume import CORRECT, INTERPOLATE, PROPAGATE
from napari_medsam.models import BACKENDS

#: The fewest characters a layer picker or option box asks room for (longer names are cut).
COMBO_CHARACTERS = 12


class StatusLine(Label):
    """The status line: long messages wrap instead of widening the dock; the full text is its tooltip."""

    def __init__(self) -> None:
        super().__init__(value="")
        self.native.setWordWrap(True)
        self.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    @property
    def value(self) -> str:
        return str(Label.value.fget(self))

    @value.setter
    def value(self, text: Any) -> None:
        Label.value.fset(self, text)
        self.tooltip = str(text)


def keep_narrow(widget: Any) -> None:
    """Stop the combo boxes under a Qt ``widget`` from widening it to fit their longest entry."""
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(COMBO_CHARACTERS)


def keep_width(button: PushButton, texts: Iterable[str]) -> None:
    """Make ``button`` as wide as the widest of ``texts`` needs, whatever it shows: a new text
    (a longer object name, other words) never widens the dock."""
    native, shown = button.native, button.native.text()
    widths = []
    for text in texts:
        native.setText(text)
        widths.append(native.sizeHint().width())
    native.setText(shown)
    native.setMinimumWidth(max(widths))
    native.setSizePolicy(QSizePolicy.Policy.Ignored, native.sizePolicy().verticalPolicy())


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
        self.propagate_scope = ComboBox(label="propagate", choices=PROPAGATE_SCOPES, value=SELECTED_OBJECT)
        self.overwrite = CheckBox(value=False, text="overwrite other labels")
        self.prefetch = CheckBox(value=True, text="encode every slice in the background")
        #: What runs in the background (the model loading, slices encoded), under the status line.
        self.encoding_status = StatusLine()
        self.store = StoreSetting()
        self.segment_button = PushButton(text="Segment")
        self.propagate_button = PushButton(text=PROPAGATE)
        self.interpolate_button = PushButton(text=INTERPOLATE)
        self.cancel_button = PushButton(text="Cancel")
        self.correct_button = PushButton(text=CORRECT)
        self.end_before_button = PushButton(text=END_PLAIN[BEFORE])
        self.end_after_button = PushButton(text=END_PLAIN[AFTER])
        #: Buttons that start a job: disabled while one runs or the inputs are incomplete.
        buttons = [self.segment_button, self.propagate_button, self.interpolate_button]
        self.run_buttons = [*buttons, self.correct_button]
        #: The row of action buttons; another action can be inserted before Cancel.
        buttons.append(self.cancel_button)
        self.actions = Container(widgets=buttons, layout="horizontal", labels=False)
        self.actions.margins = (0, 0, 0, 0)
        #: The row of edits of the selected object: Correct, and end it at this slice either way.
        edits = [self.correct_button, self.end_before_button, self.end_after_button]
        self.edits = Container(widgets=edits, layout="horizontal", labels=False)
        self.edits.margins = (0, 0, 0, 0)
        self.progress_bar = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status_label = StatusLine()
        #: Everything below the layer pickers, in order.
        self.widgets = [
            self.new_layers, self.positive, self.auto, self.model, self.weights, self.device, self.backend,
            self.window, self.scope, self.propagate_scope, self.overwrite, self.prefetch,
            self.store.edit, self.actions, self.edits, self.progress_bar, self.status_label,
            self.encoding_status,
        ]  # fmt: skip
