"""Synthetic CT-like phantoms with known outlines, for the demo, the sample data and the tests."""

from __future__ import annotations

import numpy as np

Box = tuple[float, float, float, float]


def ct_phantom_slice(
    height: int = 192, width: int = 256, seed: int = 0, margin: float = 5.0
) -> tuple[np.ndarray, np.ndarray, Box]:
    """A CT slice in HU: air, a soft-tissue body (40 HU, noise 20) and a bright organ (+100 HU).

    Returns (image int16 (H, W), organ mask bool, box (x0, y0, x1, y1) ``margin`` px around the organ).
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width].astype(np.float64)
    body = ((rows - height / 2) / (height * 0.47)) ** 2 + ((cols - width / 2) / (width * 0.47)) ** 2 <= 1
    organ = ((rows - height * 0.5) / (height * 0.2)) ** 2 + ((cols - width * 0.45) / (width * 0.16)) ** 2 <= 1
    image = np.where(
        body, rng.normal(40.0, 20.0, (height, width)), -1000.0 + rng.normal(0, 5, (height, width))
    )
    image[organ] += 100.0
    ys, xs = np.nonzero(organ)
    box = (xs.min() - margin, ys.min() - margin, xs.max() + margin, ys.max() + margin)
    return image.round().astype(np.int16), organ, box


def ct_phantom_volume(
    depth: int = 24, height: int = 128, width: int = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A CT volume in HU (Z, Y, X) with a bright ellipsoid organ; returns (volume int16, organ mask)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:depth, :height, :width].astype(np.float64)
    body = ((y - height / 2) / (height * 0.47)) ** 2 + ((x - width / 2) / (width * 0.47)) ** 2 <= 1
    organ = (
        ((z - depth / 2) / (depth * 0.35)) ** 2
        + ((y - height * 0.5) / (height * 0.22)) ** 2
        + ((x - width * 0.45) / (width * 0.18)) ** 2
    ) <= 1
    noise = rng.normal(0.0, 20.0, z.shape)
    volume = np.where(body, 40.0 + noise, -1000.0 + noise / 4)
    volume[organ] += 100.0
    return volume.round().astype(np.int16), organ


def touching_objects_volume(
    depth: int = 24, height: int = 128, width: int = 128, seed: int = 0, seam: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CT volume in HU (Z, Y, X) where one organ ends against another of the same intensity.

    The *ending* organ (an ellipsoid over slices 0 to about ``depth / 2``) leans towards the
    *continuing* one (an elongated ellipsoid through every slice) as it tapers, so that its last
    slices lie against it; in-plane the two are parted by a ``seam`` px gap of soft tissue (the
    fat plane between touching organs; 0 lets them merge). Both are +100 HU over a 40 HU body
    with noise 20. Returns (volume int16, ending organ mask, continuing organ mask).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:depth, :height, :width].astype(np.float64)
    body = ((y - height / 2) / (height * 0.47)) ** 2 + ((x - width / 2) / (width * 0.47)) ** 2 <= 1
    continuing = ((y - height * 0.5) / (height * 0.22)) ** 2 + ((x - width * 0.64) / (width * 0.11)) ** 2 <= 1
    lean = width * 0.33 + (width * 0.35) * z / depth
    ending = (
        ((z - depth * 0.17) / (depth * 0.38)) ** 2
        + ((y - height * 0.5) / (height * 0.18)) ** 2
        + ((x - lean) / (width * 0.12)) ** 2
    ) <= 1
    if seam > 0:
        near = ndimage.binary_dilation(continuing, np.ones((1, 3, 3), bool), iterations=seam)
        ending &= ~near
    noise = rng.normal(0.0, 20.0, z.shape)
    volume = np.where(body, 40.0 + noise, -1000.0 + noise / 4)
    volume[ending | continuing] += 100.0
    return volume.round().astype(np.int16), ending, continuing
