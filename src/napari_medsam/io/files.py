"""Images and masks by file name: plain images (no geometry) and medical volumes (with geometry)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from napari_medsam.base.atomic import atomic_path
from napari_medsam.base.object_edits import ObjectEdits
from napari_medsam.base.pixels import real_pixels
from napari_medsam.io.formats import (
    PLAIN_READ_SUFFIXES,
    PLAIN_WRITE_SUFFIXES,
    READ_SUFFIXES,
    WRITE_SUFFIXES,
    check_contents,
    suffix_of,
)
from napari_medsam.io.volumes import VolumeGeometry


def read_image(path: Path) -> tuple[np.ndarray, VolumeGeometry | None]:
    """Read a 2D image or a volume; returns (array, geometry or None).

    Volumes come as axial slices (:func:`~napari_medsam.io.orientation.read_axial`), as the viewer
    shows them, so slice numbers match its slider; labels written with the geometry go back on the
    file's own grid. Pixels are real numbers (:func:`~napari_medsam.base.pixels.real_pixels`:
    a bool image becomes uint8, a complex one is refused). An empty, damaged or misnamed file (a
    PNG named ``.nii.gz``) raises ValueError saying so.
    """
    image, geometry = _read(path)
    return real_pixels(image), geometry


def _read(path: Path) -> tuple[np.ndarray, VolumeGeometry | None]:
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    suffix = suffix_of(path)
    check_contents(path)
    if path.is_dir() or suffix in READ_SUFFIXES:
        from napari_medsam.io.orientation import read_axial

        return read_axial(path)
    if suffix not in PLAIN_READ_SUFFIXES:
        raise ValueError(
            f"cannot read {path.name}: use {', '.join(PLAIN_READ_SUFFIXES + READ_SUFFIXES)} or a DICOM folder"
        )
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path), None
        from skimage.io import imread

        return imread(path), None
    except (OSError, EOFError, RuntimeError, ValueError) as error:  # truncated or damaged
        raise ValueError(f"could not read {path.name} (damaged or incomplete file?): {error}") from error


def check_output(
    path: Path, inputs: Sequence[Path], *, dimensions: int, dicom_series: bool = False
) -> None:
    """Refuse, before any work, an output that :func:`write_mask` could not write or that would
    replace an input; ValueError with what to change.

    Checks the ending (known, case aside; ``.png``/``.bmp`` only for 2D results, ``.dcm`` only for
    ``dicom_series`` images), the folder (created when missing, but not under a file, and writable)
    and that neither the file nor its names sidecar is one of ``inputs`` (files, or folders of
    DICOM files; links and hard links resolved).
    """
    suffix = suffix_of(path)
    writable = PLAIN_WRITE_SUFFIXES + WRITE_SUFFIXES
    if suffix not in writable or not path.name.lower().endswith(suffix):
        raise ValueError(f"cannot write {path.name}: give it one of the endings {', '.join(writable)}")
    if suffix in (".png", ".bmp") and dimensions != 2:
        raise ValueError(
            f"{path.name}: a {dimensions}D result needs a volume format (.nii.gz, .nrrd, .mha, .tif, .npy)"
        )
    if suffix == ".dcm" and not dicom_series:
        from napari_medsam.io.dicom_seg import NOT_DICOM

        raise ValueError(f"{path.name}: {NOT_DICOM}")
    check_folder(path)
    from napari_medsam.io.label_names import sidecar_path

    outputs = [path] + ([sidecar_path(path)] if suffix in WRITE_SUFFIXES else [])
    for output, replaced in overwritten_inputs(outputs, inputs):
        raise ValueError(f"{output} would replace the input {replaced}; write the output to another file")


def check_folder(path: Path) -> None:
    """ValueError unless a file can be written at ``path``: not a folder, its nearest existing
    parent a writable folder (missing folders below it are created when writing)."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: the folder {parent} is read-only")


def overwritten_inputs(outputs: Sequence[Path], inputs: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(output, input) for each output that is one of ``inputs`` or a file of an input folder
    (a DICOM series), compared as files on disk (links and hard links resolved)."""
    identities: dict[tuple[int, int], Path] = {}
    for item in inputs:
        files = [Path(e.path) for e in os.scandir(item) if e.is_file()] if item.is_dir() else [item]
        for file in files:
            with contextlib.suppress(OSError):
                stat = file.stat()
                identities[(stat.st_dev, stat.st_ino)] = file
    found = []
    for output in outputs:
        with contextlib.suppress(OSError):  # a missing output replaces nothing
            stat = output.stat()
            if (stat.st_dev, stat.st_ino) in identities:
                found.append((output, identities[(stat.st_dev, stat.st_ino)]))
    return found


def write_mask(
    path: Path,
    labels: np.ndarray,
    geometry: VolumeGeometry | None,
    names: Mapping[int, str] | None = None,
    model: str | None = None,
    colors: Mapping[int, tuple[float, float, float]] | None = None,
    edits: Mapping[int, ObjectEdits] | None = None,
) -> None:
    """Write labels in the format the extension names (PNG: 0/255 for one object, else label ids).

    Every format is written beside ``path`` and renamed over it (:mod:`~napari_medsam.base.atomic`).

    Label volume formats keep ``names``, ``colors`` and ``edits``
    (:func:`~napari_medsam.io.label_files.save_labels`).
    """
    suffix = suffix_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in WRITE_SUFFIXES:
        from napari_medsam.io.label_files import save_labels

        save_labels(path, labels, geometry, names=names, colors=colors, model=model, edits=edits)
    elif suffix == ".npy":
        with atomic_path(path, suffix) as tmp:
            np.save(tmp, labels)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        with atomic_path(path, suffix) as tmp:
            tifffile.imwrite(tmp, labels)
    elif suffix in (".png", ".bmp"):
        from skimage.io import imsave

        if labels.ndim != 2:
            raise ValueError(
                f"{path.name}: a {labels.ndim}D result needs a volume format (.nii.gz, .nrrd, .tif, .npy)"
            )
        if labels.max() > 255:
            raise ValueError(f"{path.name}: more than 255 labels; use .tif or .npy")
        image = (labels > 0).astype(np.uint8) * 255 if labels.max() <= 1 else labels.astype(np.uint8)
        with atomic_path(path, suffix) as tmp:
            imsave(tmp, image, check_contrast=False)
    else:
        raise ValueError(f"cannot write {path.name}: use {', '.join(PLAIN_WRITE_SUFFIXES + WRITE_SUFFIXES)}")
