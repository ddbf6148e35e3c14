"""What the action buttons say: their text and tooltip, from the selected object, the Propagate
scope, the slider's sides in the patient (``layers.directions``) and their shortcuts.

A button names the selected object ("Propagate liver"), cut to the width "object 10" takes, and
a button whose text changes is as wide as its widest text from the start (:func:`every_text`), so
that neither a long name nor another side's words ever widen the dock (the tooltip has it whole).
On a 2D image, or with no object selected, Propagate says only "Propagate". The End here buttons
name their side in the patient's words ("◀ End (head side)"). Every tooltip ends with the button's
shortcut (``_qt.shortcuts``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QFontMetrics

from napari_medsam.base.label_policy import AFTER, BEFORE
from napari_medsam.layers.directions import FILE_SIDES, PATIENT_SIDES, SliderSides
from napari_medsam.layers.requests import NEW_OBJECTS, SELECTED_OBJECT
from napari_medsam.layers.volume import CORRECT, INTERPOLATE, PROPAGATE

SEGMENT = "Segment"
#: The End here buttons' text by slider side: without a volume on screen, then with the side's word.
END_PLAIN = {BEFORE: "◀ End here", AFTER: "End here ▶"}
END_TEXTS = {BEFORE: "◀ End ({} side)", AFTER: "End ({} side) ▶"}
#: The widest object name a button shows, as wide as this text in the button's font.
NAME_ROOM = "object 10"


def captions(
    selected: str | None,
    scope: str,
    sides: SliderSides | None,
    keys: Mapping[str, str],
    cut: Callable[[str], str] = lambda name: name,
) -> dict[str, tuple[str, str]]:
    """(text, tooltip) per action (``SEGMENT``, ``PROPAGATE``, ``INTERPOLATE``, ``CORRECT``) and
    End here side (``BEFORE``, ``AFTER``).

    ``selected`` names the selected object (None: none, or no volume to carry it through);
    ``sides`` the slider's sides (None: no slider through a volume); ``keys`` the shortcut of each
    action or side, shown in its tooltip; ``cut`` shortens a name to fit a button.
    """
    chosen = selected or "none"
    if scope == SELECTED_OBJECT:
        propagate = (
            f"{PROPAGATE} {cut(selected)}" if selected else PROPAGATE,
            f"Carry the selected object ({chosen}) through the volume",
        )
    elif scope == NEW_OBJECTS:
        propagate = f"{PROPAGATE} new", "Carry the objects of this slice that are on no other slice yet"
    else:
        propagate = f"{PROPAGATE} all", "Carry every object on this slice through the volume, again"
    found = {
        SEGMENT: (SEGMENT, "Segment the new and the moved boxes and clicks of this slice (one undo step)"),
        PROPAGATE: propagate,
        INTERPOLATE: (INTERPOLATE, "Segment the slices between an object's key boxes"),
        CORRECT: (
            CORRECT,
            f"Correct the selected object ({chosen}) from the box drawn on this slice: re-segment it here "
            "and carry the change only as far as it changes the object (one undo step)",
        ),
    }
    for side, slider in ((BEFORE, "lower"), (AFTER, "higher")):
        text = END_TEXTS[side].format(sides.word(side)) if sides else END_PLAIN[side]
        toward = sides.toward(side) if sides else "on that side"
        found[side] = text, (
            f"End the selected object ({chosen}) at this slice: remove it from every slice {toward} (the "
            f"{slider} slider positions), one undo step"
        )
    return {
        name: (text, f"{tip}. Shortcut: {keys[name]}" if name in keys else tip)
        for name, (text, tip) in found.items()
    }


def every_text() -> dict[str, list[str]]:
    """Every text the buttons whose text changes can show (the widest with a name cut to
    :data:`NAME_ROOM`): what their width is made for, once."""
    words = [word for sides in (*PATIENT_SIDES, FILE_SIDES) for word, _ in sides]
    return {
        PROPAGATE: [PROPAGATE, f"{PROPAGATE} {NAME_ROOM}…", f"{PROPAGATE} new", f"{PROPAGATE} all"],
        **{side: [END_PLAIN[side], *(END_TEXTS[side].format(w) for w in words)] for side in (BEFORE, AFTER)},
    }


def fit_name(button: Any, name: str) -> str:
    """``name`` cut to the width :data:`NAME_ROOM` takes in ``button``'s font (a magicgui button)."""
    metrics = QFontMetrics(button.native.font())
    return metrics.elidedText(name, Qt.TextElideMode.ElideRight, metrics.horizontalAdvance(NAME_ROOM))
