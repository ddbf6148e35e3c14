"""Intensity windowing and each model family's resize, prompt scaling and mask output.

The three families differ on purpose (see MEDSAM_FACTS): MedSAM stretches the slice to 1024 x 1024,
SAM and LiteMedSAM keep the aspect and pad; MedSAM thresholds after upsampling the sigmoid, LiteMedSAM
upsamples the logits before the sigmoid, SAM upsamples logits and thresholds them at 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from napari_medsam.models import Family

#: Bump when any step below changes, so cached embeddings of the old procedure are not reused.
PREPROCESSING_VERSION = 2

SAM_PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
SAM_PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
INPUT_SIZE: dict[str, int] = {"medsam": 1024, "sam": 1024, "lite-medsam": 256}


@dataclass(frozen=True)
class InputGeometry:
    """How a slice of ``original`` (H, W) was placed in the square model input of ``input_size``."""

    family: str
    original: tuple[int, int]
    resized: tuple[int, int]
    input_size: int


def to_rgb_uint8(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Clip to ``window`` (or the slice's own min..max) and scale to 0..255 uint8, as (H, W, 3).

    An 8-bit image with no window is taken as it is, as MedSAM's own inference does. Values are
    truncated to uint8 after scaling, as in MedSAM's CT/MR preprocessing. A constant slice gives zeros.
    """
    if image.dtype == np.uint8 and window is None:
        scaled = image
    else:
        data = image.astype(np.float64)
        low, high = window if window is not None else (float(data.min()), float(data.max()))
        if high > low:
            scaled = ((np.clip(data, low, high) - low) / (high - low) * 255.0).astype(np.uint8)
        else:
            scaled = np.zeros(data.shape, dtype=np.uint8)
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], 3, axis=-1)
    return np.ascontiguousarray(scaled)


def _resized_shape(original: tuple[int, int], target: int) -> tuple[int, int]:
    """The longest side scaled to ``target``; the other at least one pixel (a 2 x 5000 strip too)."""
    scale = target / max(original)
    return max(1, int(original[0] * scale + 0.5)), max(1, int(original[1] * scale + 0.5))


def _min_max(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    low = image.min()
    return (image - low) / np.clip(image.max() - low, 1e-8, None)


def _pad_square(image: np.ndarray, size: int) -> np.ndarray:
    padded = np.zeros((size, size, image.shape[2]), dtype=np.float32)
    padded[: image.shape[0], : image.shape[1]] = image
    return padded


def _resize_channels(rgb: np.ndarray, resize_2d: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Resize an (H, W, 3) slice one channel at a time: (h, w, 1) when its channels are equal.

    Every grey slice has three equal channels, so it is resized once. Per channel, scikit-image's
    bilinear and OpenCV's area resizes give exactly what their (H, W, 3) resizes give; the bicubic one
    differs by float rounding (~1e-13), which moves a value that is an exact integer across the
    uint8 truncation on ~0.03 % of pixels (by one grey level). The (H, W, 3) bicubic resize runs
    a 3D spline over the channel axis as well: 2.6 s at 1024 x 1024 against 0.14 s for one channel.
    """
    if (rgb[..., 1:] == rgb[..., :1]).all():
        return resize_2d(rgb[..., 0])[..., None]
    return np.stack([resize_2d(rgb[..., c]) for c in range(rgb.shape[-1])], axis=-1)


def model_input(rgb: np.ndarray, family: Family) -> tuple[np.ndarray, InputGeometry]:
    """Turn an (H, W, 3) uint8 slice into the family's (3, S, S) float32 model input."""
    from skimage.transform import resize

    original = (int(rgb.shape[0]), int(rgb.shape[1]))
    size = INPUT_SIZE[family]
    if family == "medsam":
        # MedSAM: stretch to 1024 x 1024 (aspect not kept), bicubic with anti-aliasing, back to
        # uint8, then min-max to [0, 1]; no mean/std normalisation, no padding.
        shape = (size, size)
        resized = _resize_channels(
            rgb, lambda c: resize(c, shape, order=3, preserve_range=True, anti_aliasing=True)
        )
        pixels = _min_max(resized.astype(np.uint8))
    elif family == "lite-medsam":
        # LiteMedSAM, as its published inference (CVPR24_LiteMedSAM_infer): longest side to 256
        # with OpenCV's INTER_AREA on the uint8 slice (an upscale for slices under 256 px, where
        # INTER_AREA is close to nearest neighbour), min-max to [0, 1], zero-padded bottom/right.
        import cv2

        shape = _resized_shape(original, size)
        resized = _resize_channels(
            rgb, lambda c: cv2.resize(np.ascontiguousarray(c), shape[::-1], interpolation=cv2.INTER_AREA)
        )
        pixels = _pad_square(_min_max(resized), size)
    elif family == "sam":
        # SAM: longest side to 1024 (bilinear, anti-aliased), ImageNet mean/std, zero pad.
        shape = _resized_shape(original, size)
        resized = _resize_channels(
            rgb, lambda c: resize(c, shape, order=1, preserve_range=True, anti_aliasing=True)
        )
        normalised = (np.round(resized).astype(np.float32) - SAM_PIXEL_MEAN) / SAM_PIXEL_STD
        pixels = _pad_square(normalised, size)
    else:
        raise ValueError(f"unknown model family {family!r}")
    geometry = InputGeometry(family, original, shape, size)
    channels_first = np.broadcast_to(pixels, (size, size, 3)).transpose(2, 0, 1)
    return np.ascontiguousarray(channels_first, dtype=np.float32), geometry


def prompt_scale(geometry: InputGeometry) -> tuple[float, float]:
    """The (x, y) factors from image pixels to model-input pixels."""
    (height, width), (new_h, new_w) = geometry.original, geometry.resized
    if geometry.family == "lite-medsam":
        ratio = geometry.input_size / max(height, width)
        return ratio, ratio
    return new_w / width, new_h / height


def scale_box(box_xyxy: np.ndarray, geometry: InputGeometry) -> np.ndarray:
    """Scale an (x0, y0, x1, y1) box to model-input pixels (LiteMedSAM truncates, as published)."""
    sx, sy = prompt_scale(geometry)
    scaled = np.asarray(box_xyxy, dtype=np.float64) * np.array([sx, sy, sx, sy])
    if geometry.family == "lite-medsam":
        scaled = np.trunc(scaled)
    return scaled


def scale_points(points_xy: np.ndarray, geometry: InputGeometry) -> np.ndarray:
    """Scale (N, 2) (x, y) points to model-input pixels."""
    sx, sy = prompt_scale(geometry)
    return np.asarray(points_xy, dtype=np.float64) * np.array([sx, sy])


def masks_from_logits(low_res: torch.Tensor, geometry: InputGeometry) -> torch.Tensor:
    """Turn (M, 256, 256) low-resolution logits into (M, H, W) boolean masks, family by family."""
    import torch
    import torch.nn.functional as F

    logits = low_res.float()[:, None]
    height, width = geometry.original
    if geometry.family == "medsam":
        probs = F.interpolate(
            torch.sigmoid(logits), size=(height, width), mode="bilinear", align_corners=False
        )
        return probs[:, 0] > 0.5
    side = geometry.input_size
    if geometry.family == "sam":
        logits = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)
        crop = logits[..., : geometry.resized[0], : geometry.resized[1]]
        upsampled = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
        return upsampled[:, 0] > 0.0
    # lite-medsam: the 256 x 256 logits are at input scale already; crop the padding, upsample, sigmoid.
    crop = logits[..., : geometry.resized[0], : geometry.resized[1]]
    upsampled = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
    return torch.sigmoid(upsampled)[:, 0] > 0.5
