"""The objects table: one row per object of the labels layer picked, names editable, Export CSV.

Columns: name, label id, voxels, volume (mL), slices (along the axis the slider moves) and mean
intensity of the raw image (HU on CT). It follows every change of the labels: Segment,
Propagate and Interpolate, painting and erasing (napari's ``paint`` event), a new array
(``data``), and undo or redo (a refresh without a move of the slice). Refreshing waits for a
short quiet time, so a paint stroke is counted once.

Each name has its object's colour beside it, and a check box that shows or hides the object
(``_qt.visibility``). Under the table, the slices the last walk of the selected object asks to
check (``_qt.review_list``). The highlighted row is the selected object, the
labels layer's ``selected_label`` (the label napari paints with): choosing a row selects it, and
selecting a label in the layer's controls highlights its row; the widget's actions read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_medsam._qt.review_list import ReviewList
from napari_medsam._qt.visibility import ObjectVisibility
from napari_medsam._qt.watchers import Debouncer
from napari_medsam.base.stats import ObjectStats
from napari_medsam.io.stats_files import write_stats
from napari_medsam.layers.objects import labels_stats, name_objects

HEADERS = ("name", "label", "voxels", "mL", "slices", "mean")
HEADER_TIPS = (
    "Object name: double-click to change it; the box shows or hides the object",
    "Label id in the labels layer",
    "Number of voxels",
    "Volume in mL, from the image's voxel size in mm",
    "Slices holding the object, along the axis the slider moves",
    "Mean intensity of the image inside the object (HU on CT)",
)
#: Quiet time (ms) after the last change of the labels before the table is computed again.
REFRESH_DELAY_MS = 200
_LABEL_EVENTS = ("paint", "data", "features")


class ObjectTable:
    """The table of the objects of the labels picked, over the image picked (``native`` is its QWidget)."""

    def __init__(
        self,
        viewer: Any,
        image_picker: Any,
        labels_picker: Any,
        on_selected: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_selected`` is called when the selected object changes (or its name)."""
        self._viewer, self._image, self._labels = viewer, image_picker, labels_picker
        self._on_selected = on_selected
        self.native = QWidget()
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(HEADERS)
        for column, tip in enumerate(HEADER_TIPS):
            self.table.horizontalHeaderItem(column).setToolTip(tip)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setToolTip("Double-click a name to change it; a row picks its label for painting")
        self.export_button = QPushButton("Export CSV")
        layout = QVBoxLayout(self.native)
        layout.setContentsMargins(0, 0, 0, 0)
        self.review = ReviewList(viewer, image_picker, labels_picker)
        layout.addWidget(self.table)
        layout.addWidget(self.review.native)
        layout.addWidget(self.export_button)
        #: What the table shows, one entry per row.
        self.stats: list[ObjectStats] = []
        #: The objects hidden (the name's check box unticked).
        self.visibility = ObjectVisibility()
        self._followed: Any = None
        self._point: tuple[float, ...] = ()
        self._later = Debouncer(self.native, REFRESH_DELAY_MS, self.refresh)
        self.table.itemChanged.connect(self._on_edit)
        self.table.itemSelectionChanged.connect(self._on_select)
        self.export_button.clicked.connect(lambda: self.export_csv())
        self._sources = [
            (labels_picker.changed, self._on_labels_picked),
            (image_picker.changed, self.schedule),
            (viewer.dims.events.order, self.schedule),
        ]
        for emitter, callback in self._sources:
            emitter.connect(callback)
        self._on_labels_picked(labels_picker.value)

    def schedule(self, *_: object) -> None:
        """Compute the table again after the quiet time."""
        self._later.trigger()

    def refresh(self) -> list[ObjectStats]:
        """Compute the statistics now, show and return them; unnamed objects get their "object N" row."""
        labels, stats = self._labels.value, []
        if labels is not None:
            stats = labels_stats(labels, self._image.value, self._viewer.dims.order, self._viewer.dims.ndim)
            name_objects(labels, ids=[s.label for s in stats])
            self.visibility.apply(labels, [s.label for s in stats])  # a new object keeps its colour
        self._show(stats)
        return self.stats

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the table (columns ``label,name,voxels,volume_ml,slices,mean_intensity``) to ``path``.

        Without a path, asks for one; returns the path written (None when cancelled).
        """
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self.native, "Export statistics", "objects.csv", "*.csv")
            if not path:
                return None
        self.refresh()
        return write_stats(path, self.stats)

    def close(self) -> None:
        """Stop following the viewer and the layers (the widget closed)."""
        self._later.cancel()
        self._follow(None)
        for emitter, callback in self._sources:
            emitter.disconnect(callback)

    def set_visible(self, label_id: int, visible: bool) -> None:
        """Show or hide one object of the labels picked, as its check box does."""
        labels = self._labels.value
        if labels is not None:
            self.visibility.set_visible(labels, label_id, visible, [s.label for s in self.stats])
            self._show(self.stats)

    def _show(self, stats: Sequence[ObjectStats]) -> None:
        self.stats, labels = list(stats), self._labels.value
        hidden = set() if labels is None else self.visibility.hidden(labels)
        blocked = self.table.blockSignals(True)
        try:
            self.table.setRowCount(len(self.stats))
            for row, s in enumerate(self.stats):
                mean = "" if s.mean_intensity is None else f"{s.mean_intensity:.1f}"
                volume = "" if s.volume_ml is None else f"{s.volume_ml:.2f}"
                for column, text in enumerate((s.name, s.label, s.voxels, volume, s.slices, mean)):
                    item = QTableWidgetItem(str(text))
                    if column:
                        item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    self.table.setItem(row, column, item)
                name = self.table.item(row, 0)
                name.setFlags(name.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                name.setCheckState(Qt.CheckState.Unchecked if s.label in hidden else Qt.CheckState.Checked)
                color = None if labels is None else labels.get_color(s.label)
                if color is not None:  # opaque: a hidden object's colour too
                    name.setData(Qt.ItemDataRole.DecorationRole, QColor.fromRgbF(*color[:3], 1.0))
        finally:
            self.table.blockSignals(blocked)
        self._show_selected()

    def _show_selected(self, *_: object) -> None:
        """Highlight the row of the labels' ``selected_label`` (none when it names no object)."""
        labels = self._labels.value
        selected = None if labels is None else int(labels.selected_label)
        rows = [row for row, s in enumerate(self.stats) if s.label == selected]
        blocked = self.table.blockSignals(True)
        try:
            self.table.clearSelection()
            if rows:
                self.table.selectRow(rows[0])
        finally:
            self.table.blockSignals(blocked)
        self.review.refresh()
        self._on_selected()

    def _on_labels_picked(self, labels: Any) -> None:
        self._follow(labels)
        self.schedule()

    def _follow(self, labels: Any) -> None:
        if self._followed is not None:
            for name in _LABEL_EVENTS:
                getattr(self._followed.events, name).disconnect(self.schedule)
            self._followed.events.set_data.disconnect(self._on_set_data)
            self._followed.events.selected_label.disconnect(self._show_selected)
        self._followed = labels
        if labels is not None:
            for name in _LABEL_EVENTS:
                getattr(labels.events, name).connect(self.schedule)
            labels.events.set_data.connect(self._on_set_data)
            labels.events.selected_label.connect(self._show_selected)

    def _on_set_data(self, *_: object) -> None:
        """A refresh of the labels: undo or redo when the slice stayed, else only a move."""
        point = tuple(self._viewer.dims.point)
        if point == self._point:
            self.schedule()
        self._point = point

    def _on_edit(self, item: QTableWidgetItem) -> None:
        labels = self._labels.value
        if item.column() != 0 or labels is None or item.row() >= len(self.stats):
            return
        label_id = self.stats[item.row()].label
        visible = item.checkState() == Qt.CheckState.Checked
        if visible == (label_id in self.visibility.hidden(labels)):  # the check box was clicked
            self.set_visible(label_id, visible)
            return
        name_objects(labels, {label_id: item.text()})
        self._on_selected()

    def _on_select(self) -> None:
        rows = {index.row() for index in self.table.selectedIndexes()}
        labels = self._labels.value
        if len(rows) == 1 and labels is not None and (row := rows.pop()) < len(self.stats):
            labels.selected_label = self.stats[row].label
