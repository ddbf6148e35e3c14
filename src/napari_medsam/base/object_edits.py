"""What a user vouched for about one object of a volume: its anchor slices and its ends.

An **anchor** is a slice whose mask the user made or corrected (the key slice of a walk, each
slice boxed with Correct): a walk takes it as it is (a fixed point) and learns the object's look
from it. An **end** is where End here cut the object: a walk never puts it past that slice. Both
are array indices along the walk's axis. Kept per object by the widget (in the Labels layer's
``metadata``, :data:`EDITS_KEY`) and in label files (``io.label_names``, ``io.seg_nrrd``), so a
later session or CLI run walks the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from napari_medsam.base.label_policy import AFTER, BEFORE

#: Key of a Labels layer's ``metadata`` that keeps its objects' edits and the axis they count along.
EDITS_KEY = "edits"


@dataclass(frozen=True)
class ObjectEdits:
    """Anchor slices and ends of one object (``first``/``last`` None: no end there)."""

    anchors: frozenset[int] = frozenset()
    first: int | None = None
    last: int | None = None

    def anchored(self, z: int) -> ObjectEdits:
        """These edits with slice ``z`` an anchor (an end is moved to take it in)."""
        first = None if self.first is None else min(self.first, int(z))
        last = None if self.last is None else max(self.last, int(z))
        return replace(self, anchors=self.anchors | {int(z)}, first=first, last=last)

    def ended(self, z: int, side: str) -> ObjectEdits:
        """These edits with the object ended at slice ``z`` (nothing of it ``side`` of ``z``); anchors
        past the end are dropped."""
        z = int(z)
        if side == BEFORE:
            return replace(self, first=z, anchors=frozenset(a for a in self.anchors if a >= z))
        if side == AFTER:
            return replace(self, last=z, anchors=frozenset(a for a in self.anchors if a <= z))
        raise ValueError(f"side must be {BEFORE!r} or {AFTER!r}, not {side!r}")

    def allows(self, z: int) -> bool:
        """Whether slice ``z`` lies within the object's ends."""
        return (self.first is None or z >= self.first) and (self.last is None or z <= self.last)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (empty when nothing was vouched for)."""
        out: dict[str, Any] = {}
        if self.anchors:
            out["anchors"] = sorted(self.anchors)
        if self.first is not None:
            out["first"] = self.first
        if self.last is not None:
            out["last"] = self.last
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ObjectEdits:
        """The edits of :meth:`as_json`; ValueError on anything else."""
        if not data:
            return cls()
        try:
            anchors = frozenset(int(a) for a in data.get("anchors", ()))
            first = None if data.get("first") is None else int(data["first"])
            last = None if data.get("last") is None else int(data["last"])
        except (TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"not an object's edits: {data!r} ({err})") from err
        return cls(anchors, first, last)


def edits_entry(edits: Mapping[int, ObjectEdits], axis: int = 0) -> dict[str, Any]:
    """The ``metadata[EDITS_KEY]`` entry of ``edits`` (label id -> edits) along ``axis``."""
    return {"axis": int(axis), "objects": {int(i): j for i, e in edits.items() if (j := e.as_json())}}


def edits_in_entry(entry: Mapping[str, Any] | None, axis: int = 0) -> dict[int, ObjectEdits]:
    """Label id -> edits of a ``metadata[EDITS_KEY]`` entry, if they count along ``axis`` (else none)."""
    entry = entry or {}
    if int(entry.get("axis", 0)) != int(axis):
        return {}
    return {int(i): ObjectEdits.from_json(e) for i, e in (entry.get("objects") or {}).items()}
