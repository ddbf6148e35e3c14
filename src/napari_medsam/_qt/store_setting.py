"""The widget's embedding store setting: a folder, remembered across napari sessions (QSettings).

Predictors made through :meth:`StoreSetting.wrap` read through the store chosen (memory, then the
store, then the encoder) and write new embeddings to it, prefetched ones included.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

from magicgui.widgets import FileEdit
from qtpy.QtCore import QSettings

from napari_medsam.engine.model_slot import PredictorFactory
from napari_medsam.engine.predictor import SlicePredictor

#: Where the settings live instead of the user's configuration folder (tests set it).
CONFIG_DIR_ENV = "NAPARI_MEDSAM_CONFIG_DIR"
STORE_KEY = "embedding_store"
TIP = "Folder (.zarr) of slice embeddings kept on disk and shared between sessions; empty: none"


def settings() -> QSettings:
    """napari-medsam's settings file (an INI file in the user's configuration folder)."""
    folder = os.environ.get(CONFIG_DIR_ENV)
    if folder:
        return QSettings(str(Path(folder) / "napari-medsam.ini"), QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "napari-medsam", "napari-medsam")


class StoreSetting:
    """The store folder field: saves what is chosen, and gives the store to the current predictor.

    A folder that exists and is not a store is refused (the field's tooltip says why); nothing is
    written until the first embedding is.
    """

    def __init__(self) -> None:
        saved = str(settings().value(STORE_KEY, "") or "")
        self.edit = FileEdit(label="embedding store", mode="d", value=saved, tooltip=TIP)
        self.store = None
        self._predictor: weakref.ref[SlicePredictor] | None = None
        self.edit.changed.connect(self._on_changed)
        self._on_changed()

    @property
    def path(self) -> str | None:
        """The folder chosen, or None."""
        text = str(self.edit.value or "").strip()
        return None if text in ("", ".") else text

    def wrap(self, factory: PredictorFactory) -> PredictorFactory:
        """``factory`` whose predictors read through the store chosen, now and after a change."""

        def load(source: str, device: str) -> SlicePredictor:
            predictor = self._attach(factory(source, device))
            self._predictor = weakref.ref(predictor)
            return predictor

        return load

    def _attach(self, predictor: SlicePredictor) -> SlicePredictor:
        predictor.store = self.store
        return predictor

    def _on_changed(self, *_: object) -> None:
        from napari_medsam.engine.store import EmbeddingStore

        path, problem = self.path, None
        settings().setValue(STORE_KEY, path or "")
        try:
            self.store = None if path is None else EmbeddingStore(path)
        except (ValueError, ImportError) as error:
            self.store, problem = None, str(error)
        self.edit.tooltip = problem or TIP
        predictor = None if self._predictor is None else self._predictor()
        if predictor is not None:
            self._attach(predictor)
