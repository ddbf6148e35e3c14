"""Which way each side of the slider runs in the patient, in words: what End here names.

napari's slider counts world positions upwards, and the plugin's reader places a volume in the
world frame (inferior, posterior, left) of :mod:`napari_medsam.io.orientation`. So the slices at
lower slider positions than the one on screen lie toward the head on an axial slider (toward the
front on a coronal one, the patient's right on a sagittal one), whatever order the file stores them
in; on the shared abdominal CT, slider 29 is the lowest slice. An image without the reader's
geometry (an array added in a script) has no known anatomy: its sides are named by the file's
own axis (toward its first or its last slice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_medsam.base.label_policy import AFTER, BEFORE
from napari_medsam.io.volumes import GEOMETRY_KEY
from napari_medsam.layers.volume import PlaneStack

#: Per world axis of the reader's frame (inferior, posterior, left): the side of lower world
#: positions, then of higher ones, each as (a button's word, a message's phrase).
PATIENT_SIDES = (
    (("head", "toward the head"), ("feet", "toward the feet")),
    (("front", "toward the front"), ("back", "toward the back")),
    (("right", "toward the patient's right"), ("left", "toward the patient's left")),
)
#: The sides of a file's own axis, where its anatomy is unknown.
FILE_SIDES = (("first", "toward the file's first slice"), ("last", "toward the file's last slice"))


@dataclass(frozen=True)
class SliderSides:
    """The slices on either side of the slider (``BEFORE``: lower positions), in words: each a
    (word, phrase) pair such as ``("feet", "toward the feet")``."""

    before: tuple[str, str]
    after: tuple[str, str]

    def word(self, side: str) -> str:
        """``"feet"``: a button's word for the side ``BEFORE`` or ``AFTER``."""
        return {BEFORE: self.before, AFTER: self.after}[side][0]

    def toward(self, side: str) -> str:
        """``"toward the feet"``: a message's phrase for the side ``BEFORE`` or ``AFTER``."""
        return {BEFORE: self.before, AFTER: self.after}[side][1]


def slider_sides(image: Any, stack: PlaneStack) -> SliderSides:
    """The sides of the slider that moves through ``stack`` of the Image layer ``image``, in the
    patient's words when known; else the file's, by whether the slider runs with its index."""
    patient_axis = stack.axis - (image.ndim - 3)
    if GEOMETRY_KEY in (image.metadata or {}) and 0 <= patient_axis < 3:
        return SliderSides(*PATIENT_SIDES[patient_axis])
    ends = np.zeros((2, image.ndim))
    ends[1, stack.axis] = max(stack.shape[0] - 1, 1)
    first, last = (float(np.asarray(image.data_to_world(end))[stack.axis]) for end in ends)
    return SliderSides(*FILE_SIDES) if first <= last else SliderSides(*FILE_SIDES[::-1])
