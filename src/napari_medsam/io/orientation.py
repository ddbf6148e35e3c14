"""How a volume is shown: the radiological convention, taken from the file's direction matrix.

napari draws a 2D view with the first displayed world axis running down the screen and the second
running right. Volumes are placed in the world frame (inferior, posterior, left), in mm, so that

- axial slices show anterior up and the patient's right on the screen's left,
- coronal slices show superior up and the patient's right on the left,
- sagittal slices show superior up and anterior on the left,

as 3D Slicer and ITK-SNAP show them. The data stay the file's voxel grid: only the layer's
transform changes (``scale`` = spacing, a ``translate``, and flips in ``affine``). napari's 2D
slicing keeps data axis ``d`` on world axis ``d``, so each axis is flipped to the sense of the
anatomical axis it runs along (the nearest orthogonal orientation, for oblique scans) but never
moved: a file stored in another axis order (sagittal slices, say) keeps that order.

For a scan that is not oblique, the world position of a voxel is its patient (LPS) position with
the superior axis negated, so volumes of one patient overlay whatever their voxel order.
"""

from __future__ import annotations

from itertools import permutations
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari_medsam.io.volumes import VolumeGeometry


def nearest_axes(direction: Any) -> tuple[int, ...]:
    """For each index axis, the patient axis it runs closest to (the nearest orthogonal orientation).

    ``direction[r][c]`` is component ``r`` of index axis ``c`` (napari order). The permutation with
    the largest total alignment wins, so every index axis gets its own patient axis.
    """
    cosines = np.abs(np.asarray(direction, dtype=float))
    n = len(cosines)
    return max(permutations(range(n)), key=lambda axes: sum(cosines[axes[c], c] for c in range(n)))


def radiological_senses(ndim: int) -> np.ndarray:
    """+1 or -1 per patient axis (napari order): the world frame (inferior, posterior, left) from LPS."""
    senses = np.ones(ndim)
    if ndim >= 3:
        senses[ndim - 3] = -1.0  # superior (LPS z) runs up the screen: world runs inferior
    return senses


def display_transform(geometry: VolumeGeometry) -> dict[str, Any]:
    """napari layer keyword arguments that show ``geometry``'s grid in the radiological convention."""
    direction = np.asarray(geometry.direction, dtype=float)
    axes = nearest_axes(direction)
    senses = radiological_senses(geometry.ndim)
    signs = np.array([np.sign(direction[axes[d], d]) for d in range(geometry.ndim)])
    flips = np.array([senses[axes[d]] * signs[d] for d in range(geometry.ndim)])
    origin = np.asarray(geometry.origin, dtype=float)
    affine = np.eye(geometry.ndim + 1)
    affine[: geometry.ndim, : geometry.ndim] = np.diag(flips)
    return {
        "scale": list(geometry.spacing),
        # world = flips * (spacing * index + translate) = flips * spacing * index + sense * origin
        "translate": [float(signs[d] * origin[axes[d]]) for d in range(geometry.ndim)],
        "affine": affine,
        "units": "mm",
    }
