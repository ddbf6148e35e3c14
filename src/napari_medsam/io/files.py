"""Images and masks by file name: plain images (no geometry) and medical volumes (with geometry)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from napari_medsam.core.atomic import atomic_path
from napari_medsam.io.formats import (
    PLAIN_READ_SUFFIXES,
    PLAIN_WRITE_SUFFIXES,
    READ_SUFFIXES,
    WRITE_SUFFIXES,
    suffix_of,
)
from napari_medsam.io.volumes import VolumeGeometry


def read_image(path: Path) -> tuple[np.ndarray, VolumeGeometry | None]:
    """Read a 2D image or a volume; returns (array, geometry or None).

    Volumes come as axial slices (:func:`~napari_medsam.io.orientation.read_axial`), as the viewer
    shows them, so slice numbers match its slider; labels written with the geometry go back on the
    file's own grid.
    """
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    suffix = suffix_of(path)
    if path.is_dir() or suffix in READ_SUFFIXES:
        from napari_medsam.io.orientation import read_axial

        return read_axial(path)
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), None
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path), None
    if suffix in PLAIN_READ_SUFFIXES:
        from skimage.io import imread

        return imread(path), None
    raise ValueError(
        f"cannot read {path.name}: use {', '.join(PLAIN_READ_SUFFIXES + READ_SUFFIXES)} or a DICOM folder"
    )


def write_mask(
    path: Path,
    labels: np.ndarray,
    geometry: VolumeGeometry | None,
    names: Mapping[int, str] | None = None,
    model: str | None = None,
    colors: Mapping[int, tuple[float, float, float]] | None = None,
) -> None:
    """Write labels in the format the extension names (PNG: 0/255 for one object, else label ids).

    Every format is written beside ``path`` and renamed over it (:mod:`~napari_medsam.core.atomic`).

    Label volume formats keep ``names`` and ``colors`` (:func:`~napari_medsam.io.label_files.save_labels`).
    """
    suffix = suffix_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in WRITE_SUFFIXES:
        from napari_medsam.io.label_files import save_labels

        save_labels(path, labels, geometry, names=names, colors=colors, model=model)
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
