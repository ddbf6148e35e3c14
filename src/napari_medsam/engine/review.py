"""The slices of a walk most likely wrong: the short list a user checks first.

Every slice a walk gives a mask has a confidence (``SliceStep.confidence``: how well the mask
agrees with the cells that look like the object in this scan). The list holds the walk's ends
(where it may have run past the object or stopped short) and the slices whose confidence is low
or drops against both neighbours, most doubtful first, at most a quarter of the slices masked.
Why these: ``docs/propagation.md``, "Where it is unsure".
"""

from __future__ import annotations

from collections.abc import Sequence

#: A slice with a confidence below this is listed (within the budget).
DOUBTFUL = 0.5


def review_slices(steps: Sequence) -> tuple[int, ...]:
    """The slices to check, most doubtful first, from a walk's steps (:class:`SliceStep`)."""
    masked = {s.slice_index: s for s in steps if s.mask is not None}
    if not masked:
        return ()
    order = sorted(masked)
    budget = max(1, len(order) // 4)
    confidence = {z: 1.0 if s.confidence is None else float(s.confidence) for z, s in masked.items()}
    risk: dict[int, float] = {}
    for i, z in enumerate(order):
        neighbours = [confidence[order[j]] for j in (i - 1, i + 1) if 0 <= j < len(order)]
        drop = min(neighbours) - confidence[z] if neighbours else 0.0
        risk[z] = (1.0 - confidence[z]) + max(drop, 0.0)
    stopped = {s.slice_index for s in steps if s.stop is not None}
    ends = [
        z for z in (order[0], order[-1]) if z - 1 in stopped or z + 1 in stopped or z in (order[0], order[-1])
    ]
    doubtful = [z for z in sorted(risk, key=risk.get, reverse=True) if confidence[z] < DOUBTFUL]
    listed = list(dict.fromkeys(sorted(set(ends), key=risk.get, reverse=True) + doubtful))
    return tuple(listed[: max(budget, len(set(ends)))])
