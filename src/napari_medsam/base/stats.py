"""Per-object statistics of a label volume: voxels, volume in mL, slices, mean intensity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from napari_medsam.base.objects import default_name

#: Column names of the statistics table (widget, ``--stats FILE.csv``, cohort summaries).
STATS_COLUMNS = ("label", "name", "voxels", "volume_ml", "slices", "mean_intensity")


@dataclass(frozen=True)
class ObjectStats:
    """One object of a label volume. ``volume_ml`` is None for 2D labels, ``mean_intensity``
    None without an image; ``slices`` counts the slices along the segmentation axis that hold it."""

    label: int
    name: str
    voxels: int
    volume_ml: float | None
    slices: int
    mean_intensity: float | None

    def row(self) -> dict[str, object]:
        """The object as a mapping of :data:`STATS_COLUMNS`."""
        return asdict(self)


def object_stats(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    spacing_mm: Sequence[float] | None = None,
    names: Mapping[int, str] | None = None,
    axis: int = 0,
) -> list[ObjectStats]:
    """One :class:`ObjectStats` per label id present in ``labels``, in id order.

    ``spacing_mm`` is the voxel size along each axis of ``labels`` (signs are ignored: a flipped
    display may carry negative scales); the volume in mL is voxels x |spacing| product / 1000.
    ``image`` (the raw data, e.g. HU) gives the mean intensity inside each object.
    """
    labels = np.asarray(labels)
    if image is not None and np.shape(image) != labels.shape:
        raise ValueError(f"image of shape {np.shape(image)} does not match labels of shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    voxel_ml = None
    if spacing_mm is not None and labels.ndim >= 3:
        voxel_ml = float(np.prod(np.abs(np.asarray(spacing_mm, dtype=float)[-labels.ndim :]))) / 1000.0
    top = int(labels.max()) if labels.size else 0
    counts = np.zeros(top + 1, dtype=np.int64)
    sums = np.zeros(top + 1)
    slices = np.zeros(top + 1, dtype=np.int64)
    if labels.ndim < 3:  # a 2D object lies on one slice
        labels, image, axis = labels[None], None if image is None else np.asarray(image)[None], 0
    for k in range(labels.shape[axis]):  # one slice at a time: bounded memory on large volumes
        plane = np.take(labels, k, axis=axis).reshape(-1).astype(np.int64)
        found = np.bincount(plane, minlength=top + 1)
        counts += found
        slices += found > 0
        if image is not None:
            values = np.take(image, k, axis=axis).reshape(-1).astype(np.float64)
            sums += np.bincount(plane, weights=values, minlength=top + 1)
    ids = [int(i) for i in np.flatnonzero(counts) if i > 0]
    names = names or {}
    return [
        ObjectStats(
            label=i,
            name=str(names.get(i) or default_name(i)),
            voxels=int(counts[i]),
            volume_ml=None if voxel_ml is None else int(counts[i]) * voxel_ml,
            slices=int(slices[i]),
            mean_intensity=None if image is None else float(sums[i] / counts[i]),
        )
        for i in ids
    ]
