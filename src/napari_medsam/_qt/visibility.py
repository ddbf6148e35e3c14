"""Showing and hiding single objects of a Labels layer (the objects table's check boxes).

napari has no per-label visibility (napari/napari#1516): the layer's own ``show_selected_label``
shows one label only. So a hidden object keeps its colour but with alpha 0, in a
``DirectLabelColormap`` made from the colours the layer showed (each object's own, the palette's
for those it cycles); showing every object again puts the layer's own colormap back. The writer
keeps a hidden object's colour (its RGB), and the table shows its swatch opaque.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np


class ObjectVisibility:
    """The hidden objects of each Labels layer, and the colormap each had before any was hidden."""

    def __init__(self) -> None:
        self._shown: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._hidden: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()

    def hidden(self, labels: Any) -> set[int]:
        """The label ids of ``labels`` hidden now."""
        return set(self._hidden.get(labels, ()))

    def set_visible(self, labels: Any, label_id: int, visible: bool, ids: Iterable[int]) -> None:
        """Show or hide object ``label_id``; ``ids`` are the objects the layer has (colours kept)."""
        hidden = self._hidden.setdefault(labels, set())
        (hidden.discard if visible else hidden.add)(int(label_id))
        self.apply(labels, ids)

    def apply(self, labels: Any, ids: Iterable[int]) -> None:
        """Put the hidden objects' colours at alpha 0 (a new object since: its colour from the layer's own
        colormap); none hidden: the layer's own colormap again."""
        from napari.utils.colormaps import DirectLabelColormap

        hidden = self._hidden.get(labels, set())
        if not hidden:
            if labels in self._shown:
                labels.colormap = self._shown.pop(labels)
            return
        shown = self._shown.setdefault(labels, labels.colormap)
        ids = sorted({int(i) for i in ids} | hidden)
        colors = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
        for label_id, rgba in zip(ids, shown.map(np.asarray(ids)), strict=True):
            colors[label_id] = (*rgba[:3], 0.0 if label_id in hidden else float(rgba[3]))
        labels.colormap = DirectLabelColormap(color_dict=colors)
