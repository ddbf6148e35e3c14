"""Sample data for napari's File > Open Sample menu; nothing is downloaded."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_medsam.base.windows import SOFT_TISSUE

#: Size and seed of the phantom sample (scripts rebuild its true outline with the same values).
PHANTOM = {"depth": 32, "height": 160, "width": 200, "seed": 0}

LayerData = tuple[np.ndarray, dict[str, Any], str]


def abdominal_ct() -> list[LayerData]:
    """TotalSegmentator's abdominal CT (3 mm, HU), read like any file: geometry, radiological display."""
    from napari_medsam._reader import read_layers
    from napari_medsam.io.samples import ABDOMINAL_CT, ABDOMINAL_CT_NAME

    ((data, meta, kind),) = read_layers(str(ABDOMINAL_CT))
    return [(data, {**meta, "name": ABDOMINAL_CT_NAME, "colormap": "gray"}, kind)]


def ct_phantom() -> list[LayerData]:
    """A synthetic CT volume in HU (32 x 160 x 200, 2.5 x 0.8 x 0.8 mm) with a bright organ."""
    from napari_medsam.base.phantoms import ct_phantom_volume

    volume, _ = ct_phantom_volume(**PHANTOM)
    meta = {
        "name": "CT phantom",
        "scale": (2.5, 0.8, 0.8),
        "units": "mm",
        "colormap": "gray",
        "contrast_limits": SOFT_TISSUE,
        "metadata": {"modality": "CT", "source": "napari_medsam.base.phantoms.ct_phantom_volume"},
    }
    return [(volume, meta, "image")]


def ct_slice() -> list[LayerData]:
    """pydicom's ``CT_small.dcm`` test file (128 x 128 CT slice, MIT licence) in HU."""
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:  # pragma: no cover - the file ships inside pydicom's wheel
        raise FileNotFoundError("pydicom's CT_small.dcm test file is not installed")
    ds = pydicom.dcmread(path)
    slope = float(getattr(ds, "RescaleSlope", 1.0))
    intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    hu = (ds.pixel_array.astype(np.float32) * slope + intercept).astype(np.int16)
    spacing = tuple(float(s) for s in getattr(ds, "PixelSpacing", (1.0, 1.0)))
    meta = {
        "name": "CT slice",
        "scale": spacing,
        "units": "mm",
        "colormap": "gray",
        "contrast_limits": SOFT_TISSUE,
        "metadata": {"modality": "CT", "source": str(path)},
    }
    return [(hu, meta, "image")]
