"""Intensity windows: the one table of CT presets and the CT rule.

A window ``(low, high)`` clips intensities and scales them to 0..255 before a slice reaches a
model (MedSAM's CT/MR preprocessing). MedSAM was trained on CT in the soft-tissue window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: CT windows as (low, high) HU, from level/width: soft tissue 40/400 (MedSAM's training window),
#: lung -600/1500, bone 400/1800, brain 40/80.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft-tissue": (-160.0, 240.0),
    "lung": (-1350.0, 150.0),
    "bone": (-500.0, 1300.0),
    "brain": (0.0, 80.0),
}
#: MedSAM's CT training window.
SOFT_TISSUE = WINDOW_PRESETS["soft-tissue"]
#: How the presets read in a menu (level/width as radiologists name them).
PRESET_TITLES: dict[str, str] = {
    "soft-tissue": "CT soft tissue (L40 W400)",
    "lung": "CT lung (L-600 W1500)",
    "bone": "CT bone (L400 W1800)",
    "brain": "CT brain (L40 W80)",
}


def check_window(window: object) -> tuple[float, float] | None:
    """Return ``window`` as ``(low, high)`` floats, or None."""
    if window is None:
        return None
    try:
        low, high = (float(v) for v in window)  # type: ignore[union-attr]
    except (TypeError, ValueError) as err:
        raise ValueError(f"window must be (low, high), got {window!r}") from err
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"window bounds must be finite, got {window!r}")
    if low >= high:
        raise ValueError(f"window low ({low:g}) must be below high ({high:g})")
    return low, high


def looks_like_ct(array: np.ndarray, modality: str | None = None) -> bool:
    """CT by its DICOM modality, else by its values: signed or float data reaching air and bone.

    The value rule (min <= -900 HU and max >= 100 HU) is what CT in Hounsfield units shows, on the
    finite voxels (NaN and infinite values are ignored).
    """
    if modality is not None:
        return modality.upper() == "CT"
    if not np.issubdtype(array.dtype, np.signedinteger) and not np.issubdtype(array.dtype, np.floating):
        return False
    values = _finite(array)
    return values.size > 0 and float(np.min(values)) <= -900 and float(np.max(values)) >= 100


@dataclass(frozen=True)
class WindowChoice:
    """The window a volume gets by default, and why (printed by the CLI, shown by the widget)."""

    window: tuple[float, float] | None
    reason: str

    def describe(self) -> str:
        """One line, e.g. ``"(-160, 240): CT soft tissue, MedSAM's training window"``."""
        if self.window is None:
            return self.reason
        return f"({self.window[0]:g}, {self.window[1]:g}): {self.reason}"


#: Voxels sampled (evenly strided) for the MR percentiles; more than this costs time, not accuracy.
_PERCENTILE_SAMPLE = 4_000_000


def training_window(volume: np.ndarray, modality: str | None = None, rgb: bool = False) -> WindowChoice:
    """MedSAM's training preprocessing for a volume (or slice): the one place that decides it.

    - CT (DICOM modality CT, or :func:`looks_like_ct`): the soft-tissue window (-160, 240).
    - 8-bit and RGB images: used as they are (no window), as MedSAM's inference does.
    - MR and every other modality: the 0.5 and 99.5 percentiles of the volume's voxels **> 0**
      (MedSAM's pre_CT_MR.py: ``image_data[image_data > 0]``, not ``!= 0``). Negative values do not
      widen the window; clipping maps them, and zeros, to 0, as MedSAM sets its zero voxels back to 0.
    - A volume without positive voxels (or with one positive value): each slice's min..max.

    NaN and infinite voxels are ignored throughout.
    """
    array = np.asarray(volume)
    if rgb or array.dtype == np.uint8:
        return WindowChoice(None, "8-bit or RGB image, used as it is")
    if looks_like_ct(array, modality):
        return WindowChoice(SOFT_TISSUE, "CT soft tissue, MedSAM's training window")
    flat = array.reshape(-1)
    step = max(1, flat.size // _PERCENTILE_SAMPLE)
    values = _finite(flat[::step])
    values = values[values > 0]
    if values.size:
        low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
        if high > low:
            name = modality or "non-CT"
            return WindowChoice((low, high), f"{name}: 0.5-99.5 percentiles of the voxels > 0")
    return WindowChoice(None, "each slice's min..max (no voxels > 0 to take percentiles of)")


def _finite(array: np.ndarray) -> np.ndarray:
    """The finite values of ``array`` (flattened; the array itself when it has no others)."""
    if array.dtype.kind != "f":
        return array.reshape(-1)
    finite = np.isfinite(array)
    return array.reshape(-1) if finite.all() else array[finite]


#: ``window="auto"`` in the volume helpers: :func:`training_window` of the volume.
AUTO = "auto"
WindowArg = tuple[float, float] | Sequence[float] | str | None


def resolve_window(window: WindowArg, volume: Any, modality: str | None = None) -> tuple[float, float] | None:
    """A volume helper's ``window``: ``"auto"`` -> :func:`training_window`; else checked as given."""
    if isinstance(window, str):
        if window != AUTO:
            raise ValueError(f"window must be (low, high), None or {AUTO!r}, got {window!r}")
        return training_window(np.asarray(volume), modality).window
    return check_window(window)
