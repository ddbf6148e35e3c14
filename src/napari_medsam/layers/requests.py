"""What every run reads on the viewer's thread: the layers and slice shown, and the run's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_medsam.layers.prompts import spatial_shape

SWITCH_TO_2D = (
    "MedSAM segments 2D slices: switch the viewer to 2D (the 2D/3D button at the bottom left, "
    "or Ctrl+Y), then segment."
)

#: Which objects of the slice on screen Propagate carries: the one selected (the objects table's
#: row, the labels layer's ``selected_label``), those on no other slice yet, or every one.
SELECTED_OBJECT, NEW_OBJECTS, ALL_OBJECTS = "selected object", "new objects", "all objects"
PROPAGATE_SCOPES = (SELECTED_OBJECT, NEW_OBJECTS, ALL_OBJECTS)


@dataclass(frozen=True)
class LayerInputs:
    """The layers picked and the slice shown when a run starts.

    ``dims_range`` is the viewer's ``(start, stop, step)`` per world axis: how the sliders number
    positions (empty: each slider position is the image's index).
    """

    image: Any
    labels: Any | None
    boxes: Any | None
    clicks: Any | None
    world_point: tuple[float, ...]
    dims_order: tuple[int, ...]
    dims_range: tuple[tuple[float, float, float], ...] = ()


@dataclass(frozen=True)
class RunSettings:
    """The options a run uses, read from the widget when it starts.

    ``window`` is the (low, high) intensity window (None: each slice's min..max); ``source`` and
    ``device`` name the model; ``overwrite`` lets masks replace other objects' pixels;
    ``this_slice_only`` limits Segment and Interpolate to the slice on screen; ``propagate``
    says which objects of the slice Propagate carries (one of ``PROPAGATE_SCOPES``).
    """

    window: tuple[float, float] | None
    source: str
    device: str
    overwrite: bool = False
    this_slice_only: bool = True
    propagate: str = ALL_OBJECTS


def run_problem(image: Any | None, labels: Any | None, ndisplay: int = 2) -> str | None:
    """Why no run can start with these layers and this display (None when one can)."""
    if image is None:
        return "Open or pick an image layer (File > Open Sample > MedSAM for a demo)."
    if ndisplay != 2:
        return SWITCH_TO_2D
    if labels is not None and tuple(labels.data.shape) != spatial_shape(image):
        return (
            f"The labels layer {labels.name!r} has shape {tuple(labels.data.shape)} but the "
            f"image has {spatial_shape(image)}: pick another labels layer or none."
        )
    return None
