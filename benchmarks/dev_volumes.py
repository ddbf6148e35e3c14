"""The development volumes of the propagation study and the quality benchmarks, with their objects.

In the repository (``tests/data``): the shared TotalSegmentator CT (3 mm) and its DICOM series, the
brain MR tumour, the CT spleen, the lung-nodule CT and the prostate-lesion MR. Read from
``../shared/data/more`` when that folder is there (benchmarks only, their licences do not allow a
copy): the 1 mm cervical-cord MR and the NSCLC chest CT (tumour, cord, both lungs).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from realdata import ORGANS, brain_mr, ct_dicom, ct_sm, ct_spleen, lung_nodule, prostate_lesion

MORE = Path(__file__).resolve().parents[2] / "shared" / "data" / "more"
CORD = MORE / "spine-mr-cord"
NSCLC = MORE / "ct-lung-nsclc"


KEY_CHOICES = ("largest", "middle", "first", "last")


def key_slices(truth: np.ndarray) -> dict[str, int]:
    """The object's largest slice, the middle of its extent, and its first and last slice."""
    areas = truth.sum(axis=(1, 2))
    present = np.flatnonzero(areas)
    return {
        "largest": int(np.argmax(areas)),
        "middle": int((present[0] + present[-1]) // 2),
        "first": int(present[0]),
        "last": int(present[-1]),
    }


@dataclass(frozen=True)
class DevVolume:
    """A volume, how to load it as (image, labels), and its objects (name -> label value)."""

    name: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    objects: dict[str, int]


def _read(image: Path, label: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    return pixels, np.rint(labels).astype(np.uint8)


def spine_cord() -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm cervical-cord MR (T2) and its manual cord label (benchmarks only)."""
    image, label = _read(CORD / "sub-unf01_T2w.nii.gz", CORD / "sub-unf01_T2w_seg-manual.nii.gz")
    return image, (label > 0).astype(np.uint8)


def nsclc() -> tuple[np.ndarray, np.ndarray]:
    """The NSCLC chest CT (3 mm) and its tumour, cord and lungs (benchmarks only: CC BY-NC)."""
    return _read(NSCLC / "lung1-001_ct.nii.gz", NSCLC / "lung1-001_labels.nii.gz")


def dev_volumes(names: set[str] | None = None) -> list[DevVolume]:
    """Every development volume present (or those of ``names``), each object with at least 50 voxels."""
    found = [
        DevVolume("ct_sm", ct_sm, ORGANS),
        DevVolume("ct_dicom", ct_dicom, ORGANS),
        DevVolume("brain-mr-tumour", brain_mr, {"tumour": 1}),
        DevVolume("ct-spleen", ct_spleen, {"spleen": 1}),
        DevVolume("ct-lung-nodule", lung_nodule, {"nodule": 1}),
        DevVolume("mr-prostate-lesion", prostate_lesion, {"lesion": 1}),
    ]
    if CORD.is_dir():
        found.append(DevVolume("spine-mr-cord", spine_cord, {"cord": 1}))
    if NSCLC.is_dir():
        found.append(
            DevVolume("ct-lung-nsclc", nsclc, {"tumour": 1, "cord": 2, "lung_left": 3, "lung_right": 4})
        )
    out = []
    for volume in found:
        if names is not None and volume.name not in names:
            continue
        _, labels = volume.load()
        objects = {k: v for k, v in volume.objects.items() if np.count_nonzero(labels == v) >= 50}
        out.append(DevVolume(volume.name, volume.load, objects))
    return out
