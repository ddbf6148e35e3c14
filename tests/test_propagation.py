"""Propagation through slices and box interpolation: logic on a stand-in, Dice with LiteMedSAM."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import numpy as np
import pytest

from conftest import dice
from fakes import BoxFillingPredictor, OnePiecePredictor, ThresholdPredictor
from napari_medsam.base.boxes import box_union, expand_box, mask_box
from napari_medsam.base.jobs import relay, run_to_end
from napari_medsam.engine.propagation import interpolate_boxes, label_volume, propagate, segment_boxes
from napari_medsam.models.families import family_spec


def ellipsoid_volume(shape=(20, 64, 72), centre=(10.0, 30.0, 36.0), radii=(6.5, 16.0, 20.0), seed=0):
    """HU-like volume: an ellipsoid of +100 over N(40, 20) noise; returns (volume, truth)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    truth = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0
    volume = rng.normal(40.0, 20.0, shape)
    volume[truth] += 100.0
    return volume.astype(np.int16), truth


def truth_box(truth2d, margin=3.0):
    x0, y0, x1, y1 = mask_box(truth2d)
    return (x0 - margin, y0 - margin, x1 + margin, y1 + margin)


def clean(volume, truth):
    """The same object without noise (the stand-in then segments it exactly)."""
    return np.where(truth, 140, 40).astype(np.int16)


def test_propagation_recovers_the_object_and_stops_at_its_ends():
    volume, truth = ellipsoid_volume()
    predictor = ThresholdPredictor()
    steps = []
    result = run_to_end(propagate(predictor, volume, 10, key_box=truth_box(truth[10])), steps.append)
    assert result.shape == volume.shape
    assert result.dtype == bool
    assert dice(result, truth) > 0.97
    object_slices = np.flatnonzero(truth.any(axis=(1, 2)))
    assert set(np.flatnonzero(result.any(axis=(1, 2)))) <= set(object_slices)
    # it visited the object plus one slice past each end, where the mask became too small
    visited = sorted(step.slice_index for step in steps)
    assert visited[0] >= object_slices[0] - 1
    assert visited[-1] <= object_slices[-1] + 1
    assert sum(s.stop in ("small", "empty", "moved", "unlike") for s in steps) == 2
    assert (steps[0].slice_index, steps[0].done) == (10, 1)
    assert [s.done for s in steps] == list(range(1, len(steps) + 1))
    assert all(s.done <= s.total == volume.shape[0] for s in steps)


def cone(depth=16, size=80, grow=1.0, shift=0.5, start=4.0):
    """A cone along axis 0 whose radius grows and whose centre moves by ``shift`` per slice."""
    zz, yy, xx = np.mgrid[:depth, :size, :size]
    radius = start + grow * zz
    return (yy - 20 - shift * zz) ** 2 + (xx - size // 2) ** 2 <= radius**2


def test_boxes_follow_a_growing_and_moving_object():
    truth = cone()
    volume = clean(None, truth)
    predictor = ThresholdPredictor()
    result = run_to_end(propagate(predictor, volume, 0, key_box=truth_box(truth[0], 1), max_refine=0))
    assert dice(result, truth) == 1.0  # the grown box always caught up with the object
    assert truth[-1].sum() > 10 * truth[0].sum()  # (and the key slice's box alone would not)
    # on each slice the first box was the previous mask's box grown by max(5 % of its side, 2.5 % of
    # 80 px = 2 px), the last the previous mask's own box (so a mask can shrink with its object)
    by_slice = {}
    for (box, _), visit in zip(predictor.calls, predictor.call_slices, strict=True):
        by_slice.setdefault(visit, []).append(box)
    for z, previous in enumerate(result[:-1]):
        boxes = by_slice[z + 2]  # slice z + 1 was the (z + 2)-th set
        assert boxes[0] == expand_box(mask_box(previous), truth.shape[1:], 0.05, 2.0)
        assert boxes[-1] == mask_box(previous)


def test_refinement_grows_the_box_where_the_object_continues_past_it():
    truth = cone(grow=3.0, shift=0.0)  # faster than any margin: the first box cuts the object
    volume = clean(None, truth)
    key = truth_box(truth[0], 1)
    cut = run_to_end(propagate(ThresholdPredictor(), volume, 0, key_box=key, max_refine=0))
    predictor = ThresholdPredictor()
    grown = run_to_end(propagate(predictor, volume, 0, key_box=key))
    assert dice(cut, truth) < 0.9
    assert dice(grown, truth) > 0.99
    assert len(predictor.calls) > len(predictor.slices_set)  # some slices were refined
    # within a slice a refined box only ever holds the one before it (the last box of a slice is
    # the previous mask's own, tried beside them)
    calls = list(zip(predictor.call_slices, (box for box, _ in predictor.calls), strict=True))
    refined = [c for c, after in itertools.pairwise([*calls, (None, None)]) if after[0] == c[0]]
    for (slice_a, before), (slice_b, after) in itertools.pairwise(refined):
        if slice_a == slice_b:
            assert box_union(before, after) == tuple(after)


def test_margins_do_not_add_up_into_a_leak():
    """A model that fills its box: the prompt is the previous box plus a margin, so the mask may
    grow by that margin per slice, never by a fraction plus pixels compounded on every slice."""
    truth = cone(grow=-0.2, shift=0.0, start=12.0)  # a slowly shrinking object
    volume = clean(None, truth)
    result = run_to_end(propagate(BoxFillingPredictor(), volume, 0, key_box=truth_box(truth[0], 1)))
    widths = [np.ptp(np.flatnonzero(plane.any(axis=0))) for plane in result if plane.any()]
    assert widths[-1] <= 1.3 * widths[0]


def test_propagation_stops_where_an_organ_ends_against_a_touching_one():
    """The organ ends against another of the same intensity: past its end the box holds only the
    neighbour's edge, which the previous slice did not touch; the stand-in scores it 1.0 (as a
    model may on data it was not tuned to), so only the overlap rules can stop there."""
    from scipy import ndimage

    from napari_medsam.base.phantoms import touching_objects_volume

    _, ending, continuing = touching_objects_volume()
    volume = np.where(ending | continuing, 140, 40).astype(np.int16)
    last = int(np.flatnonzero(ending.any(axis=(1, 2)))[-1])
    for z in range(last - 3, last + 1):  # its last slices lie against the neighbour, 1 px apart
        assert (ndimage.binary_dilation(ending[z], iterations=2) & continuing[z]).any()
        assert not (ndimage.binary_dilation(ending[z]) & continuing[z]).any()
    key = int(np.argmax(ending.sum(axis=(1, 2))))
    steps = []
    steps_of = propagate(OnePiecePredictor(), volume, key, key_box=truth_box(ending[key]))
    result = run_to_end(steps_of, steps.append)
    assert not (result & continuing).any()  # never on the neighbour
    masked = np.flatnonzero(result.any(axis=(1, 2)))
    assert masked[0] == 0
    assert masked[-1] <= last
    assert dice(result, ending) > 0.98
    # past its end only the neighbour's edge is in the box: it touches nothing of the previous mask
    # (the grown box) or is a sliver of it (the previous mask's own box)
    stops = [(s.slice_index, s.stop in ("moved", "small")) for s in steps if s.stop]
    assert stops == [(masked[-1] + 1, True)]


def test_pieces_the_previous_slice_did_not_touch_are_dropped():
    """A second structure enters the box beside the object: it is left out of the mask, and so
    the next box does not grow onto it."""
    truth = cone(depth=12, grow=0.0, shift=0.0, start=10.0)
    other = np.zeros_like(truth)
    other[6:, 8:12, 28:32] = True  # in the object's box from slice 6 on, in a corner, apart from it
    volume = clean(None, truth | other)
    result = run_to_end(propagate(ThresholdPredictor(), volume, 0, key_box=truth_box(truth[0])))
    np.testing.assert_array_equal(result, truth)


def test_a_mask_that_moves_off_the_previous_one_ends_the_direction():
    """Consecutive masks that overlap less than ``min_overlap`` are not one structure."""
    truth = np.zeros((8, 60, 60), bool)
    for z in range(8):
        x = 5 + (z // 4) * 9  # the object moves 9 of its 12 px between slices 3 and 4
        truth[z, 20:32, x : x + 12] = True

    class Jumping(ThresholdPredictor):
        def predict(self, box=None, mask_input=None, **kwargs):
            result = super().predict(box, mask_input=mask_input)
            return replace(result, mask=self.image > self.threshold)  # finds the object wherever it is

    steps = []
    volume, key_box = clean(None, truth), truth_box(truth[0])
    result = run_to_end(propagate(Jumping(), volume, 0, key_box=key_box), steps.append)
    np.testing.assert_array_equal(np.flatnonzero(result.any(axis=(1, 2))), [0, 1, 2, 3])
    assert (steps[-1].slice_index, steps[-1].stop) == (4, "moved")
    loose = run_to_end(propagate(Jumping(), volume, 0, key_box=key_box, min_overlap=None))
    np.testing.assert_array_equal(loose, truth)  # pieces that overlap at all are kept


def test_a_walk_stops_where_the_mask_looks_like_the_surroundings_not_the_object():
    """Past the object's end a model still outlines something in the box, with a high score: the
    walk stops there because that mask's features are the key box background's ("unlike")."""
    volume, truth = ellipsoid_volume()
    volume = clean(volume, truth)
    tip = int(np.flatnonzero(truth.any(axis=(1, 2)))[-1])

    class Outlining(ThresholdPredictor):
        """Past the object it outlines the middle of its box (background), scoring 0.95."""

        def predict(self, box=None, mask_input=None, **kwargs):
            result = super().predict(box, mask_input=mask_input)
            result = replace(result, score=0.95)
            if not result.mask.any():
                x0, y0, x1, y1 = (int(v) for v in box)
                result.mask[y0 + 1 : y1, x0 + 1 : x1] = True
            return result

    steps = []
    result = run_to_end(propagate(Outlining(), volume, 10, key_box=truth_box(truth[10])), steps.append)
    assert [(s.slice_index, s.stop) for s in steps if s.slice_index > 10 and s.stop] == [(tip + 1, "unlike")]
    assert not result[tip + 1 :].any()
    assert "surroundings" in next(s.message for s in steps if s.stop == "unlike")
    np.testing.assert_array_equal(result, truth)
    loose = run_to_end(propagate(Outlining(), volume, 10, key_box=truth_box(truth[10]), unlike=None))
    assert loose[tip + 1 :].any()  # without the rule it runs on


def test_min_score_ends_a_direction():
    volume, truth = ellipsoid_volume()

    class Scoring(ThresholdPredictor):
        def predict(self, box=None, mask_input=None, **kwargs):
            result = super().predict(box, mask_input=mask_input)
            return replace(result, score=0.9 if (self.image > 100).sum() > 300 else 0.6)

    kept = np.flatnonzero(((volume > 100).sum(axis=(1, 2))) > 300)
    steps = []
    result = run_to_end(
        propagate(Scoring(), volume, 10, key_box=truth_box(truth[10]), min_score=0.8),
        steps.append,
    )
    np.testing.assert_array_equal(np.flatnonzero(result.any(axis=(1, 2))), kept)
    assert [s.stop for s in steps if s.stop] == ["low score", "low score"]
    assert "low predicted IoU" in steps[-1].message


def test_min_area_fraction_and_max_slices_end_a_direction():
    volume, truth = ellipsoid_volume()
    volume = clean(volume, truth)
    predictor = ThresholdPredictor()
    areas = truth.sum(axis=(1, 2))
    result = run_to_end(propagate(predictor, volume, 10, key_box=truth_box(truth[10]), min_area_fraction=0.5))
    kept = np.flatnonzero(result.any(axis=(1, 2)))
    np.testing.assert_array_equal(kept, np.flatnonzero(areas >= 0.5 * areas[10]))
    limited = ThresholdPredictor()
    steps = []
    result = run_to_end(
        propagate(limited, volume, 10, key_box=truth_box(truth[10]), max_slices=2), steps.append
    )
    np.testing.assert_array_equal(np.flatnonzero(result.any(axis=(1, 2))), [8, 9, 10, 11, 12])
    assert len(limited.slices_set) == 5
    assert steps[-1].total == 5


def test_an_empty_key_mask_gives_an_empty_result_without_walking():
    volume, _ = ellipsoid_volume()
    predictor = ThresholdPredictor(threshold=1e9)
    steps = []
    result = run_to_end(propagate(predictor, volume, 10, key_box=(5, 5, 20, 20)), steps.append)
    assert not result.any()
    assert [s.stop for s in steps] == ["empty"]
    assert len(predictor.slices_set) == 1


def test_an_anchor_slice_where_the_object_was_erased_fixes_nothing():
    """The widget passes every anchor slice's mask: one the user erased since (empty) is no fixed
    point (a walk once crashed on it, having no box to go on from); the walk goes on as without it."""
    volume = np.full((9, 48, 48), 40, np.int16)
    volume[1:8, 12:36, 12:36] = 140
    walk = dict(key_box=(12, 12, 35, 35), window=(0.0, 200.0))
    empty = {6: np.zeros((48, 48), bool)}
    erased = run_to_end(propagate(ThresholdPredictor(), volume, 4, anchors=empty, **walk))
    plain = run_to_end(propagate(ThresholdPredictor(), volume, 4, **walk))
    np.testing.assert_array_equal(erased, plain)
    assert np.flatnonzero(plain.any(axis=(1, 2))).tolist() == list(range(1, 8))


def test_key_mask_is_kept_and_other_axes_work():
    volume, truth = ellipsoid_volume()
    volume = clean(volume, truth)
    predictor = ThresholdPredictor()
    key = truth[10].copy()
    key[:, : key.shape[1] // 2] = False  # an edited key mask is kept as drawn
    result = run_to_end(propagate(predictor, volume, 10, key_mask=key))
    np.testing.assert_array_equal(result[10], key)
    # the object's slices, the two that stopped, and the key once (for its look), not twice
    assert len(predictor.slices_set) == np.count_nonzero(truth.any(axis=(1, 2))) + 2
    # slicing along the last axis of a transposed volume gives the transposed result
    moved = np.moveaxis(volume, 0, 2)
    on_axis = run_to_end(propagate(ThresholdPredictor(), moved, 10, key_box=truth_box(truth[10]), axis=2))
    plain = run_to_end(propagate(ThresholdPredictor(), volume, 10, key_box=truth_box(truth[10])))
    np.testing.assert_array_equal(on_axis, np.moveaxis(plain, 0, 2))


def test_previous_logits_are_fed_back_only_when_asked():
    volume, truth = ellipsoid_volume()
    box = truth_box(truth[10])
    assert family_spec("lite-medsam").previous_logits is False
    assert family_spec("medsam").previous_logits is False
    default = ThresholdPredictor(family="medsam")
    run_to_end(propagate(default, volume, 10, key_box=box))
    assert all(mask_input is None for _, mask_input in default.calls)
    feeding = ThresholdPredictor()
    run_to_end(propagate(feeding, volume, 10, key_box=box, use_previous_logits=True))
    inputs = [mask_input for _, mask_input in feeding.calls]
    assert inputs[0] is None  # the key slice has no previous slice
    # going up, every prompt of slice 11 gets the logits of the key slice's mask (call 1), and every
    # prompt of slice 12 those of one of slice 11's prompts (the stand-in's logits count its calls)
    on = {}
    calls = zip(feeding.calls, feeding.call_slices, strict=True)
    for number, ((_, mask_input), visit) in enumerate(calls, 1):
        on.setdefault(visit, []).append((number, mask_input))
    assert {float(m[0, 0]) for _, m in on[2]} == {1.0}
    assert {float(m[0, 0]) for _, m in on[3]} <= {float(n) for n, _ in on[2]}


def test_stopping_iteration_cancels_the_remaining_slices():
    volume, truth = ellipsoid_volume()
    predictor = ThresholdPredictor()
    steps = propagate(predictor, volume, 10, key_box=truth_box(truth[10]))
    next(steps), next(steps), next(steps)
    steps.close()
    assert len(predictor.slices_set) == 3


def test_relay_gives_job_tuples_and_the_result():
    volume, truth = ellipsoid_volume()
    steps = propagate(ThresholdPredictor(), volume, 10, key_box=truth_box(truth[10]))
    job = relay(steps, lambda step: (step.done, step.total, f"A: {step.message}"))
    progress = []
    result = run_to_end(job, progress.append)
    assert progress[0] == (1, 20, f"A: slice 10: {int(result[10].sum())} px")
    assert [p[0] for p in progress] == list(range(1, len(progress) + 1))
    assert sum("stopping" in p[2] for p in progress) == 2
    assert dice(result, truth) > 0.97


def test_bad_arguments_raise_value_error():
    volume, _ = ellipsoid_volume()
    predictor = ThresholdPredictor()
    with pytest.raises(ValueError, match="outside"):
        next(propagate(predictor, volume, 20, key_box=(1, 1, 5, 5)))
    with pytest.raises(ValueError, match="exactly one"):
        next(propagate(predictor, volume, 3))
    with pytest.raises(ValueError, match="3D"):
        next(propagate(predictor, volume[0], 3, key_box=(1, 1, 5, 5)))
    with pytest.raises(ValueError, match="key_mask has shape"):
        next(propagate(predictor, volume, 3, key_mask=np.ones((4, 4), bool)))
    with pytest.raises(ValueError, match="min_area_fraction"):
        next(propagate(predictor, volume, 3, key_box=(1, 1, 5, 5), min_area_fraction=2))
    assert predictor.slices_set == []


def test_label_volume_numbers_objects_in_order_and_propagates_each_alone():
    volume, truth = ellipsoid_volume()
    second = np.zeros_like(truth)
    second[6:13, 50:60, 5:15] = True
    volume = np.where(truth | second, 140, 40).astype(np.int16)
    labels = label_volume(ThresholdPredictor(), volume, 10, [second[10], truth[10]])
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels == 1, second)
    np.testing.assert_array_equal(labels == 2, truth)
    alone = label_volume(ThresholdPredictor(), volume, 10, [truth[10]])
    np.testing.assert_array_equal(alone == 1, truth)  # the same mask as with the other object
    key_only = label_volume(ThresholdPredictor(), volume, 10, [truth[10]], propagate_objects=False)
    np.testing.assert_array_equal(key_only[10] == 1, truth[10])
    assert not key_only[:10].any()
    assert not key_only[11:].any()


def test_interpolate_boxes_is_linear_between_key_slices():
    boxes = interpolate_boxes({8: (10, 20, 30, 40), 4: (30, 0, 10, 20), 10: (10, 20, 30, 40)})
    assert sorted(boxes) == list(range(4, 11))
    assert boxes[4] == (10.0, 0.0, 30.0, 20.0)  # corners put in order
    assert boxes[6] == (10.0, 10.0, 30.0, 30.0)
    assert boxes[5] == pytest.approx((10.0, 5.0, 30.0, 25.0))
    assert boxes[9] == (10.0, 20.0, 30.0, 40.0)
    assert interpolate_boxes({3: (1, 2, 3, 4)}) == {3: (1.0, 2.0, 3.0, 4.0)}
    with pytest.raises(ValueError, match="at least one"):
        interpolate_boxes({})
    with pytest.raises(ValueError, match="4 finite numbers"):
        interpolate_boxes({1: (1, 2, 3)})


def test_segment_boxes_between_two_key_slices_gives_one_object():
    # a box-shaped object sliding diagonally: key boxes on slices 2 and 12 only
    depth = 16
    truth = np.zeros((depth, 60, 60), bool)
    for z in range(2, 13):
        truth[z, 10 + 2 * z // 2 : 25 + z, 5 + z : 20 + 2 * z] = True
    volume = clean(None, truth)
    keys = {z: truth_box(truth[z], 2) for z in (2, 12)}
    predictor = ThresholdPredictor()
    steps = []
    result = run_to_end(segment_boxes(predictor, volume, interpolate_boxes(keys)), steps.append)
    assert [s.slice_index for s in steps] == list(range(2, 13))
    assert dice(result, truth) > 0.97
    assert not result[:2].any()
    assert not result[13:].any()
    with pytest.raises(ValueError, match="outside"):
        next(segment_boxes(predictor, volume, {16: (1, 1, 5, 5)}))


# -- the real LiteMedSAM -------------------------------------------------------------------------
@pytest.mark.slow
def test_propagation_with_litemedsam_segments_an_ellipsoid(
    tmp_path, lite_predictor_model, lite_embeddings, lite_store
):
    """A phantom written as NIfTI and as DICOM, box on the middle slice: 3D Dice >= 0.88, at most
    one slice past each end of the ellipsoid."""
    import SimpleITK as sitk

    from napari_medsam.engine.predictor import MedSamPredictor
    from napari_medsam.io.volumes import VolumeGeometry, read_volume
    from test_volume_io import write_dicom_series

    shape, spacing, origin = (11, 128, 128), (3.0, 0.8, 0.7), (-20.0, 5.0, 7.5)
    volume, truth = ellipsoid_volume(shape, centre=(5.0, 60.0, 66.0), radii=(4.3, 34.0, 26.0))
    geometry = VolumeGeometry.identity(shape, spacing=spacing, origin=origin)
    sitk.WriteImage(geometry.apply_to(sitk.GetImageFromArray(volume)), str(tmp_path / "ct.nii.gz"))
    write_dicom_series(tmp_path / "dicom", volume, spacing, origin)
    nifti, _ = read_volume(tmp_path / "ct.nii.gz")
    dicom, dicom_geometry = read_volume(tmp_path / "dicom")
    np.testing.assert_array_equal(dicom, nifti)
    np.testing.assert_allclose(dicom_geometry.spacing, spacing, atol=1e-6)

    predictor = MedSamPredictor(lite_predictor_model, cache=lite_embeddings, store=lite_store)
    key = 5
    steps = []
    start = time.perf_counter()
    result = run_to_end(
        propagate(predictor, dicom, key, key_box=truth_box(truth[key], 5), window=(-160, 240)),
        steps.append,
    )
    elapsed = time.perf_counter() - start
    score = dice(result, truth)
    print(
        f"LiteMedSAM propagation: {len(steps)} slices in {elapsed:.1f} s "
        f"({len(steps) / elapsed:.2f} slices/s), 3D Dice {score:.3f}"
    )
    assert score >= 0.88  # measured 0.893: the tips kept, and one slice past each end
    masked = np.flatnonzero(result.any(axis=(1, 2)))
    present = np.flatnonzero(truth.any(axis=(1, 2)))
    assert np.sum((masked < present[0]) | (masked > present[-1])) <= 2  # measured: one past each end
    # Again from the cache: decoder only, the same masks
    encoder_calls = []
    predictor.model.encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    again = run_to_end(propagate(predictor, dicom, key, key_box=truth_box(truth[key], 5), window=(-160, 240)))
    assert encoder_calls == []
    np.testing.assert_array_equal(again, result)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 31's walk learns the object's look from its last slices: on this phantom (two organs "
    "of one intensity, noise around) the masks of the ending organ's last two slices take in noise, which "
    "the walk learns, and it runs on over noise to the volume's end; docs/propagation.md",
)
def test_litemedsam_stops_where_an_organ_ends_against_a_touching_one(lite_predictor_model):
    """The touching-organs phantom with the real model, the defaults: at most one slice past the
    ending organ, none on the organ it touches."""
    from napari_medsam.base.phantoms import touching_objects_volume
    from napari_medsam.engine.predictor import MedSamPredictor

    volume, ending, continuing = touching_objects_volume(depth=16)
    key = int(np.argmax(ending.sum(axis=(1, 2))))
    predictor = MedSamPredictor(lite_predictor_model)
    result = run_to_end(propagate(predictor, volume, key, key_box=truth_box(ending[key]), window=(-160, 240)))
    last = int(np.flatnonzero(ending.any(axis=(1, 2)))[-1])
    masked = np.flatnonzero(result.any(axis=(1, 2)))
    assert masked[-1] <= last + 1
    assert not any((result[z] & continuing[z]).sum() > 0.5 * result[z].sum() for z in masked)
    assert dice(result, ending) >= 0.9


def test_a_correction_replaces_the_object_only_where_it_was_wrong():
    """An object that leaked onto a neighbour on slices 8-19 (past its end at 16): a box on slice 12
    removes the leak where the object is (it looks unlike the object), keeps the run past the end
    (End here cuts that), and stops where the new masks agree with the old ones: the slices below
    are not even read."""
    from napari_medsam.engine.corrections import correct

    volume, truth = ellipsoid_volume()
    blob = np.zeros_like(truth)
    blob[8:, 54:64, 0:40] = True
    volume = np.where(blob & ~truth, 100, clean(volume, truth)).astype(np.int16)  # bright, not the object
    labels = np.zeros(truth.shape, np.uint8)
    labels[truth | blob] = 2
    labels[:8] = np.where(truth[:8], 2, 0)
    labels[0:3, 2:6, 2:6] = 1  # another object, untouched
    before = labels.copy()
    predictor = ThresholdPredictor()
    steps = []
    done = run_to_end(correct(predictor, volume, labels, 2, 12, truth_box(truth[12])), steps.append)
    fixed = done.labels
    assert dice(before == 2, truth) < 0.85
    np.testing.assert_array_equal(fixed[:17] == 2, truth[:17])  # the leak is gone where the object is
    np.testing.assert_array_equal(fixed[17:], before[17:])  # past its end: kept (End here cuts it)
    np.testing.assert_array_equal(fixed == 1, before == 1)
    np.testing.assert_array_equal(fixed[:8], before[:8])  # agreed from slice 7 down: kept as it was
    np.testing.assert_array_equal(labels, before)  # the input is not modified
    assert done.changed == tuple(range(8, 17))
    assert done.edits.anchors == {12}
    assert min(s.slice_index for s in steps) == 7
    assert [s.stop for s in steps if s.slice_index == 7] == ["agrees"]
    assert "agrees" in next(s.message for s in steps if s.slice_index == 7)
    with pytest.raises(ValueError, match="found nothing to correct object 2 with"):  # a box on background
        run_to_end(correct(predictor, volume, labels, 2, 12, (2.0, 40.0, 8.0, 46.0)))
