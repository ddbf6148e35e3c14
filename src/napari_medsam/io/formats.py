"""The one table of file formats: what the reader opens, what the writers write, and the CLI's plain images;
and the one place that decides what a file or folder is (:func:`format_of`, :func:`is_dicom_file`).

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


#: What a file's first bytes say it holds: (offset, signature, format), the formats met in practice.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG", "PNG"), (0, b"\xff\xd8\xff", "JPEG"), (0, b"II*\x00", "TIFF"), (0, b"MM\x00*", "TIFF"),
    (0, b"BM", "BMP"), (0, b"\x93NUMPY", "NumPy"), (0, b"NRRD", "NRRD"), (0, b"ObjectType", "MetaImage"),
    (0, b"\x1f\x8b", "gzip"), (128, b"DICM", "DICOM"),
    (344, b"n+1\x00", "NIfTI"), (344, b"ni1\x00", "NIfTI"), (344, b"n+2\x00", "NIfTI"),
)  # fmt: skip
#: The contents each file ending should have: the formats with a fixed signature (a MetaImage
#: header has none; a DICOM file may lack the preamble; a NIfTI file may or may not be compressed).
_EXPECTED: dict[str, tuple[str, ...]] = {
    **dict.fromkeys((".nii.gz", ".nii"), ("NIfTI", "gzip")),
    **dict.fromkeys((".seg.nrrd", ".nrrd", ".nhdr"), ("NRRD",)),
    **{".npy": ("NumPy",), ".png": ("PNG",), ".jpg": ("JPEG",), ".jpeg": ("JPEG",), ".bmp": ("BMP",)},
    **dict.fromkeys((".tif", ".tiff"), ("TIFF",)),
}


def content_format(path: str | os.PathLike) -> str | None:
    """The format a file's first bytes name (``"PNG"``, ``"NIfTI"``, ``"gzip"``, ...), else None."""
    with open(path, "rb") as handle:
        head = handle.read(348)
    return next((fmt for at, sig, fmt in _SIGNATURES if head[at : at + len(sig)] == sig), None)


def check_contents(path: str | os.PathLike) -> None:
    """ValueError when a file is empty or its contents are another format than its ending says
    (a PNG named ``.nii.gz``, a NIfTI named ``.png``), naming what it holds; nothing for endings
    without a known signature."""
    path = Path(path)
    if path.is_dir():
        return
    if path.stat().st_size == 0:
        raise ValueError(f"{path.name} is empty (0 bytes)")
    expected = _EXPECTED.get(suffix_of(path))
    if expected is None:
        return
    found = content_format(path)
    if found not in expected:
        what = f"a {found} file" if found else "no format napari-medsam knows"
        raise ValueError(
            f"{path.name} does not hold what its ending {suffix_of(path)} says: it is {what}; "
            "give it the ending of its format"
        )


def format_of(path: str | os.PathLike) -> str | None:
    """'NIfTI', 'NRRD', 'MetaImage' or 'DICOM' for a path the volume reader opens, else None: the
    ending, else (a DICOM file without ``.dcm``, a folder) the DICOM preamble."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "DICOM" if is_dicom_folder(path) else None
    fmt = VOLUME_FORMATS.get(suffix_of(path))
    if fmt is not None:
        return fmt
    if os.path.isfile(path) and is_dicom_file(path):
        return "DICOM"
    return None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if ``path`` starts with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True if a file of folder ``path`` is a DICOM file (however many other files come first)."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return False
    files = [e.path for e in entries if e.is_file() and not e.name.startswith(".")]
    return any(is_dicom_file(f) for f in files)
