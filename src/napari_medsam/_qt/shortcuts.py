"""The widget's keyboard shortcuts, through napari's own key bindings (``viewer.bind_key``).

They are bound on the viewer when the widget opens and given back when it closes. The keys are
ones no napari layer binds (a layer's own bindings win while it is selected, and the boxes layer
usually is): Shift with S (Segment), G (Propagate: go through the volume), C (Correct), the arrows
(End here on the slider's side: Left for lower positions, Right for higher, as the slider moves),
and T (the next click's polarity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from napari_medsam._qt.captions import SEGMENT
from napari_medsam._qt.options import TOGGLE_KEY
from napari_medsam.base.label_policy import AFTER, BEFORE
from napari_medsam.layers.volume import CORRECT, PROPAGATE

#: The napari key of each action, End here side and the click polarity ("polarity").
SHORTCUTS = {
    SEGMENT: "Shift-S",
    PROPAGATE: "Shift-G",
    CORRECT: "Shift-C",
    BEFORE: "Shift-Left",
    AFTER: "Shift-Right",
    "polarity": TOGGLE_KEY,
}


def shown(key: str) -> str:
    """A napari key as a tooltip writes it: ``"Shift-S"`` -> ``"Shift+S"``."""
    return key.replace("-", "+").upper() if len(key) == 1 else key.replace("-", "+")


def press(button: Any, busy: bool) -> str | None:
    """What a shortcut does: click ``button`` (a magicgui button), or say why it cannot now."""
    if button.enabled:
        button.native.click()
        return None
    return "Wait for the run to end, or press Cancel." if busy else str(button.tooltip)


class _Binding:
    """One key's callback, knowing the :class:`ViewerKeys` that bound it."""

    def __init__(self, owner: ViewerKeys, press: Callable[[], None]) -> None:
        self.owner, self._press = owner, press

    def __call__(self, viewer: Any = None) -> None:
        self._press()


class ViewerKeys:
    """Binds ``actions`` (key -> callback) on ``viewer``; :meth:`release` gives each key back to what
    held it before, unless another binding took it since (another widget opened later keeps it)."""

    def __init__(self, viewer: Any, actions: Mapping[str, Callable[[], None]]) -> None:
        self._viewer, self.released = viewer, False
        self.bindings = {key: _Binding(self, press) for key, press in actions.items()}
        self._previous = {key: viewer.bind_key(key, b, overwrite=True) for key, b in self.bindings.items()}

    def release(self) -> None:
        """Give the keys back (the widget closed); once."""
        if self.released:
            return
        self.released = True
        held = list(self._viewer.keymap.values())
        for key, binding in self.bindings.items():
            if binding not in held:
                continue  # another binding took the key since
            previous = self._previous[key]
            if isinstance(previous, _Binding) and previous.owner.released:
                previous = None  # another closed widget's: do not bring it back
            self._viewer.bind_key(key, previous, overwrite=True)


def bind_shortcuts(
    viewer: Any, buttons: Mapping[str, Any], press: Callable[[Any], None], toggle: Callable[[], None]
) -> ViewerKeys:
    """Bind :data:`SHORTCUTS`: each named button's key to ``press(button)``, the polarity's to ``toggle``."""
    actions = {SHORTCUTS[name]: partial(press, b) for name, b in buttons.items() if name in SHORTCUTS}
    return ViewerKeys(viewer, {**actions, SHORTCUTS["polarity"]: toggle})
