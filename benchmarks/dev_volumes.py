"""The development volumes of the propagation study and the quality benchmark, with their objects.

The shared TotalSegmentator CT (3 mm) and its DICOM series, and the brain MR tumour and CT spleen
(all four in the repository, ``tests/data``); the cervical-cord MR has no stated licence, so it is
read from ``../shared/data/more`` when that folder is there and skipped otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from realdata import ORGANS, brain_mr, ct_dicom, ct_sm, ct_spleen

CORD = Path(__file__).resolve().parents[2] / "shared" / "data" / "more" / "spine-mr-cord"


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


def spine_cord() -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm cervical-cord MR (T2) and its manual cord label (benchmarks only)."""
    import SimpleITK as sitk

    image = sitk.GetArrayFromImage(sitk.ReadImage(str(CORD / "sub-unf01_T2w.nii.gz")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(CORD / "sub-unf01_T2w_seg-manual.nii.gz")))
    return image, (label > 0.5).astype(np.uint8)


def dev_volumes() -> list[DevVolume]:
    """Every development volume present, each object with at least 50 voxels."""
    found = [
        DevVolume("ct_sm", ct_sm, ORGANS),
        DevVolume("ct_dicom", ct_dicom, ORGANS),
        DevVolume("brain-mr-tumour", brain_mr, {"tumour": 1}),
        DevVolume("ct-spleen", ct_spleen, {"spleen": 1}),
    ]
    if CORD.is_dir():
        found.append(DevVolume("spine-mr-cord", spine_cord, {"cord": 1}))
    out = []
    for volume in found:
        _, labels = volume.load()
        objects = {k: v for k, v in volume.objects.items() if np.count_nonzero(labels == v) >= 50}
        out.append(DevVolume(volume.name, volume.load, objects))
    return out
