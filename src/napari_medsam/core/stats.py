"""Per-object statistics of a label volume: voxels, volume in mL, slices, mean intensity."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Column names of the statistics table (widget, ``--stats FILE.csv``, cohort summaries).
STATS_COLUMNS = ("label", "name", "voxels", "volume_ml", "slices", "mean_intensity")


def default_name(label_id: int) -> str:
    """The name an object has until someone names it."""
    return f"object {int(label_id)}"


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
    if image is not None and np.shape(image)[: labels.ndim] != labels.shape:
        raise ValueError(f"image of shape {np.shape(image)} does not match labels of shape {labels.shape}")
    flat = labels.reshape(-1).astype(np.int64, copy=False)
    if flat.size and flat.min() < 0:
        raise ValueError("labels must not be negative")
    counts = np.bincount(flat)
    ids = [int(i) for i in np.flatnonzero(counts) if i > 0]
    if not ids:
        return []
    sums = None
    if image is not None:
        values = np.asarray(image, dtype=np.float64).reshape(-1)
        sums = np.bincount(flat, weights=values, minlength=counts.size)
    voxel_ml = None
    if spacing_mm is not None and labels.ndim >= 3:
        voxel_ml = float(np.prod(np.abs(np.asarray(spacing_mm, dtype=float)[-labels.ndim :]))) / 1000.0
    moved = np.moveaxis(labels, axis, 0) if labels.ndim >= 3 else labels[None]
    slices = dict.fromkeys(ids, 0)
    for plane in moved:
        for i in np.unique(plane):
            if i > 0:
                slices[int(i)] += 1
    names = names or {}
    return [
        ObjectStats(
            label=i,
            name=str(names.get(i) or default_name(i)),
            voxels=int(counts[i]),
            volume_ml=None if voxel_ml is None else int(counts[i]) * voxel_ml,
            slices=slices[i],
            mean_intensity=None if sums is None else float(sums[i] / counts[i]),
        )
        for i in ids
    ]
