"""What tells one object from its surroundings in one scan: a linear classifier on the model's cells.

The image encoder gives every slice a grid of embedding cells (64 x 64 vectors of 256). On the
slices a user vouched for (the key slice, each corrected slice) the object's cells and the rest
are known, and on the slices a walk accepted they are known as well as the walk knows them. A
linear discriminant fitted on them (Fisher's, with shrinkage) scores every cell of any other
slice of the same scan: > 0 where a cell looks more like the object than like what surrounds it
in this scan. PerSAM's one-shot location prior (the target's mean embedding against every cell)
is the unfitted special case; the discriminant also learns which directions of the embedding
tell this object from this scan's neighbours, and it follows the object's look slice by slice.

The matrix products and the solve run in PyTorch, on the threads the model already runs on: numpy's
BLAS would start a second pool of threads, and on a machine with few cores the two pools fight
(a walk measured 2.4x slower with two threads each; docs/propagation.md, issue 31).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Shrinkage of the pooled covariance towards its mean variance (a ridge): the cells of a few
#: slices are too few and too correlated for a full 256 x 256 estimate.
SHRINKAGE = 0.1
#: A cell is the object's when the object covers at least this fraction of it, the surroundings'
#: when it covers none of it; cells between are the boundary and teach nothing.
INSIDE = 0.5


@dataclass(frozen=True)
class _Moments:
    count: float
    total: np.ndarray  # (D,)
    outer: np.ndarray  # (D, D)

    @classmethod
    def of(cls, rows: np.ndarray, weight: float) -> _Moments:
        import torch  # not at import: the plugin's modules load without PyTorch (napari starts faster)

        rows = np.asarray(rows, dtype=np.float32)  # the products in float32, their sums kept in float64
        matrix = torch.from_numpy(np.ascontiguousarray(rows))
        outer = (matrix.T @ matrix).double().numpy()
        return cls(weight * len(rows), weight * rows.sum(axis=0, dtype=np.float64), weight * outer)

    def __add__(self, other: _Moments) -> _Moments:
        return _Moments(self.count + other.count, self.total + other.total, self.outer + other.outer)


@dataclass(frozen=True)
class Evidence:
    """One slice's cells sorted into the object's and the surroundings' (their first two moments)."""

    inside: _Moments
    outside: _Moments

    @classmethod
    def of(
        cls,
        cells: np.ndarray,
        coverage: np.ndarray,
        valid: np.ndarray,
        not_object: np.ndarray | None = None,
        weight: float = 1.0,
        object_like: np.ndarray | None = None,
    ) -> Evidence:
        """From a slice's cells (64, 64, D), the object's coverage of each and the cells that count
        (valid: not padding, within the object's surroundings); optionally cells known not to be the
        object (what a user's correction removed) and the cells the object may be taken from
        (``object_like``: a walk learns only the part of its own mask that already looks like the
        object, so a mask that slid onto a neighbour does not teach the neighbour's look).
        ``weight`` counts each cell that many times (a user's slice more than a walk's)."""
        flat = cells.reshape(-1, cells.shape[-1])
        cover, valid = coverage.reshape(-1), valid.reshape(-1)
        away = valid & (cover == 0)
        if not_object is not None:
            away |= not_object.reshape(-1) & valid & (cover < INSIDE)
        inside = valid & (cover >= INSIDE)
        if object_like is not None:
            inside &= object_like.reshape(-1)
        return cls(_Moments.of(flat[inside], weight), _Moments.of(flat[away], weight))

    @property
    def has_object(self) -> bool:
        return self.inside.count > 0


@dataclass(frozen=True)
class ObjectModel:
    """A linear score per cell: ``(cells @ direction - offset) / spread``, > 0 object-like."""

    direction: np.ndarray
    offset: float
    spread: float

    @classmethod
    def fit(cls, evidence: Sequence[Evidence]) -> ObjectModel | None:
        """Fisher's discriminant of the object's cells against the rest (equal priors); None without
        at least two cells of each."""
        if not evidence:
            return None
        inside, outside = evidence[0].inside, evidence[0].outside
        for item in evidence[1:]:
            inside, outside = inside + item.inside, outside + item.outside
        if inside.count < 2 or outside.count < 2:
            return None
        mean_in, mean_out = inside.total / inside.count, outside.total / outside.count
        cov_in = inside.outer / inside.count - np.outer(mean_in, mean_in)
        cov_out = outside.outer / outside.count - np.outer(mean_out, mean_out)
        within = (cov_in + cov_out) / 2
        gap = mean_in - mean_out
        if not np.any(gap):  # the two look alike: nothing to tell them apart by
            return None
        import torch

        ridge = max(SHRINKAGE * np.trace(within) / len(within), 1e-9 * float(gap @ gap))
        system = torch.from_numpy(within + ridge * np.eye(len(within)))
        direction = torch.linalg.solve(system, torch.from_numpy(gap)).numpy()
        offset = float(direction @ (mean_in + mean_out) / 2)
        spread = float(np.sqrt(max(np.einsum("i,ij,j->", direction, within, direction), 1e-12)))
        return cls(direction.astype(np.float32), offset, spread)

    def score(self, cells: np.ndarray) -> np.ndarray:
        """Each cell's score (64, 64): in units of the classes' spread, > 0 more like the object."""
        import torch

        flat = cells.reshape(-1, cells.shape[-1]).astype(np.float32)  # a copy: the cells may be read-only
        along = (torch.from_numpy(flat) @ torch.from_numpy(self.direction)).numpy().reshape(cells.shape[:-1])
        return (along - self.offset) / self.spread


def objectness(scores: np.ndarray, coverage: np.ndarray) -> float | None:
    """The share of a region (its cell ``coverage``) whose cells look like the object (None if empty)."""
    total = float(coverage.sum())
    return None if total <= 0 else float((coverage * (scores > 0)).sum() / total)


def agreement(scores: np.ndarray, coverage: np.ndarray, around: np.ndarray) -> float:
    """Dice of a mask (its cell ``coverage``) with the object-like cells within ``around`` (cell weights):
    1 when the mask holds every object-like cell there and nothing else."""
    like = (scores > 0) * around
    overlap = float((coverage * like).sum())
    total = float(coverage.sum() + like.sum())
    return 0.0 if total <= 0 else 2 * overlap / total
