"""Stand-ins for MedSamPredictor that implement its protocol (``engine.predictor.SlicePredictor``).

Each keeps the current image and answers ``coverage``, ``cells`` and ``features`` from a 64 x 64
grid of it, as the real predictor answers them from its embedding: a cell's vector is a *look*
of the mean intensity of the pixels it covers (:class:`CellGrid`).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

CELLS = 64


def threshold_look(threshold: float = 120.0) -> Callable[[np.ndarray], np.ndarray]:
    """A look that tells bright from dark: (mean above ``threshold``, mean below it) per cell."""

    def look(means: np.ndarray) -> np.ndarray:
        return np.stack([np.maximum(means - threshold, 0.0), np.maximum(threshold - means, 0.0)], axis=-1)

    return look


def same_look(means: np.ndarray) -> np.ndarray:
    """Every cell looks the same: nothing tells the object from its surroundings."""
    return np.ones((*means.shape, 2))


class CellGrid:
    """``coverage``, ``cells`` and ``features`` of the image in ``self.image`` (2D), through ``self.look``."""

    image: np.ndarray
    look: Callable[[np.ndarray], np.ndarray] = staticmethod(same_look)

    def coverage(self, mask: np.ndarray) -> np.ndarray:
        return cv2.resize(np.asarray(mask, np.float32), (CELLS, CELLS), interpolation=cv2.INTER_AREA)

    def cells(self) -> np.ndarray:
        plane = np.asarray(self.image, np.float32)
        plane = plane if plane.ndim == 2 else plane.mean(axis=-1)
        return self.look(cv2.resize(plane, (CELLS, CELLS), interpolation=cv2.INTER_AREA))

    def features(self, mask: np.ndarray) -> np.ndarray | None:
        weights = self.coverage(mask)
        if weights.sum() <= 0:
            return None
        return np.tensordot(self.cells(), weights, axes=([0, 1], [0, 1])) / weights.sum()
