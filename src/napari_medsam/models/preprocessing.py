"""Intensity windowing and the procedures of each family's resize, prompt scaling and mask output.

Which family runs which procedure is its :class:`~napari_medsam.models.families.FamilySpec`; the
functions here look it up and never compare a family's name. The families differ on purpose (see
docs/preprocessing.md): MedSAM stretches the slice to 1024 x 1024, SAM and LiteMedSAM keep the aspect and
pad; MedSAM thresholds after upsampling the sigmoid, LiteMedSAM upsamples the logits before the
sigmoid, SAM upsamples logits and thresholds them at 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_medsam.models.families import family_spec

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

#: Bump when any step below changes, so cached embeddings of the old procedure are not reused.
PREPROCESSING_VERSION = 2

SAM_PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
SAM_PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


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


def _bicubic(channel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """MedSAM: scikit-image's bicubic resize with anti-aliasing (values kept, float)."""
    from skimage.transform import resize

    return resize(channel, shape, order=3, preserve_range=True, anti_aliasing=True)


def _bilinear(channel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """SAM: scikit-image's bilinear resize with anti-aliasing (values kept, float)."""
    from skimage.transform import resize

    return resize(channel, shape, order=1, preserve_range=True, anti_aliasing=True)


def _area(channel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """LiteMedSAM: OpenCV's INTER_AREA on the uint8 slice (an upscale for slices under 256 px,
    where INTER_AREA is close to nearest neighbour)."""
    import cv2

    return cv2.resize(np.ascontiguousarray(channel), shape[::-1], interpolation=cv2.INTER_AREA)


def _uint8_min_max(resized: np.ndarray) -> np.ndarray:
    """Back to uint8 (truncating), then min-max to [0, 1]; no mean/std normalisation."""
    return _min_max(resized.astype(np.uint8))


def _rounded_imagenet(resized: np.ndarray) -> np.ndarray:
    """Rounded to grey levels, then ImageNet's mean and standard deviation."""
    return (np.round(resized).astype(np.float32) - SAM_PIXEL_MEAN) / SAM_PIXEL_STD


#: A spec's ``resize``: (one channel, (rows, cols)) -> that channel resized.
RESIZES: dict[str, Callable[[np.ndarray, tuple[int, int]], np.ndarray]] = {
    "bicubic": _bicubic,
    "bilinear": _bilinear,
    "area": _area,
}
#: A spec's ``normalise``: the resized (h, w, c) slice -> float model input before padding.
NORMALISES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "uint8 min-max": _uint8_min_max,
    "rounded ImageNet": _rounded_imagenet,
}


def model_input(rgb: np.ndarray, family: str) -> tuple[np.ndarray, InputGeometry]:
    """Turn an (H, W, 3) uint8 slice into the family's (3, S, S) float32 model input."""
    spec = family_spec(family)
    original = (int(rgb.shape[0]), int(rgb.shape[1]))
    size = spec.input_size
    shape = _resized_shape(original, size) if spec.keeps_aspect else (size, size)
    resize = RESIZES[spec.resize]
    pixels = NORMALISES[spec.normalise](_resize_channels(rgb, lambda c: resize(c, shape)))
    if spec.keeps_aspect:
        pixels = _pad_square(pixels, size)
    geometry = InputGeometry(spec.name, original, shape, size)
    channels_first = np.broadcast_to(pixels, (size, size, 3)).transpose(2, 0, 1)
    return np.ascontiguousarray(channels_first, dtype=np.float32), geometry


def prompt_scale(geometry: InputGeometry) -> tuple[float, float]:
    """The (x, y) factors from image pixels to model-input pixels."""
    (height, width), (new_h, new_w) = geometry.original, geometry.resized
    if family_spec(geometry.family).prompt_scale == "longest side":
        ratio = geometry.input_size / max(height, width)
        return ratio, ratio
    return new_w / width, new_h / height


def scale_box(box_xyxy: np.ndarray, geometry: InputGeometry) -> np.ndarray:
    """Scale an (x0, y0, x1, y1) box to model-input pixels (truncated where the family's spec says)."""
    sx, sy = prompt_scale(geometry)
    scaled = np.asarray(box_xyxy, dtype=np.float64) * np.array([sx, sy, sx, sy])
    if family_spec(geometry.family).truncate_boxes:
        scaled = np.trunc(scaled)
    return scaled


def scale_points(points_xy: np.ndarray, geometry: InputGeometry) -> np.ndarray:
    """Scale (N, 2) (x, y) points to model-input pixels."""
    sx, sy = prompt_scale(geometry)
    return np.asarray(points_xy, dtype=np.float64) * np.array([sx, sy])


def _sigmoid_then_upsample(logits: torch.Tensor, geometry: InputGeometry) -> torch.Tensor:
    """MedSAM: the sigmoid of the 256 x 256 logits, bilinear up to (H, W), then > 0.5."""
    import torch
    import torch.nn.functional as F

    probs = F.interpolate(torch.sigmoid(logits), size=geometry.original, mode="bilinear", align_corners=False)
    return probs[:, 0] > 0.5


def _upsample_crop_resize(logits: torch.Tensor, geometry: InputGeometry) -> torch.Tensor:
    """SAM: logits up to the input size, cropped of the padding, resized to (H, W), then > 0."""
    import torch.nn.functional as F

    side = geometry.input_size
    logits = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)
    crop = logits[..., : geometry.resized[0], : geometry.resized[1]]
    upsampled = F.interpolate(crop, size=geometry.original, mode="bilinear", align_corners=False)
    return upsampled[:, 0] > 0.0


def _crop_upsample_sigmoid(logits: torch.Tensor, geometry: InputGeometry) -> torch.Tensor:
    """LiteMedSAM: the 256 x 256 logits are at input scale already; crop the padding, upsample to
    (H, W), then the sigmoid > 0.5."""
    import torch
    import torch.nn.functional as F

    crop = logits[..., : geometry.resized[0], : geometry.resized[1]]
    upsampled = F.interpolate(crop, size=geometry.original, mode="bilinear", align_corners=False)
    return torch.sigmoid(upsampled)[:, 0] > 0.5


#: A spec's ``mask_output``: ((M, 1, 256, 256) float logits, geometry) -> (M, H, W) bool masks.
MASK_OUTPUTS: dict[str, Callable[[torch.Tensor, InputGeometry], torch.Tensor]] = {
    "sigmoid, upsample": _sigmoid_then_upsample,
    "upsample, crop, resize, > 0": _upsample_crop_resize,
    "crop, upsample, sigmoid": _crop_upsample_sigmoid,
}


def masks_from_logits(low_res: torch.Tensor, geometry: InputGeometry) -> torch.Tensor:
    """Turn (M, 256, 256) low-resolution logits into (M, H, W) boolean masks, as the family's spec says."""
    output = MASK_OUTPUTS[family_spec(geometry.family).mask_output]
    return output(low_res.float()[:, None], geometry)
