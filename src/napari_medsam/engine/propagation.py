"""From one segmented slice to a 3D object: propagation, and segmenting given boxes slice by slice.

Qt-free. :func:`propagate` and :func:`segment_boxes` are generators in the stardist-napari style:
they yield a :class:`SliceStep` per slice (progress, cancellable by not iterating further) and
*return* the 3D boolean mask; :func:`~napari_medsam.base.jobs.run_to_end` drives one synchronously.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np

from napari_medsam.base.boxes import BoxXYXY, box_union, expand_box, mask_box, normalise_box
from napari_medsam.base.jobs import relay, run_to_end
from napari_medsam.base.metrics import iou
from napari_medsam.base.slicing import check_axis, take_slice
from napari_medsam.base.windows import AUTO, WindowArg, resolve_window
from napari_medsam.engine.predictor import SlicePredictor
from napari_medsam.engine.prefetch import Lookahead

logger = logging.getLogger(__name__)

#: Whether propagation feeds the previous slice's low-resolution logits back (``mask_input``) by
#: family. MedSAM and LiteMedSAM were trained on boxes only. SAM is untested here (no SAM weights
#: offline), so it stays off until measured.
PREVIOUS_LOGITS_DEFAULT: dict[str, bool] = {"medsam": False, "lite-medsam": False, "sam": False}
#: The default pixel margin of a propagated box, as a fraction of the slice's longer side.
MARGIN_OF_LONGER_SIDE = 0.025
#: A correction removes the part only the old mask has (attached to the new one) when that part's
#: likeness is below this fraction of the new mask's: it looks clearly less like the object.
LEAK_FRACTION = 0.5


class StopReason(str, Enum):
    """Why a direction of a walk ended at a slice (compares equal to its value: ``"low score"``)."""

    EMPTY = "empty"
    SMALL = "small"
    LOW_SCORE = "low score"
    MOVED = "moved"
    UNLIKE = "unlike"
    AGREES = "agrees"

    def __str__(self) -> str:
        return self.value


_STOP_MESSAGES = {
    StopReason.EMPTY: "nothing found, stopping this direction",
    StopReason.SMALL: "mask too small ({area} px), stopping",
    StopReason.LOW_SCORE: "low predicted IoU, stopping",
    StopReason.MOVED: "the mask left the object of the slice before, stopping",
    StopReason.UNLIKE: "the mask looks like the key slice's surroundings, not the object: stopping",
    StopReason.AGREES: "agrees with the object as it was, stopping",
}


@dataclass(frozen=True)
class PropagationRules:
    """How a walk prompts each slice and where it stops; the reasons are in ``docs/propagation.md``.

    Prompt: the previous mask's box grown by ``max(margin * side, margin_pixels)`` per side
    (``margin_pixels`` None: :data:`MARGIN_OF_LONGER_SIDE` of the slice's longer side), grown again
    (never shrunk) at most ``max_refine`` times while the mask reaches past it; when the mask's
    likeness (:meth:`Appearance.likeness`) falls below ``retry`` times the key mask's own, the
    previous mask's box without margin is tried too and the more object-like mask kept. Stops
    (None turns one off): ``unlike`` -- likeness below it (0: the mask looks more like the key
    slice's box background than the key object); ``min_overlap`` -- ``overlap`` with the previous
    mask below it; ``score_drop`` -- predicted IoU below that fraction of the object's best;
    ``min_score`` -- below that value; ``min_area_fraction`` -- area below that fraction of the key
    mask's.
    """

    margin: float = 0.05
    margin_pixels: float | None = None
    max_refine: int = 4
    unlike: float | None = 0.0
    retry: float = 0.0
    min_overlap: float | None = 0.5
    score_drop: float | None = None
    min_score: float | None = None
    min_area_fraction: float = 0.1

    def __post_init__(self) -> None:
        negative = self.margin_pixels is not None and self.margin_pixels < 0
        if self.margin < 0 or negative or self.max_refine < 0:
            raise ValueError("margin, margin_pixels and max_refine must be >= 0")
        if not 0.0 <= self.min_area_fraction <= 1.0:
            raise ValueError(f"min_area_fraction must be in [0, 1], got {self.min_area_fraction}")
        if self.min_overlap is not None and not 0.0 <= self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in [0, 1] or None, got {self.min_overlap}")

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
    (a :class:`StopReason`), else None, ``score`` the model's predicted IoU (None for a key mask
    given as such) and ``likeness`` how much more the mask's features resemble the key object than
    the key slice's box background (cosine similarities; None where not measured).
    """

    slice_index: int
    done: int
    total: int
    area: int
    mask: np.ndarray | None
    box: BoxXYXY | None
    stop: StopReason | None = None
    score: float | None = None
    likeness: float | None = None

    @property
    def message(self) -> str:
        """One line for a status bar (slice numbers as array indices)."""
        return self.describe(f"slice {self.slice_index}")

    def describe(self, where: str) -> str:
        """One line for a status bar, the slice named ``where`` (a view's own numbering)."""
        if self.stop is None:
            return f"{where}: {self.area} px"
        return f"{where}: " + _STOP_MESSAGES[StopReason(self.stop)].format(area=self.area)


@dataclass(frozen=True)
class Appearance:
    """The key object's look in the model's features, and its key box background's."""

    inside: np.ndarray | None
    around: np.ndarray | None

    @classmethod
    def of(cls, predictor: SlicePredictor, mask: np.ndarray, box: BoxXYXY) -> Appearance:
        """From the key mask and its grown box on the predictor's current slice."""
        return cls(predictor.features(mask), predictor.features(box_mask(box, mask.shape) & ~mask))

    def likeness(self, features: np.ndarray | None) -> float | None:
        """cos(features, object) - cos(features, background); None when any is missing."""
        if features is None or self.inside is None or self.around is None:
            return None
        return _cosine(features, self.inside) - _cosine(features, self.around)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def box_mask(box: BoxXYXY, shape: tuple[int, ...]) -> np.ndarray:
    """The pixels of ``shape`` (H, W) inside ``box`` (x0, y0, x1, y1), ends included."""
    x0, y0, x1, y1 = (round(v) for v in box)
    out = np.zeros(shape, dtype=bool)
    out[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
    return out


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
    agree_with: np.ndarray | None = None,
    agree: float = 0.9,
    rules: PropagationRules | None = None,
    **overrides: Any,
) -> Generator[SliceStep, None, np.ndarray]:
    """Segment one object through a volume, starting from a key slice.

    The key slice is segmented with ``key_box`` (or taken from ``key_mask``, whose predicted IoU
    may come as ``key_score``). The key mask's features (the model's embedding averaged over it)
    and those of the rest of its grown box are the object's and its surroundings' look. Then each
    direction walks slice by slice (``rules``, :class:`PropagationRules`; ``overrides`` replace
    single fields, e.g. ``min_overlap=None``):

    1. **Prompt**: the previous mask's box plus the margin; of the new mask only the connected
       pieces that overlap the previous mask are kept; the box grows (never shrinks) while the
       mask reaches past it, at most ``max_refine`` times. When the grown box's mask looks less
       like the object than the mask of the first box (below), the first one is kept.
    2. **Stops**: a direction ends at the first slice whose mask is empty (``EMPTY``), touches
       nothing of the previous mask or overlaps it less than ``min_overlap`` (``MOVED``), looks
       more like the key slice's surroundings than the key object (``UNLIKE``: likeness < 0), or
       fails an optional score or area rule; at the volume's end or after ``max_slices`` slices;
       with ``agree_with`` (the object as it was, a boolean mask of the volume's shape) at the
       first slice whose new mask has IoU >= ``agree`` with it (``AGREES``; :func:`correct`).
       The slice that stopped a direction is left out.

    With ``use_previous_logits`` the previous low-resolution logits go in as ``mask_input``
    (default per family, :data:`PREVIOUS_LOGITS_DEFAULT`). ``window`` is passed to ``set_image``
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
    if agree_with is not None and np.shape(agree_with) != shape:
        raise ValueError(f"agree_with has shape {np.shape(agree_with)}, the volume {shape}")
    old = None if agree_with is None else np.moveaxis(np.asarray(agree_with, dtype=bool), axis, 0)
    if max_slices is not None and max_slices < 0:
        raise ValueError(f"max_slices must be >= 0 or None, got {max_slices}")
    if use_previous_logits is None:
        use_previous_logits = PREVIOUS_LOGITS_DEFAULT.get(str(predictor.family), False)
    window = resolve_window(window, volume)
    plane = tuple(s for i, s in enumerate(shape) if i != axis)
    grown = rules.grower(plane)
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
    look = (
        Appearance.of(predictor, first, grown(first)) if rules.unlike is not None else Appearance(None, None)
    )
    key_likeness = look.likeness(look.inside) or 0.0
    view[key_slice] = first
    yield SliceStep(key_slice, done, total, key_area, first, box, None, score, key_likeness)
    best = score  # the object's best predicted IoU so far, both directions
    with Lookahead(predictor, volume, axis, window) as ahead:  # the next slice encodes while this one decodes
        for direction in (1, -1):
            mask, previous_logits = first, logits
            z = key_slice + direction
            while 0 <= z < depth and abs(z - key_slice) <= limit:
                predictor.set_image(take_slice(volume, z, axis), window)
                if abs(z + direction - key_slice) <= limit:
                    ahead.submit(z + direction)
                feed = previous_logits if use_previous_logits else None
                ranked = [
                    (_likeness(look, predictor, c[0]), c)
                    for c in prompt_candidates(predictor, mask, grown, rules, feed)
                ]
                likeness, (new, box, score, new_logits, raw_any) = max(ranked, key=_rank)
                if (
                    rules.unlike is not None
                    and likeness is not None
                    and likeness < rules.retry * key_likeness
                ):
                    tight = prompt_candidates(
                        predictor, mask, mask_box, PropagationRules(max_refine=0), feed
                    )[0]
                    again = _likeness(look, predictor, tight[0])
                    if again is not None and again > likeness:
                        likeness, (new, box, score, new_logits, raw_any) = again, tight
                area = int(new.sum())
                done += 1
                stop = _stop(rules, new, mask, area, key_area, score, best, likeness, raw_any)
                if stop is None and old is not None and iou(new, old[z]) >= agree:
                    stop = StopReason.AGREES
                if stop is not None:
                    logger.info("propagation stops at slice %d (%s)", z, stop)
                    yield SliceStep(z, done, total, area, None, box, stop, score, likeness)
                    break
                view[z] = new
                yield SliceStep(z, done, total, area, new, box, None, score, likeness)
                mask, previous_logits, best = new, new_logits, max(score, best or 0.0)
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


def _likeness(look: Appearance, predictor: SlicePredictor, mask: np.ndarray) -> float | None:
    """The mask's likeness to the object on the current slice (None: empty, or not measured)."""
    return look.likeness(predictor.features(mask)) if mask.any() else None


def _rank(candidate: tuple[float | None, tuple]) -> tuple[bool, float]:
    """Sort key of a (likeness, candidate): non-empty first, then more like the object (ties: the first)."""
    likeness, (mask, *_) = candidate
    return (bool(mask.any()), 0.0 if likeness is None else likeness)


def _stop(
    rules: PropagationRules,
    new: np.ndarray,
    previous: np.ndarray,
    area: int,
    key_area: int,
    score: float,
    best: float | None,
    likeness: float | None,
    raw_any: bool,
) -> StopReason | None:
    """Why the walk ends at a slice with mask ``new`` (None: it goes on)."""
    if area == 0:
        return StopReason.MOVED if raw_any else StopReason.EMPTY
    if rules.min_overlap is not None and overlap(new, previous) < rules.min_overlap:
        return StopReason.MOVED
    if rules.unlike is not None and likeness is not None and likeness < rules.unlike:
        return StopReason.UNLIKE
    floor = max(
        rules.min_score if rules.min_score is not None else 0.0,
        rules.score_drop * best if rules.score_drop is not None and best is not None else 0.0,
    )
    if score < floor:
        return StopReason.LOW_SCORE
    if area < rules.min_area_fraction * key_area:
        return StopReason.SMALL
    return None


def correct(
    predictor: SlicePredictor,
    volume: Any,
    labels: np.ndarray,
    label_id: int,
    slice_index: int,
    box: Sequence[float],
    *,
    axis: int = 0,
    window: WindowArg = AUTO,
    agree: float = 0.9,
    **options: Any,
) -> Generator[SliceStep, None, np.ndarray]:
    """Correct object ``label_id`` of a label volume from a box on one slice; return new labels.

    The slice takes the box's mask, and the object is propagated from it both ways
    (:func:`propagate`, ``options`` passed on). Each direction changes the old object only while
    the new masks are better supported than the old ones: a slice where the object was missing
    takes the new mask (the correction extends an object that stopped short); on a slice that had
    the object, the part only the old mask has is removed if it lies apart from the new mask or
    looks clearly less like the object than the new mask (:data:`LEAK_FRACTION` of its likeness,
    :class:`Appearance`, the measure propagation stops on), and the
    part only the new one has is added if it looks like it; at the first slice where nothing is
    supported, or the masks agree (IoU >= ``agree``: the walk stops there,
    ``AGREES``), the old object is kept from there on. Where the new walk ends, the old object's
    slices beyond are removed only while they fail the same rule (likeness < 0: they lay past the
    object). Other objects' voxels are never taken. Yields a :class:`SliceStep` per slice visited;
    returns a copy of ``labels`` (the caller writes the slices that changed, as one undo step). A
    box that finds nothing raises ValueError with what to do.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(np.shape(volume)):
        raise ValueError(f"labels have shape {labels.shape}, the volume {np.shape(volume)}")
    axis = check_axis(axis, 3)
    window = resolve_window(window, volume)
    old_z = np.moveaxis(labels == label_id, axis, 0)
    steps: list[SliceStep] = []

    def kept(step: SliceStep) -> SliceStep:
        steps.append(step)
        return step

    walk = propagate(
        predictor, volume, slice_index, key_box=box, axis=axis, window=window, agree_with=labels == label_id,
        agree=agree, **options,
    )  # fmt: skip
    new = yield from relay(walk, kept)
    new_z = np.moveaxis(new, axis, 0)
    if not new_z[slice_index].any():
        raise ValueError(
            f"the box on slice {slice_index} found nothing to correct object {label_id} with: draw it "
            "around the object as it should be on that slice"
        )
    rules = replace(PropagationRules(), **{k: v for k, v in options.items() if k in _RULE_FIELDS})
    look = _look(predictor, volume, axis, window, slice_index, new_z[slice_index], rules)
    merged = old_z.copy()
    merged[slice_index] = new_z[slice_index]
    for direction in (1, -1):
        for step in (s for s in steps if (s.slice_index - slice_index) * direction > 0):
            z, was = step.slice_index, old_z[step.slice_index]
            if step.stop == StopReason.AGREES:
                break
            if step.stop is not None:
                _clear_unlike(predictor, volume, axis, window, look, old_z, merged, z, direction)
                break
            if not was.any():
                merged[z] = new_z[z]
                continue
            if iou(new_z[z], was) >= agree:
                break
            predictor.set_image(take_slice(volume, z, axis), window)
            merged[z] = _supported(predictor, look, was, new_z[z])
            if np.array_equal(merged[z], was):
                break
    out = labels.copy()
    out_z = np.moveaxis(out, axis, 0)
    out_z[old_z & ~merged] = 0
    out_z[merged & (out_z == 0)] = label_id
    return out


_RULE_FIELDS = frozenset(PropagationRules.__dataclass_fields__)


def _look(
    predictor: SlicePredictor,
    volume: Any,
    axis: int,
    window: tuple[float, float] | None,
    z: int,
    mask: np.ndarray,
    rules: PropagationRules,
) -> Appearance:
    """The :class:`Appearance` of ``mask`` on slice ``z``, with its box grown as propagation grows it."""
    predictor.set_image(take_slice(volume, z, axis), window)
    return Appearance.of(predictor, mask, rules.grower(mask.shape)(mask))


def _supported(predictor: SlicePredictor, look: Appearance, was: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The old mask ``was`` with the new mask's changes that the object's look supports: the part
    only the old one has goes if it lies apart from the new mask (another structure, as in
    propagation) or looks clearly less like the object than the new mask (:data:`LEAK_FRACTION`);
    the part only the new one has comes if it looks like it."""
    out = was.copy()
    gone, added = was & ~new, new & ~was
    near = new.copy()  # the new mask grown by one pixel (8-connected)
    near[1:] |= new[:-1]
    near[:-1] |= new[1:]
    near[:, 1:] |= near[:, :-1].copy()
    near[:, :-1] |= near[:, 1:].copy()
    attached = touching(gone, near)
    out &= ~(gone & ~attached)  # pieces apart from the new mask: another structure (propagation's rule)
    kept = look.likeness(predictor.features(new)) if new.any() else None
    bar = 0.0 if kept is None else min(0.0, kept) + LEAK_FRACTION * max(kept, 0.0)
    if (
        attached.any()
        and (likeness := look.likeness(predictor.features(attached))) is not None
        and likeness < bar
    ):
        out &= ~attached
    if added.any() and (likeness := look.likeness(predictor.features(added))) is not None and likeness >= 0:
        out |= added
    return out


def _clear_unlike(
    predictor: SlicePredictor,
    volume: Any,
    axis: int,
    window: tuple[float, float] | None,
    look: Appearance,
    old_z: np.ndarray,
    merged: np.ndarray,
    z: int,
    direction: int,
) -> None:
    """From slice ``z`` on in ``direction``, remove the old object while it looks unlike it."""
    while 0 <= z < len(old_z) and old_z[z].any():
        predictor.set_image(take_slice(volume, z, axis), window)
        likeness = look.likeness(predictor.features(old_z[z]))
        if likeness is None or likeness >= 0:
            return
        merged[z] = False
        z += direction


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
