"""A DICOM series checked as a scanner's viewer checks it, before its voxels are trusted.

GDCM (through SimpleITK) sorts a series' files along the slice normal and reads them as a regular
grid whatever their positions: a missing slice, a duplicated position or a file it could not read
would silently give a volume with the wrong spacing. :func:`check_series` reads each file's
position and orientation and refuses what a regular grid cannot hold; :func:`describe_series`
names series by their description and number, as a viewer lists them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from napari_medsam.io.formats import is_dicom_file

#: Relative tolerance on slice spacing (DICOM positions are written with a few decimals).
_SPACING_TOLERANCE = 0.01


def check_series(folder: str, files: Sequence[str], all_series_files: Sequence[str]) -> None:
    """ValueError when the series ``files`` (GDCM's order) is not a regular stack of slices.

    Refused, with what was found: files in ``folder`` that look like DICOM images but belong to
    no series (``all_series_files``: the files of every series GDCM found) because they cannot be
    read; files of two series mixed under one UID (told apart by description and number);
    duplicated positions; and uneven spacing (a missing slice), naming the gap. A series without
    positions (one file, multi-frame) is left to ITK.
    """
    unreadable = _unreadable_files(folder, set(all_series_files))
    if unreadable:
        names = ", ".join(os.path.basename(f) for f in unreadable[:5]) + (", ..." * (len(unreadable) > 5))
        raise ValueError(
            f"{folder}: {len(unreadable)} DICOM file(s) cannot be read ({names}): damaged or truncated, "
            "so the series would miss their slices. Restore them, or remove them from the folder"
        )
    if len(files) < 2:
        return
    headers = [_header(f) for f in files]
    kinds = sorted({describe_header(h) for h in headers})
    if len(kinds) > 1:
        raise ValueError(
            f"{folder}: {len(kinds)} series are mixed under one series UID: {', '.join(kinds)}; "
            "put each series in its own folder"
        )
    if any("ImagePositionPatient" not in h or "ImageOrientationPatient" not in h for h in headers):
        return
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    where = sorted(
        (float(np.dot(np.asarray(h.ImagePositionPatient, dtype=float), normal)), os.path.basename(f))
        for h, f in zip(headers, files, strict=True)
    )
    positions = np.array([p for p, _ in where])
    steps = np.diff(positions)
    spacing = float(np.median(steps))
    same = np.flatnonzero(steps <= _SPACING_TOLERANCE * max(spacing, 1e-3))
    if same.size:
        first = int(same[0])
        raise ValueError(
            f"{folder}: {same.size} slice position(s) are duplicated (e.g. {where[first][1]} and "
            f"{where[first + 1][1]} both at {positions[first]:.3f} mm); the folder may hold two copies "
            "or two series: keep one"
        )
    uneven = np.flatnonzero(np.abs(steps - spacing) > _SPACING_TOLERANCE * spacing)
    if uneven.size:
        gap = int(uneven[0])
        missing = round(steps[gap] / spacing) - 1
        raise ValueError(
            f"{folder}: the slices are not evenly spaced: {steps[gap]:.3f} mm between {where[gap][1]} "
            f"({positions[gap]:.3f} mm) and {where[gap + 1][1]} ({positions[gap + 1]:.3f} mm) where the "
            f"spacing is {spacing:.3f} mm"
            + (f" ({missing} slice(s) missing)" if missing >= 1 else "")
            + f"; {uneven.size} uneven step(s) in all. Restore the missing files"
        )


def describe_series(files: Sequence[str]) -> str:
    """A series as a viewer lists it: ``'T1 axial' (series 3, 20 files)``."""
    return f"{describe_header(_header(files[0]))[:-1]}, {len(files)} files)"


def describe_header(header: object) -> str:
    """``'T1 axial' (series 3)`` from a file's header (blank values as ``no description``, ``?``)."""
    description = str(getattr(header, "SeriesDescription", "") or "").strip() or "no description"
    number = str(getattr(header, "SeriesNumber", "") or "").strip() or "?"
    return f"'{description}' (series {number})"


def _header(path: str) -> object:
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def _unreadable_files(folder: str, in_series: set[str]) -> list[str]:
    """Files of ``folder`` that start as DICOM but no series holds and that do not read whole."""

    found = []
    series = {os.path.abspath(f) for f in in_series}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file() or os.path.abspath(entry.path) in series:
            continue
        looks_dicom = is_dicom_file(entry.path) or entry.name.lower().endswith(".dcm")
        if looks_dicom and not _whole_image(entry.path):
            found.append(entry.path)
    return found


def _whole_image(path: str) -> bool:
    """True when a file reads as DICOM and holds all its pixel data, or is not an image (a report)."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path)
        if "PixelData" not in dataset:  # a report or structure set names its class; an image has pixels
            return "Rows" not in dataset and bool(dataset.get("SOPClassUID"))
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        samples = int(getattr(dataset, "SamplesPerPixel", 1) or 1)
        pixels = int(dataset.Rows) * int(dataset.Columns) * samples * frames
        expected = pixels * int(dataset.BitsAllocated) // 8
        encapsulated = dataset.file_meta.TransferSyntaxUID.is_compressed
        return encapsulated or len(dataset.PixelData) >= expected
    except Exception:  # pydicom raises many types for damaged files
        return False
