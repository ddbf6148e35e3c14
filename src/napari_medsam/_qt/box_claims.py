"""Which boxes are segmented, as drawn then; a box is freed again when its run is undone.

Segment runs only the boxes that are new (``label_id`` 0), moved or resized since their run, run
with other settings (model, window, overwrite), or whose object is not on their slice any more
(:func:`~napari_medsam.layers.segment.pending_rows`); a box segmented and left alone is not run
again (its object may have been painted on since). A run that segments boxes (Segment, Correct,
Interpolate) is recorded here with the boxes' vertices and ids, its settings, and the history
item it wrote (the last :data:`RUNS` runs, as many as napari's Labels undo keeps). napari's undo
has no event of its own, but it puts the run's voxels back: when the labels change, a run whose
voxels all hold their old values again (checked on a sample first, then on every voxel) is
undone, and its boxes get back the ``label_id`` they had before it (a corrected box is new
again); redo claims them again. Rows follow the boxes layer when boxes are deleted.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
from napari.layers.base import ActionType

from napari_medsam.layers.prompt_layers import feature_ids, store_ids

T = TypeVar("T")
#: How many changed voxels of a run are checked first to tell whether it was undone.
SAMPLE = 64
#: How many runs are kept per labels layer: napari's Labels undo history keeps 100 steps.
RUNS = 100


@dataclass
class _Run:
    """One run's boxes (row -> (id before, id after), row -> vertices) and the history it wrote."""

    boxes: Any
    ids: dict[int, tuple[int, int]]
    vertices: dict[int, np.ndarray]
    settings: Any
    atoms: list[tuple[Any, np.ndarray, np.ndarray]]
    undone: bool = False

    def holds(self, data: Any, old: bool) -> bool:
        """Whether every voxel the run changed holds its value from before it (``old``) or after it."""
        for sample in (SAMPLE, None):  # a sample first: most checks end there
            for indices, before, after in self.atoms:
                where = tuple(np.asarray(i)[:sample] for i in indices)
                values = (before if old else after)[:sample]
                if not np.array_equal(np.asarray(data[where]), values):
                    return False
        return True


def _atoms(item: Sequence[Any]) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    """The (indices, values before, values after) of each change in a Labels history item."""
    atoms = []
    for atom in item:
        if isinstance(atom, tuple) and len(atom) == 3:
            indices, before, after = atom
            before = np.asarray(before)
            atoms.append((indices, before, np.broadcast_to(np.asarray(after), before.shape)))
    return atoms


class BoxClaims:
    """The runs that gave boxes their ids, per labels layer; frees their boxes when they are undone."""

    def __init__(self) -> None:
        self._runs: weakref.WeakKeyDictionary[Any, list[_Run]] = weakref.WeakKeyDictionary()
        self._followed: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()

    def record(
        self, labels: Any, request: Any, rows: Iterable[int], ids_before: np.ndarray, item: Sequence[Any]
    ) -> None:
        """After a run (its ``request``: ``inputs.boxes``, ``settings``) segmented box ``rows`` and wrote
        history ``item`` into ``labels`` (``ids_before``: the boxes' ``label_id`` before it): those
        boxes are claimed by it, as they are drawn now."""
        boxes = request.inputs.boxes
        ids_after = feature_ids(boxes)
        rows = [r for r in rows if r < len(ids_after)]
        if boxes is None or not rows or not (atoms := _atoms(item)):
            return
        ids = {r: (int(ids_before[r]) if r < len(ids_before) else 0, int(ids_after[r])) for r in rows}
        vertices = {r: np.array(boxes.data[r], copy=True) for r in rows}
        runs = self._runs.setdefault(labels, [])
        runs[:] = [r for r in runs if not r.undone][-RUNS + 1 :]  # a new write ends napari's redo
        runs.append(_Run(boxes, ids, vertices, request.settings, atoms))
        self._follow(labels, boxes)

    def written(self, labels: Any, request: Any, rows: Iterable[int], write: Callable[[], T]) -> T:
        """``write()`` the result of a run (its ``request``) into ``labels`` (one undo step); the boxes
        of ``rows`` are then claimed by it (:meth:`record`). Returns what ``write`` returns."""
        ids_before, items = feature_ids(request.inputs.boxes), []

        def keep(event: Any) -> None:
            items.append(event.value)

        labels.events.paint.connect(keep)
        try:
            result = write()
        finally:
            labels.events.paint.disconnect(keep)
        if items:
            self.record(labels, request, rows, ids_before, items[-1])
        return result

    def stale(self, boxes: Any, settings: Any, row: int) -> bool:
        """Whether box ``row`` was moved or resized since the run that claimed it, or that run had
        other ``settings`` (False: no such run)."""
        for runs in self._runs.values():
            for run in reversed(runs):
                if run.boxes is boxes and not run.undone and row in run.vertices:
                    drawn, then = np.asarray(boxes.data[row]), run.vertices[row]
                    moved = drawn.shape != then.shape or not np.allclose(drawn, then)
                    return moved or run.settings != settings
        return False

    def check(self, labels: Any) -> None:
        """The labels changed: free the boxes of runs undone since, claim those of runs redone.

        napari's history is a line: runs are undone newest first and redone oldest first, so only
        the newest run not undone can be undone, and only the oldest undone one redone (a run
        cleared by an older one's undo is not taken for redone).
        """
        runs = self._runs.get(labels, [])
        for run in reversed([r for r in runs if not r.undone]):
            if not run.holds(labels.data, old=True):
                break
            run.undone = True
            self._give_ids(run, old=True)
        for run in [r for r in runs if r.undone]:
            if not run.holds(labels.data, old=False):
                break
            run.undone = False
            self._give_ids(run, old=False)

    @staticmethod
    def _give_ids(run: _Run, old: bool) -> None:
        """Give ``run``'s boxes the ids they had before it (``old``) or after it."""
        ids = {r: before if old else after for r, (before, after) in run.ids.items()}
        store_ids(run.boxes, {r: i for r, i in ids.items() if r < len(run.boxes.data)})

    def close(self) -> None:
        """Stop following the layers (the widget closed)."""
        for emitter, callback in list(self._followed.values()):
            emitter.disconnect(callback)
        self._followed.clear()

    def _follow(self, labels: Any, boxes: Any) -> None:
        for layer, emitter, on_event in ((labels, labels.events.set_data, self._on_labels),
                                         (boxes, boxes.events.data, self._on_boxes)):  # fmt: skip
            if layer not in self._followed:
                self._followed[layer] = emitter, partial(on_event, weakref.ref(layer))
                emitter.connect(self._followed[layer][1])

    def _on_labels(self, labels: weakref.ref, *_: object) -> None:
        if (layer := labels()) is not None:
            self.check(layer)

    def _on_boxes(self, layer: weakref.ref, event: Any) -> None:
        """Boxes deleted: the rows after them move up."""
        boxes = layer()
        if boxes is None or getattr(event, "action", None) != ActionType.REMOVED:
            return
        removed = sorted(int(i) for i in getattr(event, "data_indices", ()))
        for runs in self._runs.values():
            for run in runs:
                if run.boxes is boxes:
                    run.ids = _shifted(run.ids, removed)
                    run.vertices = _shifted(run.vertices, removed)


def _shifted(by_row: Mapping[int, Any], removed: Sequence[int]) -> dict[int, Any]:
    """``by_row`` without the rows ``removed``, the rows after them moved up."""
    gone = set(removed)
    return {row - int(np.searchsorted(removed, row)): v for row, v in by_row.items() if row not in gone}
