"""Per-channel resizing against the resize of the whole (H, W, 3) slice, family by family."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.transform import resize

from conftest import make_phantom
from napari_medsam.models.preprocessing import SAM_PIXEL_MEAN, SAM_PIXEL_STD, model_input, to_rgb_uint8


def slices() -> dict[str, np.ndarray]:
    """Grey slices (equal channels) with flat, saturated regions, and a colour image."""
    image, _, _ = make_phantom(150, 210)
    rng = np.random.default_rng(3)
    return {
        "soft-tissue": to_rgb_uint8(image, (-160.0, 240.0)),
        "narrow-window": to_rgb_uint8(image, (0.0, 80.0)),  # mostly 0 and 255
        "colour": rng.integers(0, 256, (120, 170, 3)).astype(np.uint8),  # an upscale to 256
        "large": to_rgb_uint8(np.kron(image, np.ones((8, 8), image.dtype)), (-160.0, 240.0)),  # 1200 x 1680
    }


def min_max(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float64)
    return (image - image.min()) / np.clip(image.max() - image.min(), 1e-8, None)


def padded(image: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((3, size, size))
    out[:, : image.shape[0], : image.shape[1]] = image.transpose(2, 0, 1)
    return out


def longest_side(shape: tuple[int, ...], size: int) -> tuple[int, int]:
    scale = size / max(shape[:2])
    return int(shape[0] * scale + 0.5), int(shape[1] * scale + 0.5)


@pytest.mark.parametrize("name", list(slices()))
def test_lite_medsam_input_equals_the_three_channel_area_resize(name):
    rgb = slices()[name]
    small = cv2.resize(rgb, longest_side(rgb.shape, 256)[::-1], interpolation=cv2.INTER_AREA)
    want = padded(min_max(small), 256)
    pixels, geometry = model_input(rgb, "lite-medsam")
    assert pixels.shape == (3, 256, 256)
    assert geometry.resized == small.shape[:2]
    np.testing.assert_allclose(pixels, want, atol=1e-6)


@pytest.mark.parametrize("name", list(slices()))
def test_sam_input_equals_the_three_channel_bilinear_resize(name):
    rgb = slices()[name]
    small = resize(rgb, longest_side(rgb.shape, 1024), order=1, preserve_range=True, anti_aliasing=True)
    want = padded((np.round(small) - SAM_PIXEL_MEAN) / SAM_PIXEL_STD, 1024)
    pixels, _ = model_input(rgb, "sam")
    np.testing.assert_allclose(pixels, want, atol=1e-5)


@pytest.mark.parametrize("name", list(slices()))
def test_medsam_input_matches_the_three_channel_bicubic_resize(name):
    """Equal but for float rounding at exact integers: at most one grey level on 0.1 % of pixels."""
    rgb = slices()[name]
    stretched = resize(rgb, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    pixels, _ = model_input(rgb, "medsam")
    assert pixels.shape == (3, 1024, 1024)
    low, high = float(stretched.min()), float(stretched.max())
    grey = np.rint(pixels * (high - low) + low).astype(np.int16).transpose(1, 2, 0)
    differ = grey != stretched
    assert np.abs(grey - stretched.astype(np.int16)).max() <= 1
    assert differ.mean() <= 1e-3
    if name == "colour":
        assert not np.array_equal(pixels[0], pixels[1])  # channels resized one by one, not merged


def medsam_mr_uint8(volume: np.ndarray) -> np.ndarray:
    """MedSAM's pre_CT_MR.py for non-CT volumes, written out: 0.5/99.5 percentiles of the voxels > 0,
    clip, min-max to 0..255 over the clipped volume, uint8, the original zeros set back to 0."""
    low = np.percentile(volume[volume > 0], 0.5)
    high = np.percentile(volume[volume > 0], 99.5)
    clipped = np.clip(volume, low, high)
    scaled = (clipped - np.min(clipped)) / (np.max(clipped) - np.min(clipped)) * 255.0
    scaled[volume == 0] = 0
    return np.uint8(scaled)


def test_mr_window_is_medsams_rule_of_the_voxels_above_zero():
    """An MR-like volume with negative values (noise around a zero background): the percentiles of
    ``!= 0`` and of ``> 0`` differ, and the slices reach the model exactly as MedSAM's rule gives."""
    from napari_medsam.base.windows import training_window

    rng = np.random.default_rng(7)
    volume = rng.normal(300.0, 120.0, (6, 40, 50))
    volume[:, :8] = rng.normal(0.0, 5.0, (6, 8, 50))  # background noise, half of it negative
    volume[:, -4:] = 0.0
    volume = volume.round().astype(np.int16)
    assert (volume < 0).sum() > 100
    nonzero = np.percentile(volume[volume != 0], [0.5, 99.5])
    positive = np.percentile(volume[volume > 0], [0.5, 99.5])
    assert nonzero[0] < 0 < positive[0]  # the two rules differ on this volume
    choice = training_window(volume, "MR")
    np.testing.assert_allclose(choice.window, positive)
    want = medsam_mr_uint8(volume.astype(np.float64))
    got = np.stack([to_rgb_uint8(plane, choice.window)[..., 0] for plane in volume])
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # float rounding at exact integers
    assert (got != want).mean() <= 1e-3
    assert (got[volume <= 0] == 0).all()
