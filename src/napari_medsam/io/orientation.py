"""How a volume is shown: axial slices under the slider, in the radiological convention.

napari draws a 2D view with the first displayed world axis running down the screen and the second
running right, and the slider moves along the first data axis. :func:`to_axial` re-orders a
volume's axes (a view, no copy) so that the first runs superior-inferior, the second
anterior-posterior and the third right-left, whatever order the file stores them in (sagittal
and coronal series are common in MR); the geometry records the order (``file_axes``) and
:meth:`~napari_medsam.io.volumes.VolumeGeometry.to_file` puts labels back on the file's grid.

Volumes are placed in the world frame (inferior, posterior, left), in mm, so that axial slices
show anterior up and the patient's right on the screen's left, as 3D Slicer and ITK-SNAP show
them (coronal and sagittal views, with the other axes displayed, show superior up). Only the
layer's transform does that (``scale`` = spacing, a ``translate``, and flips in ``affine``):
each axis is flipped to the sense of the anatomical axis it runs along (the nearest orthogonal
orientation, for oblique scans). For a scan that is not oblique, the world position of a voxel is
its patient (LPS) position with the superior axis negated, so volumes of one patient overlay
whatever their voxel order.
"""

from __future__ import annotations

import os
from itertools import permutations
from typing import Any

import numpy as np

from napari_medsam.io.volumes import GEOMETRY_KEY, VolumeGeometry, read_volume


def nearest_axes(direction: Any) -> tuple[int, ...]:
    """For each index axis, the patient axis it runs closest to (the nearest orthogonal orientation).

    ``direction[r][c]`` is component ``r`` of index axis ``c`` (napari order). The permutation with
    the largest total alignment wins, so every index axis gets its own patient axis.
    """
    cosines = np.abs(np.asarray(direction, dtype=float))
    n = len(cosines)
    return max(permutations(range(n)), key=lambda axes: sum(cosines[axes[c], c] for c in range(n)))


def axial_order(geometry: VolumeGeometry) -> tuple[int, ...]:
    """The axis order that shows a 3D grid in axial slices: (superior, posterior, left) axes.

    Identity for an axially stored volume and for 2D and 4D grids.
    """
    if geometry.ndim != 3:
        return tuple(range(geometry.ndim))
    return tuple(int(c) for c in np.argsort(nearest_axes(geometry.direction)))


def to_axial(array: np.ndarray, geometry: VolumeGeometry) -> tuple[np.ndarray, VolumeGeometry]:
    """``array`` (trailing channel axes allowed) as axial slices: a transposed view and its geometry."""
    order = axial_order(geometry)
    if order == tuple(range(geometry.ndim)):
        return array, geometry
    return np.transpose(array, (*order, *range(geometry.ndim, array.ndim))), geometry.transposed(order)


def read_axial(path: str | os.PathLike) -> tuple[np.ndarray, VolumeGeometry]:
    """:func:`~napari_medsam.io.volumes.read_volume`, then :func:`to_axial`."""
    return to_axial(*read_volume(path))


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


def layer_kwargs(geometry: VolumeGeometry, source: str | os.PathLike | None = None) -> dict[str, Any]:
    """napari layer keyword arguments: the radiological display and the geometry in ``metadata``.

    ``scale``, ``translate`` and ``affine`` (flips) place the grid in the radiological convention;
    ``metadata`` keeps the full geometry and its affine (what the writers use) and the source path.
    """
    metadata: dict[str, Any] = {GEOMETRY_KEY: geometry.to_dict(), "affine": geometry.affine}
    if geometry.modality:
        metadata["modality"] = geometry.modality
    if source is not None:
        metadata["source_path"] = os.fspath(source)
    return {**display_transform(geometry), "metadata": metadata}
