"""The slices to check: under the objects table, one button per slice the last walk of the selected
object doubts most (``engine.review``), most doubtful first; a click goes to that slice."""

from __future__ import annotations

from functools import partial
from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from napari_medsam.layers.review import review_targets

#: Buttons shown at most; the rest are counted ("+3 more").
SHOWN = 6


class ReviewList:
    """``Check: [12] [15] [3]`` for the selected object of the labels picked (``native`` is its QWidget)."""

    def __init__(self, viewer: Any, image_picker: Any, labels_picker: Any) -> None:
        self._viewer, self._image, self._labels = viewer, image_picker, labels_picker
        self.native = QWidget()
        self.native.setToolTip(
            "The slices the last Propagate of the selected object is least sure of (its ends, low "
            "scores, jumps in area), most doubtful first: click one to go there"
        )
        self._layout = QHBoxLayout(self.native)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.title = QLabel("Check:")
        self._layout.addWidget(self.title)
        self.buttons: list[QPushButton] = []
        self.more = QLabel("")
        self._layout.addWidget(self.more)
        self._layout.addStretch(1)
        self.native.setVisible(False)

    def refresh(self) -> list[int]:
        """Show the selected object's slices to check; returns their slider positions."""
        labels, dims = self._labels.value, self._viewer.dims
        targets = [] if labels is None else review_targets(
            self._image.value, labels, int(labels.selected_label), dims.point, dims.order, dims.range
        )  # fmt: skip
        for button in self.buttons:
            self._layout.removeWidget(button)
            button.deleteLater()
        self.buttons = []
        for n, (step, position, world_axis) in enumerate(targets[:SHOWN]):
            button = QPushButton(str(step))
            button.setToolTip(f"Go to slice {step}")
            button.clicked.connect(partial(self._go_to, world_axis, position))
            self._layout.insertWidget(1 + n, button)
            self.buttons.append(button)
        self.more.setText(f"+{len(targets) - SHOWN} more" if len(targets) > SHOWN else "")
        self.native.setVisible(bool(targets))
        return [step for step, _, _ in targets]

    def _go_to(self, world_axis: int, position: float, *_: object) -> None:
        """Move the viewer's slider on ``world_axis`` to the world ``position``."""
        self._viewer.dims.set_point(world_axis, position)
