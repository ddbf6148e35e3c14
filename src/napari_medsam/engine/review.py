"""The slices of a walk most likely wrong: the short list a user checks first.

Each slice a walk gives a mask is rated by how doubtful it is: the model's own predicted IoU
falls short of 1, the mask agrees poorly with what looks like the object in this scan
(``SliceStep.confidence``), its area jumps against a neighbour's (log ratio), and it is one of
the walk's two ends (where a walk runs past an object or stops short). A slice where a direction
stopped by a rule (not the volume's end or the user's) is as doubtful as an end can be: does the
object go on there? The list holds the most doubtful slices first, a quarter of the slices masked
at most (one at least). Measured on every
development object (``docs/propagation.md``, "Where it is unsure"): this sum ranks the slices with
Dice < 0.7 or past the object above the others better than any one of its terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_medsam.engine.propagation import StopReason

#: What being one of a walk's two ends adds to a slice's doubt (half the range of the other terms).
END = 0.5


def doubt(steps: Sequence) -> dict[int, float]:
    """Slice -> how doubtful it is, for every slice of a walk (:class:`SliceStep`) given a mask and
    every slice a rule stopped a direction at."""
    masked = sorted((s for s in steps if s.mask is not None), key=lambda s: s.slice_index)
    out = {}
    for i, step in enumerate(masked):
        neighbours = [masked[j].area for j in (i - 1, i + 1) if 0 <= j < len(masked)]
        jump = max((abs(np.log(max(step.area, 1) / max(a, 1))) for a in neighbours), default=0.0)
        score = 1.0 if step.score is None else float(step.score)
        confidence = 1.0 if step.confidence is None else float(step.confidence)
        end = END if i in (0, len(masked) - 1) else 0.0
        out[step.slice_index] = (1.0 - score) + (1.0 - confidence) + float(jump) + end
    for step in steps:  # where a rule stopped a direction: the object may go on there
        if step.stop is not None and step.stop not in (StopReason.END, StopReason.AGREES):
            out.setdefault(step.slice_index, 1.0 + END)
    return out


def review_slices(steps: Sequence) -> tuple[int, ...]:
    """The slices to check, most doubtful first: a quarter of the slices masked at most."""
    rated = doubt(steps)
    budget = max(1, sum(s.mask is not None for s in steps) // 4)
    return tuple(sorted(rated, key=lambda z: -rated[z])[:budget])
