"""napari-medsam: MedSAM, SAM and LiteMedSAM box/click segmentation for napari.

The public API is imported lazily so that ``import napari_medsam`` (done by napari at start-up)
imports neither torch nor transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["EmbeddingCache", "MedSamPredictor", "ModelLoadError", "Prediction", "__version__"]

if TYPE_CHECKING:
    from napari_medsam.base.errors import ModelLoadError
    from napari_medsam.engine.cache import EmbeddingCache
    from napari_medsam.engine.predictor import MedSamPredictor, Prediction

_LAZY = {
    "MedSamPredictor": "napari_medsam.engine.predictor",
    "Prediction": "napari_medsam.engine.predictor",
    "EmbeddingCache": "napari_medsam.engine.cache",
    "ModelLoadError": "napari_medsam.base.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_medsam' has no attribute {name!r}")
