"""The ``batch`` manifest: a CSV of objects, one row each, grouped by image.

Columns: ``image`` (a path relative to the manifest: a volume file or a DICOM folder), ``slice``
(the key slice on axis 0), ``box`` (``"x0 y0 x1 y1"`` in pixels, x = column, as ``segment --box``),
and optionally ``name``, ``label`` (default: the row's place among its image's rows, 1, 2, ...)
and ``propagate`` (true/false, default true).

A manifest that cannot be run as a whole (a missing or unknown column, a duplicate label, an
image path outside the manifest's folder) raises :class:`ManifestError`. A row whose slice or
box cannot be read fails on its own: it keeps the ``problem`` and the rest of its image runs.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from napari_medsam.base.label_policy import MAX_LABEL_ID
from napari_medsam.base.objects import default_name
from napari_medsam.io.formats import stem_of

REQUIRED_COLUMNS = ("image", "slice", "box")
OPTIONAL_COLUMNS = ("name", "label", "propagate")
_TRUE, _FALSE = ("true", "yes", "1", ""), ("false", "no", "0")


class ManifestError(ValueError):
    """The manifest as a whole is invalid; nothing runs."""


@dataclass(frozen=True)
class ObjectRow:
    """One object: its key slice and box (None with a ``problem`` when they cannot be read)."""

    line: int
    image: str
    slice: int | None
    box: tuple[float, float, float, float] | None
    name: str
    label: int
    propagate: bool
    problem: str | None = None


@dataclass(frozen=True)
class ImageRows:
    """The rows of one image, in manifest order, and where its labels go."""

    image: str
    path: Path
    output: Path
    rows: tuple[ObjectRow, ...]


def read_manifest(manifest: Path, output_dir: Path) -> list[ImageRows]:
    """The manifest's images in order of first appearance, each with its rows and output path."""
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as file:  # a spreadsheet's BOM too
            reader = csv.DictReader(file)
            columns = [c.strip() for c in reader.fieldnames or []]
            records = [
                (reader.line_num, {k.strip(): (v or "").strip() for k, v in r.items() if k}) for r in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(f"cannot read the manifest {manifest}: {error}") from error
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)]
    if missing or unknown:
        problem = f"missing column(s) {missing}" if missing else f"unknown column(s) {unknown}"
        raise ManifestError(
            f"{manifest}: {problem}; the columns are {', '.join(REQUIRED_COLUMNS)} and optionally "
            f"{', '.join(OPTIONAL_COLUMNS)}"
        )
    if not records:
        raise ManifestError(f"{manifest}: no rows")
    grouped: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, record in records:
        grouped.setdefault(_image_key(record["image"], manifest, line), []).append((line, record))
    images, outputs = [], {}
    for image, rows in grouped.items():
        output = output_dir / PurePosixPath(image).parent / f"{stem_of(image)}.nii.gz"
        if output in outputs:
            raise ManifestError(
                f"{manifest}: {outputs[output]!r} and {image!r} would both be written to {output}"
            )
        outputs[output] = image
        objects = tuple(
            _object_row(image, place, line, record, manifest) for place, (line, record) in enumerate(rows, 1)
        )
        labels = [row.label for row in objects]
        duplicate = next((label for label in labels if labels.count(label) > 1), None)
        if duplicate is not None:
            raise ManifestError(f"{manifest}: label {duplicate} is given twice for image {image!r}")
        images.append(ImageRows(image, manifest.parent / image, output, objects))
    return images


def _image_key(text: str, manifest: Path, line: int) -> str:
    """The image path as a clean relative POSIX path (what outputs are named after)."""
    path = PurePosixPath(text.replace("\\", "/"))
    if not text or path.is_absolute() or ".." in path.parts:
        raise ManifestError(
            f"{manifest}, line {line}: image {text!r} must be a path inside the manifest's folder, "
            "relative to it"
        )
    return str(path)


def _object_row(image: str, place: int, line: int, record: dict[str, str], manifest: Path) -> ObjectRow:
    where = f"{manifest}, line {line}"
    label_text = record.get("label", "")
    try:
        label = int(label_text) if label_text else place
    except ValueError:
        raise ManifestError(f"{where}: label {label_text!r} is not an integer") from None
    if not 1 <= label <= MAX_LABEL_ID:
        raise ManifestError(f"{where}: label {label} is outside 1..{MAX_LABEL_ID}")
    propagate = record.get("propagate", "").lower()
    if propagate not in (*_TRUE, *_FALSE):
        raise ManifestError(f"{where}: propagate {propagate!r} is not true or false")
    name = record.get("name") or default_name(label)
    slice_index, box, problem = None, None, None
    try:
        slice_index = int(record["slice"])
    except ValueError:
        problem = f"slice {record['slice']!r} is not an integer"
    try:
        values = tuple(float(v) for v in record["box"].replace(",", " ").split())
        if len(values) != 4:
            raise ValueError
        box = values
    except ValueError:
        problem = problem or f"box {record['box']!r} is not four numbers x0 y0 x1 y1"
    return ObjectRow(line, image, slice_index, box, name, label, propagate in _TRUE, problem)  # type: ignore[arg-type]
