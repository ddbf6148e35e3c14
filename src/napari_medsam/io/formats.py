"""The one table of file formats: what the reader opens, what the writers write, and the CLI's plain images.

``napari.yaml`` repeats the reader patterns and writer extensions (npe2 reads them without
importing code); ``tests/test_manifest.py`` holds the two together.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Medical volume formats by file-name ending, read through SimpleITK (DICOM folders too).
VOLUME_FORMATS: dict[str, str] = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".seg.nrrd": "NRRD",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".dcm": "DICOM",
}
#: Endings the volume reader claims (folders of DICOM files are claimed too).
READ_SUFFIXES: tuple[str, ...] = tuple(VOLUME_FORMATS)
#: Endings label volumes are written as through SimpleITK, with the geometry of their image ...
ITK_WRITE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd")
#: ... and every ending the labels writer takes: those and DICOM Segmentations (``.dcm``).
WRITE_SUFFIXES: tuple[str, ...] = (*ITK_WRITE_SUFFIXES, ".dcm")
#: Plain images the CLI reads (no geometry) ...
PLAIN_READ_SUFFIXES: tuple[str, ...] = (".npy", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: ... and writes.
PLAIN_WRITE_SUFFIXES: tuple[str, ...] = (".npy", ".tif", ".tiff", ".png", ".bmp")
_ALL = sorted({*READ_SUFFIXES, *WRITE_SUFFIXES, *PLAIN_READ_SUFFIXES}, key=len, reverse=True)


def suffix_of(path: str | os.PathLike) -> str:
    """The known (possibly double) ending of ``path``, lower case: ``.nii.gz``, ``.seg.nrrd``, ``.png``."""
    name = Path(path).name.lower()
    return next((s for s in _ALL if name.endswith(s)), Path(name).suffix)


def stem_of(path: str | os.PathLike) -> str:
    """The file name without its known ending (``ct.nii.gz`` -> ``ct``)."""
    name = Path(path).name
    suffix = suffix_of(name)
    return (name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name) or name
