"""From one segmented slice to a 3D object: propagation, and segmenting given boxes slice by slice.

Qt-free. :func:`propagate` and :func:`segment_boxes` are generators in the stardist-napari style:
they yield a :class:`SliceStep` per slice (progress, cancellable by not iterating further) and
*return* the 3D boolean mask; :func:`~napari_medsam.base.jobs.run_to_end` drives one synchronously.
A walk learns the object's look in this scan as it goes (:mod:`~napari_medsam.engine.object_model`)
and rates every slice it gives a mask (``SliceStep.confidence``), from which
:mod:`~napari_medsam.engine.review` lists the slices to check.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np

from napari_medsam.base.boxes import BoxXYXY, box_union, expand_box, mask_box, normalise_box
from napari_medsam.base.jobs import run_to_end
from napari_medsam.base.object_edits import ObjectEdits
from napari_medsam.base.slicing import check_axis, take_slice
from napari_medsam.base.windows import AUTO, WindowArg, resolve_window
from napari_medsam.engine.object_model import Evidence, ObjectModel, agreement, objectness
from napari_medsam.engine.predictor import SlicePredictor
from napari_medsam.engine.prefetch import Lookahead
from napari_medsam.models.families import family_spec

logger = logging.getLogger(__name__)

#: The default pixel margin of a propagated box, as a fraction of the slice's longer side.
MARGIN_OF_LONGER_SIDE = 0.025
#: A cell of a slice the user vouched for (key, anchor) counts this many times a walk's own cell.
USER_WEIGHT = 4.0


class StopReason(str, Enum):
    """Why a direction of a walk ended at a slice (compares equal to its value: ``"low score"``)."""

    EMPTY = "empty"
    SMALL = "small"
    LOW_SCORE = "low score"
    MOVED = "moved"
    UNLIKE = "unlike"
    END = "end"
    AGREES = "agrees"

    def __str__(self) -> str:
        return self.value


_STOP_MESSAGES = {
    StopReason.EMPTY: "nothing found, stopping this direction",
    StopReason.SMALL: "mask too small ({area} px), stopping",
    StopReason.LOW_SCORE: "low predicted IoU, stopping",
    StopReason.MOVED: "the mask left the object of the slice before, stopping",
    StopReason.UNLIKE: "the mask looks like the object's surroundings in this scan, not the object: stopping",
    StopReason.END: "the object's end you set, stopping",
    StopReason.AGREES: "agrees with the object as it was, stopping",
}


@dataclass(frozen=True)
class PropagationRules:
    """How a walk prompts each slice and where it stops; the reasons are in ``docs/propagation.md``.

    Prompt: the previous mask's box grown by ``max(margin * side, margin_pixels)`` per side
    (``margin_pixels`` None: :data:`MARGIN_OF_LONGER_SIDE` of the slice's longer side), grown again
    (never shrunk) at most ``max_refine`` times while the mask reaches past it; the previous mask's
    own box (no margin) is tried too, so a mask can shrink with its object. Of these the mask that
    agrees best with the object-like cells of the slice is kept (the object model:
    :class:`~napari_medsam.engine.object_model.ObjectModel`, fitted on the key slice, the anchors
    reached and the last ``memory`` slices of the walk). Stops (None turns one off): ``unlike`` --
    less than that share of the mask's cells look like the object; ``min_overlap`` -- ``overlap``
    with the previous mask below it; ``score_drop`` -- predicted IoU below that fraction of the
    object's best; ``min_score`` -- below that value; ``min_area_fraction`` -- area below that
    fraction of the key mask's.
    """

    margin: float = 0.05
    margin_pixels: float | None = None
    max_refine: int = 4
    unlike: float | None = 0.5
    memory: int = 2
    min_overlap: float | None = 0.5
    score_drop: float | None = None
    min_score: float | None = None
    min_area_fraction: float = 0.1

    def __post_init__(self) -> None:
        negative = self.margin_pixels is not None and self.margin_pixels < 0
        if self.margin < 0 or negative or self.max_refine < 0 or self.memory < 0:
            raise ValueError("margin, margin_pixels, max_refine and memory must be >= 0")
        if not 0.0 <= self.min_area_fraction <= 1.0:
            raise ValueError(f"min_area_fraction must be in [0, 1], got {self.min_area_fraction}")
        for name in ("min_overlap", "unlike"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] or None, got {value}")

    def grower(self, plane: tuple[int, ...]) -> Callable[[np.ndarray], BoxXYXY]:
        """The prompt of the slice after a mask on slices of shape ``plane``: its box plus the margin."""
        pad = MARGIN_OF_LONGER_SIDE * max(plane) if self.margin_pixels is None else float(self.margin_pixels)

        def grown(mask: np.ndarray) -> BoxXYXY:
            return expand_box(mask_box(mask), plane, self.margin, pad)  # type: ignore[arg-type]

        return grown


@dataclass(frozen=True)
class SliceStep:
    """Progress after one slice: ``done`` of at most ``total`` slices visited.

    ``slice_index`` is the array index along the walk's axis. ``mask`` is the slice's mask (None
    when the slice ended a direction), ``box`` the prompt used, ``stop`` why a direction ended there
    (a :class:`StopReason`), else None, ``score`` the model's predicted IoU (None for a mask given
    as such: the key mask, an anchor), ``objectness`` the share of the mask's cells that look like
    the object (the walk's object model; None where not measured) and ``confidence`` how well the
    mask agrees with what looks like the object on its slice (0..1; 1 for a mask the user gave).
    """

    slice_index: int
    done: int
    total: int
    area: int
    mask: np.ndarray | None
    box: BoxXYXY | None
    stop: StopReason | None = None
    score: float | None = None
    objectness: float | None = None
    confidence: float | None = None

    @property
    def message(self) -> str:
        """One line for a status bar (slice numbers as array indices)."""
        return self.describe(f"slice {self.slice_index}")

    def describe(self, where: str) -> str:
        """One line for a status bar, the slice named ``where`` (a view's own numbering)."""
        if self.stop is None:
            return f"{where}: {self.area} px"
        return f"{where}: " + _STOP_MESSAGES[StopReason(self.stop)].format(area=self.area)


def box_mask(box: BoxXYXY, shape: tuple[int, ...]) -> np.ndarray:
    """The pixels of ``shape`` (H, W) inside ``box`` (x0, y0, x1, y1), ends included."""
    x0, y0, x1, y1 = (round(v) for v in box)
    out = np.zeros(shape, dtype=bool)
    out[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
    return out


#: The surroundings an object is told from: its box grown by this fraction of its side on each side.
SURROUNDINGS = 1.0


def evidence(
    predictor: SlicePredictor,
    mask: np.ndarray,
    weight: float = 1.0,
    not_object: np.ndarray | None = None,
    object_like: np.ndarray | None = None,
) -> Evidence:
    """The current slice's cells sorted by ``mask`` (:class:`~napari_medsam.engine.object_model.Evidence`):
    the object's cells, and as its surroundings the other cells within its box grown by
    :data:`SURROUNDINGS` of its side (what a walk must tell it from, not the far side of the slice)."""
    shape = np.shape(mask)
    valid = predictor.coverage(np.ones(shape, dtype=bool)) > 0.5
    box = mask_box(mask)
    if box is not None:
        valid &= predictor.coverage(box_mask(expand_box(box, shape, SURROUNDINGS, 1.0), shape)) > 0
    return Evidence.of(predictor.cells(), predictor.coverage(mask), valid, not_object, weight, object_like)


@dataclass(frozen=True)
class Visit:
    """What a walk found on one slice: the chosen mask and why, before the stop rules."""

    mask: np.ndarray
    box: BoxXYXY
    score: float
    logits: np.ndarray
    raw_any: bool
    objectness: float | None
    confidence: float | None


class Tracker:
    """One object followed from slice to slice: the prompt rules and the object model it learns.

    ``trusted`` is the evidence of the slices the user vouched for (key, anchors); the last
    ``rules.memory`` slices the walk accepted (:meth:`accept`) join them when the model is fitted.
    """

    def __init__(
        self,
        predictor: SlicePredictor,
        rules: PropagationRules,
        plane: tuple[int, int],
        trusted: Sequence[Evidence],
        use_previous_logits: bool = False,
    ) -> None:
        self.predictor, self.rules, self.plane = predictor, rules, plane
        self.grown = rules.grower(plane)
        self.trusted = list(trusted)
        self.recent: deque[Evidence] = deque(maxlen=rules.memory)
        self.use_previous_logits = use_previous_logits
        self._model: tuple[ObjectModel | None] | None = None  # fitted on what it has learnt so far
        self._scored: tuple[np.ndarray, ObjectModel, np.ndarray] | None = None  # cells, model, scores

    def model(self) -> ObjectModel | None:
        """The object model from the trusted slices and the walk's last ones (None: not enough)."""
        if self.rules.unlike is None:
            return None
        if self._model is None:
            self._model = (ObjectModel.fit([*self.trusted, *self.recent]),)
        return self._model[0]

    def _scores(self, model: ObjectModel) -> np.ndarray:
        """``model``'s score of each cell of the current slice; the last one is kept, so a slice's
        visit and the learning from it that follows score the slice once."""
        cells = self.predictor.cells()
        if self._scored is None or self._scored[0] is not cells or self._scored[1] is not model:
            self._scored = (cells, model, model.score(cells))
        return self._scored[2]

    def visit(self, previous: np.ndarray, previous_logits: np.ndarray | None = None) -> Visit:
        """The mask of the current slice (``predictor.set_image`` done) that follows ``previous``."""
        predictor, rules = self.predictor, self.rules
        feed = previous_logits if self.use_previous_logits else None
        candidates = prompt_candidates(predictor, previous, self.grown, rules, feed)
        tight = replace(rules, max_refine=0)
        candidates.append(prompt_candidates(predictor, previous, mask_box, tight, feed)[0])
        model = self.model()
        if model is None:
            new, box, score, logits, raw_any = candidates[0]
            return Visit(new, box, score, logits, raw_any, None, None)
        scores = self._scores(model)
        reach = candidates[0][1]
        for candidate in candidates[1:]:
            reach = box_union(reach, candidate[1])
        around = predictor.coverage(box_mask(reach, self.plane))
        rated = []
        for new, box, score, logits, raw_any in candidates:
            cover = predictor.coverage(new) if new.any() else np.zeros_like(around)
            rated.append(
                (
                    bool(new.any()),
                    agreement(scores, cover, around),
                    objectness(scores, cover),
                    (new, box, score, logits, raw_any),
                )
            )
        _, fit, share, (new, box, score, logits, raw_any) = max(rated, key=lambda r: (r[0], r[1]))
        return Visit(new, box, score, logits, raw_any, share, fit)

    def accept(self, mask: np.ndarray) -> None:
        """Learn from the current slice's accepted ``mask``: the part of it the model already calls
        object-like, against its surroundings (the object's look drifts along a walk; a mask that
        slid onto a neighbour teaches nothing of the neighbour)."""
        if self.rules.unlike is None or not self.rules.memory:
            return
        model = self.model()
        like = None if model is None else self._scores(model) > 0
        self.recent.append(evidence(self.predictor, mask, object_like=like))
        self._model = None

    def anchor(self, mask: np.ndarray) -> None:
        """Learn from the current slice's ``mask`` that the user gave (an anchor)."""
        if self.rules.unlike is not None:
            self.trusted.append(evidence(self.predictor, mask, USER_WEIGHT))
            self.recent.clear()
            self._model = None

    def stop(
        self, visit: Visit, previous: np.ndarray, key_area: int, best: float | None
    ) -> StopReason | None:
        """Why the walk ends at a slice with ``visit`` (None: it goes on)."""
        rules, new = self.rules, visit.mask
        area = int(new.sum())
        if area == 0:
            return StopReason.MOVED if visit.raw_any else StopReason.EMPTY
        if rules.min_overlap is not None and overlap(new, previous) < rules.min_overlap:
            return StopReason.MOVED
        if rules.unlike is not None and visit.objectness is not None and visit.objectness < rules.unlike:
            return StopReason.UNLIKE
        floor = max(
            rules.min_score if rules.min_score is not None else 0.0,
            rules.score_drop * best if rules.score_drop is not None and best is not None else 0.0,
        )
        if visit.score < floor:
            return StopReason.LOW_SCORE
        if area < rules.min_area_fraction * key_area:
            return StopReason.SMALL
        return None


def interpolate_boxes(key_boxes: Mapping[int, Sequence[float]]) -> dict[int, BoxXYXY]:
    """Boxes for every slice from the first to the last key slice, linear between key slices.

    Key slices keep their own box (normalised so that x0 <= x1 and y0 <= y1).
    """
    if not key_boxes:
        raise ValueError("interpolate_boxes needs at least one key box")
    keys = sorted(int(k) for k in key_boxes)
    boxes = {k: normalise_box(key_boxes[k]) for k in keys}
    out: dict[int, BoxXYXY] = {keys[0]: boxes[keys[0]]}
    for a, b in itertools.pairwise(keys):
        start, stop = np.asarray(boxes[a]), np.asarray(boxes[b])
        for z in range(a + 1, b + 1):
            t = (z - a) / (b - a)
            out[z] = tuple(float(v) for v in (1.0 - t) * start + t * stop)  # type: ignore[assignment]
    return out


def propagate(
    predictor: SlicePredictor,
    volume: Any,
    key_slice: int,
    key_box: Sequence[float] | None = None,
    key_mask: np.ndarray | None = None,
    *,
    key_score: float | None = None,
    axis: int = 0,
    window: WindowArg = AUTO,
    max_slices: int | None = None,
    use_previous_logits: bool | None = None,
    rules: PropagationRules | None = None,
    edits: ObjectEdits | None = None,
    anchors: Mapping[int, np.ndarray] | None = None,
    **overrides: Any,
) -> Generator[SliceStep, None, np.ndarray]:
    """Segment one object through a volume, starting from a key slice.

    The key slice is segmented with ``key_box`` (or taken from ``key_mask``, whose predicted IoU
    may come as ``key_score``). Then each direction walks slice by slice (``rules``,
    :class:`PropagationRules`; ``overrides`` replace single fields, e.g. ``min_overlap=None``):

    1. **Prompt**: the previous mask's box plus the margin, grown (never shrunk) while the mask
       reaches past it, and the previous mask's own box; of each mask only the connected pieces
       that overlap the previous mask are kept. The mask that agrees best with the cells that
       look like the object (the object model, learnt from the key slice, the anchors and the
       last slices of the walk) is chosen.
    2. **Stops**: a direction ends at the first slice whose mask is empty (``EMPTY``), touches
       nothing of the previous mask or overlaps it less than ``min_overlap`` (``MOVED``), looks
       more like the object's surroundings than the object (``UNLIKE``), or fails an optional
       score or area rule; at the volume's end, after ``max_slices`` slices, or at an end the
       user set (``edits``, ``END``). The slice that stopped a direction is left out.

    ``anchors`` (slice -> mask; the slices of ``edits.anchors`` the user made or corrected) are
    fixed points: the walk takes them as they are, learns from them and goes on from them; an
    empty one (the object erased there since) is none.
    With ``use_previous_logits`` the previous low-resolution logits go in as ``mask_input``
    (default: the family's, ``FamilySpec.previous_logits``). ``window`` is passed to ``set_image``
    for every slice: ``"auto"`` is MedSAM's training window for the volume
    (:func:`~napari_medsam.base.windows.training_window`), None each slice's own min..max.
    Yields a :class:`SliceStep` per slice; returns a boolean mask of the volume's shape.
    Why these rules and not others: ``docs/propagation.md``.
    """
    rules = replace(rules or PropagationRules(), **overrides)
    shape = tuple(np.shape(volume))
    if len(shape) != 3:
        raise ValueError(f"volume must be 3D, got shape {shape}")
    axis = check_axis(axis, 3)
    depth = shape[axis]
    key_slice = int(key_slice)
    if not 0 <= key_slice < depth:
        raise ValueError(f"key_slice {key_slice} is outside 0..{depth - 1} along axis {axis}")
    if (key_box is None) == (key_mask is None):
        raise ValueError("give exactly one of key_box and key_mask")
    if max_slices is not None and max_slices < 0:
        raise ValueError(f"max_slices must be >= 0 or None, got {max_slices}")
    edits = edits or ObjectEdits()
    anchors = {int(z): np.asarray(m, dtype=bool) for z, m in (anchors or {}).items() if int(z) != key_slice}
    anchors = {z: m for z, m in anchors.items() if m.any()}  # an erased object's slice fixes nothing
    if use_previous_logits is None:
        use_previous_logits = family_spec(predictor.family).previous_logits
    window = resolve_window(window, volume)
    plane = tuple(s for i, s in enumerate(shape) if i != axis)
    if any(m.shape != plane for m in anchors.values()):
        raise ValueError(f"anchor masks must have the slices' shape {plane}")
    limit = depth if max_slices is None else max_slices
    total = 1 + min(depth - 1 - key_slice, limit) + min(key_slice, limit)

    result = np.zeros(shape, dtype=bool)
    view = np.moveaxis(result, axis, 0)
    logits, score = None, key_score
    if key_mask is not None and np.shape(key_mask) != plane:
        raise ValueError(f"key_mask has shape {np.shape(key_mask)}, slices have shape {plane}")
    predictor.set_image(take_slice(volume, key_slice, axis), window)
    if key_mask is not None:
        first = np.asarray(key_mask, dtype=bool)
        box = mask_box(first)
    else:
        box = normalise_box(key_box)  # type: ignore[arg-type]
        prediction = predictor.predict(box=box)
        first, logits = np.asarray(prediction.mask, dtype=bool), prediction.logits
        score = float(prediction.score)
    key_area = int(first.sum())
    done = 1
    if key_area == 0:
        yield SliceStep(key_slice, done, done, 0, None, box, StopReason.EMPTY, score)
        return result
    trusted = [evidence(predictor, first, USER_WEIGHT)] if rules.unlike is not None else []
    view[key_slice] = first
    yield SliceStep(key_slice, done, total, key_area, first, box, None, score, 1.0, 1.0)
    best = score  # the object's best predicted IoU so far, both directions
    with Lookahead(predictor, volume, axis, window) as ahead:  # the next slice encodes while this one decodes
        for direction in (1, -1):
            tracker = Tracker(predictor, rules, plane, trusted, use_previous_logits)  # type: ignore[arg-type]
            mask, previous_logits = first, logits
            z = key_slice + direction
            while 0 <= z < depth and abs(z - key_slice) <= limit:
                done += 1
                if not edits.allows(z):
                    yield SliceStep(z, done, total, 0, None, None, StopReason.END)
                    break
                predictor.set_image(take_slice(volume, z, axis), window)
                if abs(z + direction - key_slice) <= limit and 0 <= z + direction < depth:
                    ahead.submit(z + direction)
                if z in anchors:
                    mask, previous_logits = anchors[z], None
                    tracker.anchor(mask)
                    view[z] = mask
                    yield SliceStep(
                        z, done, total, int(mask.sum()), mask, mask_box(mask), None, None, 1.0, 1.0
                    )
                    z += direction
                    continue
                visit = tracker.visit(mask, previous_logits)
                area = int(visit.mask.sum())
                stop = tracker.stop(visit, mask, key_area, best)
                if stop is not None:
                    logger.info("propagation stops at slice %d (%s)", z, stop)
                    yield SliceStep(
                        z, done, total, area, None, visit.box, stop, visit.score, visit.objectness
                    )
                    break
                tracker.accept(visit.mask)
                view[z] = visit.mask
                yield SliceStep(
                    z,
                    done,
                    total,
                    area,
                    visit.mask,
                    visit.box,
                    None,
                    visit.score,
                    visit.objectness,
                    visit.confidence,
                )
                mask, previous_logits, best = visit.mask, visit.logits, max(visit.score, best or 0.0)
                z += direction
    return result


def prompt_candidates(
    predictor: SlicePredictor,
    previous: np.ndarray,
    grown: Callable[[np.ndarray], BoxXYXY],
    rules: PropagationRules,
    mask_input: np.ndarray | None,
) -> list[tuple[np.ndarray, BoxXYXY, float, np.ndarray, bool]]:
    """(mask, box, score, logits, raw mask non-empty) of the grown box, then of the first box.

    The first box is ``grown(previous)``; only the pieces touching ``previous`` are kept; the box
    grows while the mask reaches past it, at most ``rules.max_refine`` times."""
    box = grown(previous)
    out = []
    for _ in range(1 + rules.max_refine):
        prediction = predictor.predict(box=box, mask_input=mask_input)
        raw = np.asarray(prediction.mask, dtype=bool)
        new = touching(raw, previous)
        out.append((new, box, float(prediction.score), prediction.logits, bool(raw.any())))
        if not new.any():
            break
        joined = box_union(box, grown(new))
        if np.allclose(joined, box):
            break
        box = joined
    return [out[-1], out[0]] if len(out) > 1 else out


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """``|a & b| / min(|a|, |b|)``: 1 when the smaller mask lies inside the other (0 if one is empty)."""
    smaller = min(int(np.count_nonzero(a)), int(np.count_nonzero(b)))
    return 0.0 if smaller == 0 else float(np.count_nonzero(a & b)) / smaller


def touching(mask: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The connected pieces (8-connected) of ``mask`` that overlap ``previous``."""
    if not mask.any() or (mask & ~previous).sum() == 0:
        return mask
    from skimage.measure import label

    pieces = label(mask, connectivity=2)
    kept = np.unique(pieces[mask & previous])
    return np.isin(pieces, kept[kept > 0])


def label_volume(
    predictor: SlicePredictor,
    volume: Any,
    key_slice: int,
    key_masks: Sequence[np.ndarray],
    *,
    propagate_objects: bool = True,
    axis: int = 0,
    window: WindowArg = AUTO,
    callback: Callable[[SliceStep], Any] | None = None,
    key_scores: Sequence[float | None] | None = None,
    **options: Any,
) -> np.ndarray:
    """A label volume of objects 1..N from their masks on ``key_slice`` (CLI, cohorts, scripts).

    Each object is propagated on its own from its own key mask (:func:`propagate`, with its
    ``key_scores`` entry as ``key_score`` and ``options`` passed on), or kept on the key slice
    alone without ``propagate_objects``; so an object's mask does not depend on the others.
    Where objects overlap, the earlier one keeps the voxel.
    """
    shape = tuple(np.shape(volume))
    axis = check_axis(axis, len(shape))
    window = resolve_window(window, volume) if propagate_objects else None
    masks = []
    scores = [None] * len(key_masks) if key_scores is None else list(key_scores)
    for key_mask, key_score in zip(key_masks, scores, strict=True):
        if propagate_objects:
            steps = propagate(
                predictor, volume, key_slice, key_mask=key_mask, key_score=key_score, axis=axis,
                window=window, **options,
            )  # fmt: skip
            masks.append(run_to_end(steps, callback))
        else:
            mask = np.zeros(shape, dtype=bool)
            np.moveaxis(mask, axis, 0)[key_slice] = key_mask
            masks.append(mask)
    return stack_labels(masks, shape)


def stack_labels(masks: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Objects 1..N from boolean masks of ``shape``: where they overlap, the earlier keeps the voxel."""
    out = np.zeros(shape, dtype=np.uint8 if len(masks) < 2**8 else np.uint16)
    for label, mask in enumerate(masks, start=1):
        out[np.asarray(mask, dtype=bool) & (out == 0)] = label
    return out


def segment_boxes(
    predictor: SlicePredictor,
    volume: Any,
    boxes: Mapping[int, Sequence[float]],
    *,
    axis: int = 0,
    window: WindowArg = AUTO,
) -> Generator[SliceStep, None, np.ndarray]:
    """Segment each slice ``z`` of ``volume`` with ``boxes[z]`` (see :func:`interpolate_boxes`).

    ``window`` as for :func:`propagate`. Yields a :class:`SliceStep` per slice; returns one
    boolean mask of the volume's shape.
    """
    shape = tuple(np.shape(volume))
    if len(shape) != 3:
        raise ValueError(f"volume must be 3D, got shape {shape}")
    axis = check_axis(axis, 3)
    slices = sorted(int(z) for z in boxes)
    bad = [z for z in slices if not 0 <= z < shape[axis]]
    if bad:
        raise ValueError(f"slices {bad} are outside 0..{shape[axis] - 1} along axis {axis}")
    window = resolve_window(window, volume)
    result = np.zeros(shape, dtype=bool)
    view = np.moveaxis(result, axis, 0)
    for done, z in enumerate(slices, start=1):
        box = normalise_box(boxes[z])
        predictor.set_image(take_slice(volume, z, axis), window)
        prediction = predictor.predict(box=box)
        mask = np.asarray(prediction.mask, dtype=bool)
        view[z] = mask
        yield SliceStep(z, done, len(slices), int(mask.sum()), mask, box, None, float(prediction.score))
    return result
