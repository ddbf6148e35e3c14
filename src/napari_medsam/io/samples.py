"""The data shipped inside the package (``napari_medsam/samples``, credited in its README)."""

from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
#: TotalSegmentator's abdominal CT test scan, 3 mm isotropic, int16 HU (Apache-2.0).
ABDOMINAL_CT = SAMPLES / "abdominal_ct.nii.gz"
#: Its reference liver, a 0/1 mask on the same grid (what the demo scores against).
ABDOMINAL_CT_LIVER = SAMPLES / "abdominal_ct_liver_seg.nii.gz"
#: The name the sample gets in napari.
ABDOMINAL_CT_NAME = "Abdominal CT"
