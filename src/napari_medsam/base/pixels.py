"""What the engine accepts as an image: real, finite pixels, a 2D or RGB slice (numpy only).

Checked before a model loads (the CLI, batch and embed) and again by the predictor, so a bad input
is a clear error naming the slice or the fix, never a traceback from a resize or a percentile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def real_pixels(image: object) -> np.ndarray:
    """``image`` as an array of real numbers (a bool mask as uint8 0/1); ValueError for complex
    or non-numeric data, with what to do."""
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if np.iscomplexobj(array):
        raise ValueError("image is complex-valued; pass a real image, e.g. np.abs(image)")
    if array.dtype.kind not in "uif":
        raise ValueError(f"image has dtype {array.dtype}; pass a numeric (integer or float) array")
    return array


def check_finite_slices(volume: np.ndarray, axis: int = 0, slices: Sequence[int] | None = None) -> None:
    """ValueError naming the first of ``slices`` (default: all) along ``axis`` that holds NaN or
    infinite values: a run refuses, before it starts, the slices it would reach."""
    if volume.dtype.kind not in "fc":
        return
    for index in range(volume.shape[axis]) if slices is None else slices:
        plane = np.take(volume, index, axis=axis)
        bad = int(plane.size - np.count_nonzero(np.isfinite(plane)))
        if bad:
            raise ValueError(
                f"slice {index} (axis {axis}) holds {bad} NaN or infinite value(s); replace them first, "
                "e.g. np.nan_to_num(volume, nan=volume_min), or work on other slices"
            )


def check_image(image: object) -> np.ndarray:
    """Return ``image`` as a 2D (H, W) or RGB (H, W, 3) array, or raise a clear error."""
    if image is None or isinstance(image, (str, bytes, list, tuple, dict)) or not hasattr(image, "shape"):
        raise TypeError(f"image must be a numpy array (H, W) or (H, W, 3), not {type(image).__name__}")
    array = real_pixels(image)
    if array.size == 0:
        raise ValueError(f"image is empty (shape {array.shape})")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3]
    elif array.ndim == 4 and array.shape[-1] in (3, 4):
        raise ValueError(f"image of shape {array.shape} is an RGB volume; pass one slice, e.g. image[z]")
    elif array.ndim >= 3:
        raise ValueError(
            f"image of shape {array.shape} has {array.ndim} dimensions; pass one 2D slice "
            "(e.g. volume[z]) or an RGB image (H, W, 3)"
        )
    elif array.ndim != 2:
        raise ValueError(f"image of shape {array.shape} is not 2D; pass (H, W) or (H, W, 3)")
    if min(array.shape[:2]) < 2:
        raise ValueError(f"image of shape {array.shape} is too small; both sides must be >= 2 pixels")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(
            f"image contains {bad} NaN or infinite value(s); replace them first, "
            "e.g. np.nan_to_num(image, nan=image_min)"
        )
    return array
