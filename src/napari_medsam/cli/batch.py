"""``napari-medsam batch``: segment the objects of a manifest over a cohort, on dask.distributed.

One task per image, on the workers: read it, choose its window, segment each row's object with
:func:`~napari_medsam.base.objects.volume_labels` (what ``segment --slice S --box ... --propagate``
runs), combine them in row order (an earlier row keeps a voxel two objects claim), and write
``OUTDIR/<image>.nii.gz`` with the image's geometry, its ``.labels.json`` names and a
``.batch.json`` record (each written beside and renamed into place). A rerun skips an image whose
record matches its rows, model, dtype, window options, file and package version, has no failed
row, and whose outputs still have the SHA-256 the record holds (a damaged output is redone).
``OUTDIR/summary.csv`` is rewritten on every run, one row per object. Before anything runs, the
planned outputs are checked against every input (images, DICOM series files, the manifest): a
run that would replace one is refused.

Exit status: 0 when every row is done or skipped, 1 when any failed, 2 for invalid arguments or
an invalid manifest (nothing runs then).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from napari_medsam.base.atomic import write_text
from napari_medsam.cli.common import add_cohort_options, fetch_model, window_for, window_options
from napari_medsam.cli.manifest import ImageRows, ObjectRow, read_manifest

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("image", "label", "name", "status", "voxels", "volume_ml", "seconds", "error")
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
RECORD_SUFFIX = ".batch.json"


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``batch`` subcommand."""
    batch = commands.add_parser(
        "batch", help="segment the objects of a manifest (CSV) over a cohort, on a dask cluster"
    )
    batch.add_argument("manifest", type=Path, help="CSV: image, slice, box[, name, label, propagate]")
    batch.add_argument("-o", "--output-dir", type=Path, required=True, help="where labels and summary.csv go")
    batch.add_argument("--store", help="embedding store (.zarr) to read and fill")
    add_cohort_options(batch)
    batch.set_defaults(func=run_batch)


@dataclass(frozen=True)
class RowResult:
    """One summary.csv row."""

    image: str
    label: int
    name: str
    status: str
    voxels: int | None = None
    volume_ml: float | None = None
    seconds: float = 0.0
    error: str = ""

    @classmethod
    def failed(cls, row: ObjectRow, error: str, seconds: float = 0.0) -> RowResult:
        return cls(row.image, row.label, row.name, FAILED, seconds=seconds, error=error)


@dataclass(frozen=True)
class BatchOptions:
    """What every image task needs besides its rows (picklable, sent to the workers)."""

    plugin: str
    window: argparse.Namespace


def run_batch(args: argparse.Namespace) -> int:
    """Run the manifest; see the module docstring for outputs and exit status."""
    from napari_medsam.base.errors import ModelLoadError
    from napari_medsam.engine.store import EmbeddingStore
    from napari_medsam.models.loading import source_digest

    try:
        images = read_manifest(args.manifest.absolute(), args.output_dir.absolute())  # as workers see them
        check_plan(args.manifest, args.output_dir, images)
        fingerprint = _run_fingerprint(args, source_digest(args.model))
        store = None if args.store is None else str(EmbeddingStore(args.store).path)
    except (ValueError, FileNotFoundError, ModelLoadError) as error:
        print(f"napari-medsam: error: {error}", file=sys.stderr)
        return 2
    hashes = {image.image: _image_hash(image, fingerprint) for image in images}
    earlier = {image.image: _resumable(image, hashes[image.image]) for image in images}
    todo = [image for image in images if earlier[image.image] is None]
    results: dict[str, list[RowResult]] = {
        image: [replace(row, status=SKIPPED, seconds=0.0) for row in rows]
        for image, rows in earlier.items()
        if rows is not None
    }
    if todo:
        results.update(_run(args, todo, hashes, store))
    summary = [row for image in images for row in results[image.image]]
    _write_summary(args.output_dir / "summary.csv", summary)
    failed = sum(row.status == FAILED for row in summary)
    counts = {status: sum(row.status == status for row in summary) for status in (DONE, SKIPPED, FAILED)}
    print(f"{args.output_dir / 'summary.csv'}: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    return 1 if failed else 0


def check_plan(manifest: Path, output_dir: Path, images: list[ImageRows]) -> None:
    """ValueError, before anything runs, when the output folder cannot be written or a planned
    output (labels, names, records, summary.csv) would replace an input (an image, a file of a
    DICOM series folder, the manifest)."""
    from napari_medsam.io.files import check_folder, overwritten_inputs
    from napari_medsam.io.label_names import sidecar_path

    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"-o {output_dir} is a file; give a folder for the labels and summary.csv")
    check_folder(output_dir / "summary.csv")
    planned = [output_dir / "summary.csv"]
    for image in images:
        planned += [image.output, sidecar_path(image.output), _record_path(image), _error_log(image)]
    inputs = [manifest, *(image.path for image in images if image.path.exists())]
    clashes = overwritten_inputs(planned, inputs)
    if clashes:
        output, replaced = clashes[0]
        raise ValueError(
            f"-o {output_dir}: {output.name} would replace the input {replaced}"
            f"{f' (and {len(clashes) - 1} more)' if len(clashes) > 1 else ''}; choose another output folder"
        )


def _run(
    args: argparse.Namespace, images: list[ImageRows], hashes: dict[str, str], store: str | None
) -> dict[str, list[RowResult]]:
    """Segment ``images`` on the cluster, one task each, with a progress bar over their objects."""
    from tqdm import tqdm

    from napari_medsam.cli import cluster

    spec = cluster.PredictorSpec(args.model, args.device, args.dtype, store, backend=args.backend)
    window = window_options(args)
    results: dict[str, list[RowResult]] = {}
    total = sum(len(image.rows) for image in images)
    fetch_model(args)  # the workers on this machine then find the weights
    with (
        cluster.open_client(args) as client,
        cluster.predictors(client, spec) as plugin,
        tqdm(total=total, unit="object", desc="batch") as progress,
    ):
        options = BatchOptions(plugin, window)
        prefix = cluster.task_key("batch")
        futures = {
            client.submit(segment_image, image, hashes[image.image], options, key=f"{prefix}-{i}"): image
            for i, image in enumerate(images)
        }
        for future in cluster.distributed.as_completed(futures):
            image = futures[future]
            try:
                results[image.image] = future.result()
            except Exception as error:  # the task itself failed (e.g. its workers kept dying)
                message = f"task failed: {cluster.one_line(error)}"
                results[image.image] = [RowResult.failed(row, message) for row in image.rows]
            progress.update(len(image.rows))
    return results


def segment_image(image: ImageRows, image_hash: str, options: BatchOptions) -> list[RowResult]:
    """The task of one image (on a worker): segment its rows, write its outputs, report each row."""
    from napari_medsam.base.jobs import user_message
    from napari_medsam.base.pixels import check_finite_slices
    from napari_medsam.cli.cluster import one_line, worker_predictor
    from napari_medsam.engine.key_slice import volume_labels
    from napari_medsam.engine.store import store_volume
    from napari_medsam.io.files import read_image

    predictor = worker_predictor(options.plugin)
    start = time.perf_counter()
    try:
        volume, geometry = read_image(image.path)
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise ValueError(f"{image.image}: expected a 3D volume, got shape {volume.shape}")
        window = window_for(options.window, volume, geometry).window
    except Exception as error:  # unreadable: every row of the image fails, nothing is written
        message = one_line(error)
        return [RowResult.failed(row, message, time.perf_counter() - start) for row in image.rows]
    labels = np.zeros(volume.shape, np.uint8 if max(r.label for r in image.rows) < 2**8 else np.uint16)
    outcomes: list[tuple[ObjectRow, str, float]] = []
    with store_volume(image.image):
        for row in image.rows:
            start = time.perf_counter()
            error = row.problem or ""
            if not error:
                try:
                    check_finite_slices(volume, 0, None if row.propagate else [row.slice])
                    mask = volume_labels(
                        predictor, volume, row.slice, [row.box], window, propagate=row.propagate
                    )
                    labels[(mask > 0) & (labels == 0)] = row.label
                except Exception as failure:  # this row fails; the image's other rows go on
                    error = one_line(failure)
                    if user_message(failure) is None:  # a bug: its traceback goes to a log file
                        error += f" (traceback in {_log_traceback(image, row)})"
            outcomes.append((row, error, time.perf_counter() - start))
    results = _row_results(outcomes, labels, geometry)
    _write_outputs(image, labels, geometry, results, image_hash)
    return results


def _row_results(
    outcomes: list[tuple[ObjectRow, str, float]], labels: np.ndarray, geometry: object
) -> list[RowResult]:
    from napari_medsam.base.stats import object_stats

    stats = {s.label: s for s in object_stats(labels, spacing_mm=getattr(geometry, "spacing", None))}
    results = []
    for row, error, seconds in outcomes:
        if error:
            results.append(RowResult.failed(row, error, seconds))
            continue
        found = stats.get(row.label)
        voxels, volume_ml = (0, 0.0) if found is None else (found.voxels, found.volume_ml)
        results.append(RowResult(row.image, row.label, row.name, DONE, voxels, volume_ml, seconds))
    return results


def _write_outputs(
    image: ImageRows, labels: np.ndarray, geometry: object, results: list[RowResult], image_hash: str
) -> None:
    """Labels and names, then the record last, with their checksums (each file replaced whole)."""
    from napari_medsam.io.files import write_mask

    done = [r for r in results if r.status == DONE]
    names = {r.label: r.name for r in done}
    write_mask(image.output, labels, geometry, names=names)  # type: ignore[arg-type]
    record = {"hash": image_hash, "rows": [asdict(r) for r in results], "outputs": _checksums(image)}
    write_text(_record_path(image), json.dumps(record, indent=1) + "\n")


def _checksums(image: ImageRows) -> dict[str, str | None]:
    """SHA-256 of each output file of an image (labels, names) by file name; None for a missing one."""
    from napari_medsam.io.label_names import sidecar_path

    sums: dict[str, str | None] = {}
    for path in (image.output, sidecar_path(image.output)):
        try:
            sums[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            sums[path.name] = None
    return sums


def _resumable(image: ImageRows, image_hash: str) -> list[RowResult] | None:
    """The earlier results of an image that need not run again, else None."""
    try:
        record = json.loads(_record_path(image).read_text())
        rows = [RowResult(**row) for row in record["rows"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    intact = record.get("outputs") == _checksums(image) and image.output.is_file()
    if record.get("hash") != image_hash or not intact or len(rows) != len(image.rows):
        return None
    return None if any(r.status == FAILED for r in rows) else rows


def _run_fingerprint(args: argparse.Namespace, weights: str) -> str:
    """What every image's outputs depend on besides its rows and file."""
    from napari_medsam import __version__

    return json.dumps(
        {
            "weights": weights,
            "dtype": args.dtype,
            "window": args.window,
            "preset": args.preset,
            "version": __version__,
        }
    )


def _image_hash(image: ImageRows, fingerprint: str) -> str:
    """A hash of an image's rows, its file (size and time) and the run's fingerprint."""
    digest = hashlib.sha256(fingerprint.encode())
    for row in image.rows:  # not their line numbers: rows of other images may come and go
        digest.update(json.dumps({k: v for k, v in asdict(row).items() if k != "line"}).encode())
    files = sorted(image.path.rglob("*")) if image.path.is_dir() else [image.path]
    for file in files:
        try:
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        except OSError:  # missing: the task reports it
            digest.update(f"{file.name}:missing".encode())
    return digest.hexdigest()


def _record_path(image: ImageRows) -> Path:
    from napari_medsam.io.formats import stem_of

    return image.output.with_name(stem_of(image.output) + RECORD_SUFFIX)


def _error_log(image: ImageRows) -> Path:
    from napari_medsam.io.formats import stem_of

    return image.output.with_name(stem_of(image.output) + ".error.log")


def _log_traceback(image: ImageRows, row: ObjectRow) -> Path:
    """Append the traceback being handled to the image's ``.error.log``; returns its path."""
    import traceback

    path = _error_log(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    logger.error("%s, line %d: internal error, traceback in %s", image.image, row.line, path)
    with path.open("a") as log:  # a log, appended to: not an output a reader relies on being whole
        log.write(f"{image.image}, manifest line {row.line}:\n{traceback.format_exc()}\n")
    return path


def _write_summary(path: Path, rows: list[RowResult]) -> None:
    """summary.csv in full: one row per manifest row, in manifest order."""
    formats = {"volume_ml": "{:.3f}", "seconds": "{:.2f}"}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for row in rows:
        values = asdict(row)
        writer.writerow(
            "" if values[c] is None else formats.get(c, "{}").format(values[c]) for c in SUMMARY_COLUMNS
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buffer.getvalue())
