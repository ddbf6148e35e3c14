"""Medical volumes in and label volumes out, on the file's own voxel grid (no Qt, no napari).

Everything goes through SimpleITK, which reads NIfTI, NRRD, MetaImage and DICOM series. Arrays
come back in napari (k, j, i) order (slowest axis first), exactly as stored: no reorientation, no
resampling (:mod:`napari_medsam.io.orientation` re-orders the axes for display, as a view, and
:meth:`VolumeGeometry.to_file` undoes it). CT keeps Hounsfield units (DICOM rescale
slope/intercept, NIfTI ``scl_slope`` applied).

:class:`VolumeGeometry` keeps spacing, origin and direction in napari order; ITK keeps them in
(i, j, k) = (x, y, z) order. The two are exact reversals of each other, so a label volume written
with the geometry of its image lines up with it in 3D Slicer and ITK-SNAP.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medsam.base.atomic import atomic_path
from napari_medsam.io.formats import (
    ITK_WRITE_SUFFIXES,
    READ_SUFFIXES,
    check_contents,
    format_of,
    stem_of,
    suffix_of,
)

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = [
    "GEOMETRY_KEY",
    "VolumeGeometry",
    "holds_centre",
    "read_volume",
    "resample_labels",
    "volume_name",
    "write_labels",
]

#: Key under which a layer's ``metadata`` holds ``VolumeGeometry.to_dict()``.
GEOMETRY_KEY = "geometry"


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a voxel grid sits in patient space, in napari (k, j, i) order.

    The physical (LPS, millimetres) position of voxel index ``idx`` (napari order) is
    ``origin + direction @ (spacing * idx)``, also in napari order. ``direction[r][c]`` is
    component ``r`` of the unit vector along index axis ``c``. ``source_files`` are the DICOM
    files of a series, one per index of the file's first axis, in that order (None for other
    formats). ``file_axes`` says how this grid's axes were re-ordered from the file's (axis ``d``
    is the file's axis ``file_axes[d]``; None: the file's own order), so that
    :meth:`to_file` can put labels back on the file's grid.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]
    shape: tuple[int, ...] | None = None
    modality: str | None = None
    source_files: tuple[str, ...] | None = None
    file_axes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.spacing)
        direction = np.asarray(self.direction, dtype=float)
        if len(self.origin) != n or direction.shape != (n, n):
            raise ValueError(
                f"geometry needs {n} origin values and a {n}x{n} direction, got "
                f"{len(self.origin)} and {direction.shape}"
            )
        if self.shape is not None and len(self.shape) != n:
            raise ValueError(f"shape {self.shape} does not have {n} dimensions")
        if any(s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        if self.file_axes is not None and sorted(self.file_axes) != list(range(n)):
            raise ValueError(f"file_axes {self.file_axes} is not an order of {n} axes")

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def identity(
        cls,
        shape: Sequence[int],
        spacing: Sequence[float] | None = None,
        origin: Sequence[float] | None = None,
    ) -> VolumeGeometry:
        """Axis-aligned geometry for ``shape`` (unit spacing and zero origin unless given)."""
        n = len(shape)
        return cls(
            spacing=_floats(spacing if spacing is not None else [1.0] * n),
            origin=_floats(origin if origin is not None else [0.0] * n),
            direction=_matrix(np.eye(n)),
            shape=tuple(int(s) for s in shape),
        )

    @classmethod
    def from_itk(
        cls, image: sitk.Image, modality: str | None = None, source_files: Sequence[str] | None = None
    ) -> VolumeGeometry:
        """Geometry of a SimpleITK image, converted to napari order."""
        n = image.GetDimension()
        direction = np.asarray(image.GetDirection(), dtype=float).reshape(n, n)
        return cls(
            spacing=_floats(image.GetSpacing()[::-1]),
            origin=_floats(image.GetOrigin()[::-1]),
            direction=_matrix(direction[::-1, ::-1]),
            shape=tuple(int(s) for s in image.GetSize()[::-1]),
            modality=modality,
            source_files=None if source_files is None else tuple(str(f) for f in source_files),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VolumeGeometry:
        """Inverse of :meth:`to_dict`."""
        shape, files, axes = data.get("shape"), data.get("source_files"), data.get("file_axes")
        return cls(
            spacing=_floats(data["spacing"]),
            origin=_floats(data["origin"]),
            direction=_matrix(np.asarray(data["direction"], dtype=float)),
            shape=None if shape is None else tuple(int(s) for s in shape),
            modality=data.get("modality"),
            source_files=None if files is None else tuple(str(f) for f in files),
            file_axes=None if axes is None else tuple(int(a) for a in axes),
        )

    @classmethod
    def from_layer(cls, attributes: Mapping[str, Any], shape: Sequence[int]) -> VolumeGeometry:
        """Geometry for data of ``shape`` saved from a napari layer's attributes.

        Uses ``metadata["geometry"]`` when it fits ``shape`` (this keeps the direction of the
        image the layer was made on); otherwise the layer's ``scale`` and ``translate`` with an
        axis-aligned direction.
        """
        shape = tuple(int(s) for s in shape)
        metadata = attributes.get("metadata") or {}
        stored = metadata.get(GEOMETRY_KEY)
        if isinstance(stored, Mapping):
            stored = cls.from_dict(stored)
        fits = isinstance(stored, VolumeGeometry) and stored.ndim == len(shape)
        if fits and stored.shape in (None, shape):
            return stored
        n = len(shape)
        scale = attributes.get("scale")
        translate = attributes.get("translate")
        return cls.identity(
            shape,
            spacing=None if scale is None else list(scale)[-n:],
            origin=None if translate is None else list(translate)[-n:],
        )

    # -- views ----------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return len(self.spacing)

    @property
    def affine(self) -> np.ndarray:
        """(ndim + 1) x (ndim + 1) matrix from napari-order voxel index to physical position."""
        n = self.ndim
        out = np.eye(n + 1)
        out[:n, :n] = np.asarray(self.direction) * np.asarray(self.spacing)[None, :]
        out[:n, n] = self.origin
        return out

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set spacing, origin and direction of ``image`` (ITK order) from this geometry."""
        if image.GetDimension() != self.ndim:
            raise ValueError(
                f"image has {image.GetDimension()} dimensions, geometry has {self.ndim}"
            )
        image.SetSpacing(self.spacing[::-1])
        image.SetOrigin(self.origin[::-1])
        direction = np.asarray(self.direction, dtype=float)[::-1, ::-1]
        image.SetDirection(tuple(float(v) for v in direction.ravel()))
        return image

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, safe to keep in napari layer metadata."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": [list(row) for row in self.direction],
            "shape": None if self.shape is None else list(self.shape),
            "modality": self.modality,
            "source_files": None if self.source_files is None else list(self.source_files),
            "file_axes": None if self.file_axes is None else list(self.file_axes),
        }

    def transposed(self, order: Sequence[int]) -> VolumeGeometry:
        """The geometry of ``array.transpose(order)``: axis ``d`` is this grid's axis ``order[d]``.

        The voxels keep their physical positions: spacing, shape and the direction's columns
        follow the axes, the origin (voxel 0) stays.
        """
        order = tuple(int(a) for a in order)
        if sorted(order) != list(range(self.ndim)):
            raise ValueError(f"{order} is not an order of {self.ndim} axes")
        file_axes = tuple((self.file_axes or range(self.ndim))[a] for a in order)
        return replace(
            self,
            spacing=tuple(self.spacing[a] for a in order),
            direction=_matrix(np.asarray(self.direction, dtype=float)[:, order]),
            shape=None if self.shape is None else tuple(self.shape[a] for a in order),
            file_axes=None if file_axes == tuple(range(self.ndim)) else file_axes,
        )

    def file_grid(self) -> VolumeGeometry:
        """The geometry of the file's own grid (this one when its axes were not re-ordered)."""
        return self if self.file_axes is None else self.transposed(np.argsort(self.file_axes))

    def to_file(self, array: np.ndarray) -> tuple[np.ndarray, VolumeGeometry]:
        """``array`` on this grid as the file's own grid holds it (a view), with that grid's geometry."""
        array = np.asarray(array)
        if self.file_axes is None:
            return array, self
        inverse = tuple(int(a) for a in np.argsort(self.file_axes))
        return np.transpose(array, (*inverse, *range(self.ndim, array.ndim))), self.file_grid()

    def same_grid(self, other: VolumeGeometry) -> bool:
        """True when ``other`` has this shape and places each voxel at the same position."""
        return (
            self.ndim == other.ndim
            and self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=1e-4)
            and np.allclose(self.origin, other.origin, atol=1e-3 * min(self.spacing))
            and np.allclose(self.direction, other.direction, atol=1e-4)
        )


# -- reading --------------------------------------------------------------------------------
def volume_name(path: str | os.PathLike) -> str:
    """A layer name for ``path``: the file name without its (double) suffix."""
    return stem_of(path)


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, VolumeGeometry]:
    """Read a NIfTI / NRRD / MetaImage file or a DICOM series (folder or one of its files).

    Returns the voxel array in (k, j, i) order (a trailing channel axis for multi-component
    images) and its :class:`VolumeGeometry`. Raises ``ValueError`` naming the file when it
    cannot be read, ``FileNotFoundError`` when it does not exist.
    """
    import SimpleITK as sitk

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file or folder: {path}")
    check_contents(path)  # a PNG named .nii.gz is named as such, not as a header ITK cannot parse
    fmt = format_of(path)
    if fmt is None:
        raise ValueError(
            f"{path}: not a NIfTI, NRRD, MetaImage or DICOM file (expected one of "
            f"{', '.join(READ_SUFFIXES)} or a folder of DICOM files)"
        )
    files = None
    try:
        if fmt == "DICOM":
            image, modality, files = _read_dicom_series(path)
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(path)
            reader.ReadImageInformation()
            if fmt == "NIfTI":
                _check_nifti_complete(path, reader)
            image = reader.Execute()
            modality = _meta(image, "Modality")
    except (RuntimeError, OSError, EOFError, zlib.error) as exc:  # SimpleITK raises RuntimeError
        raise ValueError(
            f"Could not read {path} as {fmt} (corrupt or incomplete file?): {_itk_reason(exc)}"
        ) from exc
    array = sitk.GetArrayFromImage(image)
    return array, VolumeGeometry.from_itk(image, modality=_modality(modality), source_files=files)


def _read_dicom_series(path: str) -> tuple[sitk.Image, str | None, tuple[str, ...]]:
    """The series of a folder (its largest) or of one of its files, checked (:func:`check_series`)."""
    import SimpleITK as sitk

    from napari_medsam.io.dicom_series import check_series, describe_series

    if os.path.isdir(path):
        folder, wanted = path, None
    else:
        folder = os.path.dirname(path) or "."
        probe = sitk.ImageFileReader()
        probe.SetFileName(path)
        probe.ReadImageInformation()
        wanted = _meta(probe, "0020|000e")
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series:
        raise RuntimeError("sitk::ERROR: no DICOM image series found")
    members = {s: _series_files(folder, s) for s in series}
    if wanted and wanted.strip() in (s.strip() for s in series):
        ids = [s for s in series if s.strip() == wanted.strip()]
    else:  # a folder: take the series with the most slices
        ids = sorted(series, key=lambda s: -len(members[s]))
        if len(ids) > 1:
            logger.warning(
                "%s holds %d DICOM series: %s; reading the largest, %s (open one of its files for another)",
                folder, len(ids), ", ".join(describe_series(members[s]) for s in ids),
                describe_series(members[ids[0]]),
            )  # fmt: skip
    files = members[ids[0]]
    check_series(folder, files, [f for s in series for f in members[s]])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    modality = (
        reader.GetMetaData(0, "0008|0060") if reader.HasMetaDataKey(0, "0008|0060") else None
    )
    return image, modality, tuple(os.path.abspath(f) for f in files)


def _check_nifti_complete(path: str, reader: sitk.ImageFileReader) -> None:
    """Raise for a NIfTI file shorter than its header says (ITK would fill it with zeros)."""
    ndim = int(reader.GetMetaData("dim[0]"))
    voxels = math.prod(int(reader.GetMetaData(f"dim[{d}]")) for d in range(1, ndim + 1))
    expected = int(float(reader.GetMetaData("vox_offset"))) + voxels * int(
        reader.GetMetaData("bitpix")
    ) // 8
    if not path.lower().endswith(".gz"):
        size = os.path.getsize(path)
    else:
        with open(path, "rb") as fh:  # the gzip trailer holds the data size modulo 2**32 ...
            fh.seek(-4, os.SEEK_END)
            if int.from_bytes(fh.read(4), "little") == expected % 2**32:
                return
        size = 0  # ... else (truncated, or several gzip members) count the bytes
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                size += len(chunk)
    if size < expected:
        raise RuntimeError(
            f"sitk::ERROR: the file is truncated ({size} bytes of data, the header needs "
            f"{expected})"
        )


def _series_files(folder: str, series_id: str) -> tuple[str, ...]:
    import SimpleITK as sitk

    return sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series_id)


def _meta(obj: Any, key: str) -> str | None:
    return obj.GetMetaData(key) if obj.HasMetaDataKey(key) else None


def _modality(value: str | None) -> str | None:
    value = (value or "").strip().upper()
    if value.startswith("MET_MOD_"):  # MetaImage spells them MET_MOD_CT, MET_MOD_UNKNOWN, ...
        value = value[len("MET_MOD_") :]
    return None if value in ("", "UNKNOWN", "OT") else value


def _itk_reason(exc: Exception) -> str:
    """The useful part of a SimpleITK / ITK / zlib error message."""
    text = " ".join(str(exc).split())
    text = re.sub(r"Exception thrown in SimpleITK \w+: \S+:\d+:", "", text)
    text = re.sub(r"(sitk::|ITK )ERROR:( \w+\(0x[0-9a-fA-F]+\):)?", "", text)
    text = text.replace("Reason: No such file or directory", "")  # stale errno from MetaIO
    if "[nrrd]" in text:
        text = text.split("[nrrd]")[-1]
    return " ".join(text.split()) or type(exc).__name__


# -- writing --------------------------------------------------------------------------------
def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    geometry: VolumeGeometry | None = None,
    header: Mapping[str, str] | None = None,
) -> str:
    """Write an integer label array (napari order) to NIfTI, NRRD or MetaImage, compressed.

    The file gets ``geometry`` (spacing, origin, direction), so it overlays the image it was
    made on; without one it is axis-aligned with unit spacing. Labels are stored as the
    smallest unsigned integer type that holds them (uint8 / uint16 / uint32; int32 if negative).
    ``header`` fields go into the file's header (NRRD ``key:=value`` lines). Returns the path.
    """
    import SimpleITK as sitk

    path = os.fspath(path)
    if not os.path.basename(path).lower().endswith(ITK_WRITE_SUFFIXES):
        raise ValueError(f"{path}: label files can be written as {', '.join(ITK_WRITE_SUFFIXES)}")
    array = _label_array(labels)
    if array.ndim not in (2, 3, 4):
        raise ValueError(f"labels must be 2D, 3D or 4D, got shape {array.shape}")
    if geometry is None:
        geometry = VolumeGeometry.identity(array.shape)
    if geometry.ndim != array.ndim or geometry.shape not in (None, array.shape):
        raise ValueError(
            f"labels of shape {array.shape} do not fit the geometry of shape {geometry.shape}"
        )
    image = sitk.GetImageFromArray(array, isVector=False)
    geometry.apply_to(image)
    for key, value in (header or {}).items():
        image.SetMetaData(key, value)
    old_data = _mhd_data_file(path)
    try:
        with atomic_path(path, suffix_of(path)) as tmp:  # ITK picks the format by the ending
            sitk.WriteImage(image, str(tmp), useCompression=True)
    except RuntimeError as exc:
        raise ValueError(f"Could not write {path}: {_itk_reason(exc)}") from exc
    if old_data is not None and old_data != _mhd_data_file(path):
        with contextlib.suppress(OSError):  # the replaced header's data, now unused
            os.remove(old_data)
    return path


def _mhd_data_file(path: str) -> str | None:
    """The data file a ``.mhd`` header names (None for other formats or no readable header).

    A ``.mhd`` is written with its data under the temporary header's name, which the renamed
    header keeps naming: the header's rename replaces header and data together.
    """
    if suffix_of(path) != ".mhd" or not os.path.isfile(path):
        return None
    with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="ascii") as header:
        for line in header:
            key, _, value = line.partition("=")
            if key.strip() == "ElementDataFile" and value.strip() != "LOCAL":
                return os.path.join(os.path.dirname(path), value.strip())
    return None


def resample_labels(labels: np.ndarray, geometry: VolumeGeometry, target: VolumeGeometry) -> np.ndarray:
    """``labels`` on ``geometry``'s grid resampled onto ``target``'s (nearest neighbour; 0 outside)."""
    import SimpleITK as sitk

    if target.shape is None:
        raise ValueError("the target geometry has no shape")
    source = geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(labels)))
    reference = target.apply_to(sitk.Image([int(s) for s in target.shape[::-1]], sitk.sitkUInt8))
    result = sitk.Resample(
        source, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, source.GetPixelID()
    )
    return sitk.GetArrayFromImage(result)


def holds_centre(geometry: VolumeGeometry, other: VolumeGeometry) -> bool:
    """True when the centre of ``other``'s grid lies inside ``geometry``'s (both need a shape)."""
    if geometry.shape is None or other.shape is None or geometry.ndim != other.ndim:
        return False
    centre = other.affine @ np.array([*((np.asarray(other.shape) - 1) / 2), 1.0])
    index = np.linalg.solve(geometry.affine, centre)[:-1]
    return bool(np.all(index >= -0.5) and np.all(index <= np.asarray(geometry.shape) - 0.5))


def _label_array(labels: Any) -> np.ndarray:
    array = np.asarray(labels)
    if array.dtype == bool:
        return array.astype(np.uint8)
    integral = np.issubdtype(array.dtype, np.integer) or (
        np.issubdtype(array.dtype, np.floating) and bool(np.all(np.mod(array, 1) == 0))
    )
    if not integral:
        raise ValueError(f"labels must hold integers, got dtype {array.dtype}")
    low = int(array.min()) if array.size else 0
    high = int(array.max()) if array.size else 0
    if low < 0:
        dtype = np.int32 if high < 2**31 and low >= -(2**31) else np.int64
    elif high < 2**8:
        dtype = np.uint8
    elif high < 2**16:
        dtype = np.uint16
    elif high < 2**32:
        dtype = np.uint32
    else:
        dtype = np.uint64
    return np.ascontiguousarray(array, dtype=dtype)


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _matrix(array: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(array, dtype=float))
