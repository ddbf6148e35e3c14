"""The zoom of small objects: where a box is small for its slice, the model also sees a crop around it.

The models see a slice at a fixed input size (LiteMedSAM 256 px, MedSAM and SAM 1024 px). On a
slice larger than that input (a 512 px CT slice for LiteMedSAM) an object a few pixels wide loses
its detail in the downscale; a square crop around its box, encoded on its own, shows it at up to
the slice's own resolution. Measured across object sizes on every development volume
(``docs/propagation.md``, "Zoom"): the crop helps low-contrast small objects (a lung nodule +0.21
Dice, a prostate lesion +0.21, a thoracic cord +0.19) and hurts some that the whole slice already
resolves (an aorta -0.08, a lung tumour's small slices -0.12), and on slices at or below the
model's input size (nothing was lost) it only hurt. Hence: a crop only for a box under
:data:`ZOOM_BELOW` model-input pixels on a slice larger than the input, and by default the crop's
mask only where the model's own predicted IoU ranks it at least as high as the whole slice's.
"""

from __future__ import annotations

from collections.abc import Sequence

#: A crop is tried (by default) when the box's longer side spans fewer model-input pixels than this.
ZOOM_BELOW = 48.0
#: The crop's side as a multiple of the box's longer side ...
CROP_FACTOR = 4.0
#: ... and at least this fraction of the slice's longer side.
MIN_CROP_FRACTION = 0.125

#: A crop window of a slice: (row0, col0, row1, col1), ends excluded.
Window = tuple[int, int, int, int]


def zoom_applies(box: Sequence[float], shape: tuple[int, int], input_size: int) -> bool:
    """Whether the default zoom tries a crop around ``box`` (x0, y0, x1, y1) on a slice of ``shape``:
    the slice is downscaled for the model and the box is small at the model's input."""
    if max(shape) <= input_size:
        return False
    x0, y0, x1, y1 = (float(v) for v in box)
    return (max(x1 - x0, y1 - y0) + 1.0) * input_size / max(shape) < ZOOM_BELOW


def crop_window(box: Sequence[float], shape: tuple[int, int]) -> Window | None:
    """The square crop around ``box`` on a slice of ``shape``, kept inside it; None where the crop
    would hold the whole slice (nothing to zoom)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    height, width = shape
    side = max(CROP_FACTOR * (max(x1 - x0, y1 - y0) + 1.0), MIN_CROP_FRACTION * max(height, width))
    side = round(min(side, height, width))
    if side >= max(height, width):
        return None
    centre_y, centre_x = (y0 + y1) / 2, (x0 + x1) / 2
    row0 = round(min(max(centre_y - side / 2, 0), height - side))
    col0 = round(min(max(centre_x - side / 2, 0), width - side))
    return row0, col0, row0 + side, col0 + side


def reusable(crop: Window, box: Sequence[float]) -> bool:
    """Whether ``crop`` (made for another box on the same slice) serves ``box`` as well as its own would:
    it holds the box with at least a box side of room around it, and is at most twice its own crop."""
    row0, col0, row1, col1 = crop
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) + 1.0
    room = side * (CROP_FACTOR - 1.0) / 4.0
    inside = x0 - room >= col0 and y0 - room >= row0 and x1 + room <= col1 - 1 and y1 + room <= row1 - 1
    return inside and (row1 - row0) <= 2 * CROP_FACTOR * side
