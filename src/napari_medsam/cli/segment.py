"""``napari-medsam segment``: boxes and clicks on an image or a volume slice, optionally propagated."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_medsam.base.atomic import write_text
from napari_medsam.base.label_policy import AFTER, BEFORE, add_objects, check_label_image, end_object
from napari_medsam.base.object_edits import ObjectEdits
from napari_medsam.base.objects import LabelObject, default_name, present_ids
from napari_medsam.base.pixels import check_finite_slices
from napari_medsam.base.stats import object_stats
from napari_medsam.cli.common import add_model_options, add_window_options, fetch_model, window_for
from napari_medsam.io.files import check_folder, check_output, overwritten_inputs, read_image, write_mask
from napari_medsam.io.formats import WRITE_SUFFIXES, suffix_of
from napari_medsam.io.stats_files import STATS_SUFFIXES, write_stats
from napari_medsam.io.volumes import VolumeGeometry
from napari_medsam.models.families import FAMILIES


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``segment`` subcommand."""
    segment = commands.add_parser("segment", help="segment objects in an image or a volume slice")
    segment.add_argument(
        "image", help="image (.npy .tif .png .jpg) or volume (.nii(.gz) .nrrd .mha .dcm, DICOM folder)"
    )
    segment.add_argument(
        "--box",
        nargs=4,
        type=float,
        action="append",
        metavar=("X0", "Y0", "X1", "Y1"),
        help="box in pixels (x = column, y = row); repeat for several objects (label ids 1..N in order)",
    )
    segment.add_argument(
        "--name",
        action="append",
        metavar="NAME",
        help="name of the object of each --box, in order (once per --box, or not at all)",
    )
    segment.add_argument(
        "--point",
        nargs=3,
        type=float,
        action="append",
        metavar=("X", "Y", "LABEL"),
        help="click in pixels, LABEL 1 = foreground, 0 = background; repeatable",
    )
    segment.add_argument("--slice", type=int, help="slice index for volumes")
    segment.add_argument("--axis", type=int, default=0, help="slice axis for volumes (default 0)")
    add_window_options(segment)
    segment.add_argument("--family", choices=FAMILIES, help="override the model family")
    segment.add_argument("--propagate", action="store_true", help="propagate the object through the volume")
    segment.add_argument(
        "--labels",
        metavar="IN",
        help="continue from existing labels (.nii.gz .nrrd .mha with their .labels.json, .seg.nrrd, "
        "DICOM-SEG .dcm) on the image's grid: they are kept as they are, with their names and colours; "
        "the new objects get the next free ids and fill only unlabelled voxels",
    )
    segment.add_argument(
        "--correct",
        type=int,
        metavar="ID",
        help="with --labels and one --box on --slice: re-segment object ID on that slice and change its "
        "other slices only where the box supports it (the slices that changed are printed); the slice "
        "becomes a fixed point of later corrections, kept with the labels",
    )
    segment.add_argument(
        "--end",
        type=int,
        metavar="ID",
        help="with --labels, --slice Z and --side: end object ID at slice Z, removing it from every slice "
        "before or after Z (no model runs); the rest is kept",
    )
    segment.add_argument(
        "--side", choices=[BEFORE, AFTER], help="with --end: remove the object before or after --slice"
    )
    segment.add_argument(
        "--review-json",
        metavar="FILE",
        help="with --propagate: write each object's slices to check and per-slice confidence to FILE (.json)",
    )
    segment.add_argument(
        "-o",
        "--output",
        required=True,
        help="mask file: .png .tif .npy, or .nii.gz .nrrd .mha (geometry kept, names in "
        "<output>.labels.json), .seg.nrrd (3D Slicer), .dcm (DICOM Segmentation of a DICOM series input)",
    )
    segment.add_argument(
        "--stats",
        metavar="FILE",
        help="also write per-object statistics to FILE.csv or FILE.json "
        "(label, name, voxels, volume_ml, slices, mean_intensity)",
    )
    add_model_options(segment)
    segment.add_argument("--store", help="embedding store (.zarr) to read and fill")
    segment.set_defaults(func=run_segment, parser=segment)


def _slice_of(image: np.ndarray, args: argparse.Namespace) -> tuple[np.ndarray, bool]:
    """The 2D slice to segment and whether the input is a volume."""
    is_rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    if image.ndim == 2 or is_rgb:
        if args.slice is not None:
            raise ValueError(f"--slice given but the image is 2D (shape {image.shape})")
        return image, False
    if image.ndim != 3:
        raise ValueError(f"expected a 2D image or a 3D volume, got shape {image.shape}")
    if args.axis not in (0, 1, 2):
        raise ValueError(f"--axis {args.axis}: a volume has the axes 0, 1 and 2")
    if args.slice is None:
        raise ValueError(f"the input is a volume of shape {image.shape}; pass --slice Z")
    depth = image.shape[args.axis]
    if not 0 <= args.slice < depth:
        raise ValueError(
            f"--slice {args.slice} is outside the volume (0..{depth - 1} along axis {args.axis})"
        )
    return np.take(image, args.slice, axis=args.axis), True


def _points(args: argparse.Namespace) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not args.point:
        return None, None
    values = np.asarray(args.point, dtype=np.float64)
    if not np.isin(values[:, 2], (0, 1)).all():
        raise ValueError("--point LABEL must be 1 (foreground) or 0 (background)")
    return values[:, :2], values[:, 2].astype(np.int64)


def object_names(args: argparse.Namespace) -> dict[int, str]:
    """Label id -> ``--name`` (ids 1..N in ``--box`` order); an argparse error (exit 2) on a miscount."""
    names, boxes = args.name or [], args.box or []
    if names and len(names) != len(boxes):
        args.parser.error(f"give --name once per --box ({len(boxes)}), or not at all; got {len(names)}")
    return {i: name for i, name in enumerate(names, start=1)}


def existing_labels(
    path: Path, shape: tuple[int, ...], geometry: VolumeGeometry | None
) -> tuple[np.ndarray, list[LabelObject]]:
    """The ``--labels`` file on the image's grid and its objects; ValueError when it is not on it."""
    from napari_medsam.io.label_files import load_labels

    if geometry is None:
        raise ValueError(f"--labels {path.name}: continuing needs a volume image, with its geometry")
    labels, placed, objects = load_labels(path, [geometry])
    labels = check_label_image(labels, f"--labels {path.name}")
    if labels.shape != shape or not placed.same_grid(geometry):
        raise ValueError(
            f"--labels {path.name}: these labels (shape {labels.shape}) do not lie on the image's grid "
            f"(shape {shape}); give the labels made on this image"
        )
    return labels, objects


def check_correction(args: argparse.Namespace, existing: np.ndarray | None) -> None:
    """ValueError unless ``--correct ID`` has what it needs: --labels holding ID, --slice, one --box."""
    if existing is None:
        raise ValueError("--correct ID needs the labels to correct: --labels IN")
    if args.slice is None or not args.box or len(args.box) != 1 or args.point:
        raise ValueError("--correct ID takes one --box on the slice to correct (--slice Z), no --point")
    if not np.any(existing == args.correct):
        raise ValueError(f"--correct {args.correct}: {args.labels} has no object {args.correct}")


def corrected(
    args: argparse.Namespace,
    predictor: Any,
    image: np.ndarray,
    existing: np.ndarray,
    window: Any,
    edits: ObjectEdits,
) -> tuple[np.ndarray, ObjectEdits]:
    """The labels with object ``--correct`` re-segmented from the ``--box`` on ``--slice``, and its edits."""
    from napari_medsam.base.jobs import run_to_end
    from napari_medsam.engine.edits import ObjectEditor

    editor = ObjectEditor(predictor, image, axis=args.axis, window=window)
    done = run_to_end(editor.correct(existing, args.correct, args.slice, args.box[0], edits))
    print(f"corrected object {args.correct} on {len(done.changed)} slice(s): {list(done.changed)}")
    if done.far:
        print(
            f"note: the correction also changed slice(s) {list(done.far)}, more than one slice from "
            f"slice {args.slice}: check them"
        )
    return done.labels, done.edits


def print_reviews(
    args: argparse.Namespace, steps: list[Any], names: dict[int, str], ids: dict[int, int]
) -> None:
    """Print (and with ``--review-json`` write) each propagated object's slices to check; the
    ``n``-th walk's object has label ``ids[n]`` in the output (``--labels`` objects come first)."""
    from napari_medsam.engine.review import review_slices

    walks: list[list[Any]] = []
    for step in steps:
        if step.done == 1:
            walks.append([])
        walks[-1].append(step)
    entries = []
    for number, walk in enumerate(walks, start=1):
        label = ids.get(number, number)
        review = review_slices(walk)
        confidence = {s.slice_index: round(s.confidence, 3) for s in walk if s.confidence is not None}
        name = names.get(label, default_name(label))
        print(f"{name}: check slice(s) {list(review)} first" if review else f"{name}: nothing to check")
        entries.append({"label": label, "name": name, "review": list(review), "confidence": confidence})
    if args.review_json:
        report = {"axis": args.axis, "objects": entries}
        write_text(Path(args.review_json), json.dumps(report, indent=2) + "\n")


def check_outputs(
    args: argparse.Namespace, image: np.ndarray, geometry: VolumeGeometry | None, is_volume: bool
) -> None:
    """Refuse, before the model loads, outputs that cannot be written or would replace an input,
    and NaN or infinite values on the slices the run reaches (ValueError naming what to change)."""
    volume_file = suffix_of(args.output) in (*WRITE_SUFFIXES, ".npy", ".tif", ".tiff")
    edits = args.labels is not None or args.correct is not None or args.end is not None
    whole = is_volume and (args.propagate or edits)
    inputs = [Path(args.image)]
    dicom = geometry is not None and bool(geometry.source_files)
    check_output(Path(args.output), inputs, dimensions=3 if whole or (is_volume and volume_file) else 2,
                 dicom_series=dicom)  # fmt: skip
    if args.review_json and not args.propagate:
        raise ValueError("--review-json lists the slices of a walk to check: it needs --propagate")
    for flag, path in (("--stats", args.stats), ("--review-json", args.review_json)):
        if path:
            check_folder(Path(path))
            if overwritten_inputs([Path(path)], inputs):
                raise ValueError(f"{flag} {path} would replace the input image; write it to another file")
    if is_volume:
        reached = None if args.propagate or args.correct is not None else [args.slice]
        check_finite_slices(image, args.axis, reached)
    else:
        check_finite_slices(image[None], 0, [0])


def ended(args: argparse.Namespace, existing: np.ndarray | None) -> np.ndarray:
    """The ``--labels`` with object ``--end`` removed past ``--slice`` on ``--side``."""
    if existing is None or args.slice is None or args.side is None or args.box or args.point:
        raise ValueError("--end ID takes --labels IN, --slice Z and --side before|after, no --box or --point")
    output = end_object(existing, args.end, args.slice, args.side, axis=args.axis)
    removed = int(np.sum(output != existing))
    print(f"ended object {args.end} at slice {args.slice}: removed {removed} voxel(s)")
    return output


def kept_with(
    kept: list[LabelObject], changes: dict[int, ObjectEdits] | None = None
) -> tuple[dict[int, str], dict[int, Any], dict[int, ObjectEdits]]:
    """Names, colours and edits of the ``--labels`` objects, with ``changes`` to their edits."""
    names = {o.label: o.name for o in kept}
    colors = {o.label: o.color for o in kept}
    edits = {o.label: o.edits for o in kept} | (changes or {})
    return names, colors, edits


def run_segment(args: argparse.Namespace) -> int:
    """Segment the boxes (and clicks) on one slice; with ``--propagate`` through the volume."""
    from napari_medsam.engine.key_slice import key_predictions, volume_labels
    from napari_medsam.engine.predictor import MedSamPredictor
    from napari_medsam.engine.propagation import stack_labels

    names = object_names(args)
    if args.stats and suffix_of(args.stats) not in STATS_SUFFIXES:
        raise ValueError(f"--stats {args.stats}: write statistics as {' or '.join(STATS_SUFFIXES)}")
    image, geometry = read_image(Path(args.image))
    image = np.asarray(image)
    existing, kept = None, []
    if args.labels:
        existing, kept = existing_labels(Path(args.labels), image.shape, geometry)
    kept_edits = {o.label: o.edits for o in kept}
    if args.correct is not None:
        check_correction(args, existing)
    if args.end is not None:
        check_outputs(args, image, geometry, is_volume=True)
        output = ended(args, existing)
        before = kept_edits.get(args.end, ObjectEdits())
        names, colors, edits = kept_with(kept, {args.end: before.ended(args.slice, args.side)})
        write_mask(Path(args.output), output, geometry, names=names, colors=colors, edits=edits)
        return 0
    plane, is_volume = _slice_of(image, args)
    points, labels = _points(args)
    if not args.box and points is None:
        raise ValueError("give at least one --box X0 Y0 X1 Y1 or --point X Y LABEL")
    if args.propagate and not is_volume:
        raise ValueError("--propagate needs a volume and --slice Z")
    check_outputs(args, image, geometry, is_volume)
    choice = window_for(args, image if is_volume else plane, geometry, rgb=plane.ndim == 3)
    print(f"window: {choice.describe()}")
    fetch_model(args)
    predictor = MedSamPredictor.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, family=args.family, store=args.store,
        backend=args.backend,
    )
    start = time.perf_counter()
    boxes = args.box or [None]
    volume_file = suffix_of(args.output) in (*WRITE_SUFFIXES, ".npy", ".tif", ".tiff")
    changes: dict[int, ObjectEdits] = {}
    steps: list[Any] = []  # the walks' steps, for the slices to check
    if args.correct is not None:
        before = kept_edits.get(args.correct, ObjectEdits())
        output, changes[args.correct] = corrected(args, predictor, image, existing, choice.window, before)
    elif is_volume and (args.propagate or existing is not None or volume_file):
        output = volume_labels(
            predictor, image, args.slice, boxes, choice.window, propagate=args.propagate, axis=args.axis,
            points=points, point_labels=labels, callback=steps.append,
        )  # fmt: skip
        changes = {i: ObjectEdits().anchored(args.slice) for i in present_ids(output)}
    else:
        masks = [mask for mask, _ in key_predictions(predictor, plane, choice.window, boxes, points, labels)]
        output = stack_labels(masks, plane.shape[:2])
    colors: dict[int, Any] = {}
    edits = changes
    ids: dict[int, int] = {}  # the new objects' ids in the output, where --labels objects come first
    if existing is not None:
        if args.correct is None:
            output, ids = add_objects(existing, output)
            names = {ids[i]: name for i, name in names.items() if i in ids}
            changes = {ids[i]: e for i, e in changes.items() if i in ids}
            print(f"kept {len(kept)} object(s) of {args.labels}; new object id(s) {sorted(ids.values())}")
        else:
            names = {}
        kept_names, colors, edits = kept_with(kept, changes)
        names = kept_names | names
    if args.propagate and steps:
        print_reviews(args, steps, names, ids)
    write_mask(Path(args.output), output, geometry, names=names, colors=colors, model=args.model, edits=edits)
    if args.stats:
        pixels = image if output.shape == image.shape else plane if output.shape == plane.shape else None
        spacing = None if geometry is None or output.ndim != geometry.ndim else geometry.spacing
        write_stats(args.stats, object_stats(output, pixels, spacing, names, axis=args.axis))
    elapsed = time.perf_counter() - start
    print(
        f"{args.output}: {int(np.count_nonzero(output))} voxels in {len(present_ids(output))} object(s), "
        f"{predictor.family} on {predictor.model.device}, {elapsed:.2f} s"
    )
    return 0
