"""One predictor at a time for an interactive session: loaded on first use, released on a model change."""

from __future__ import annotations

import threading
from collections.abc import Callable

from napari_medsam.core.predictor import SlicePredictor

#: Loads a predictor for (model source, device).
PredictorFactory = Callable[[str, str], SlicePredictor]


class ModelSlot:
    """Holds the one predictor of a widget (or script) for the model and device last asked for.

    :meth:`get` loads it on first use; asking for another model or device first releases the one
    held (``release`` is called with it, e.g. to unload it from the model registry). Thread-safe:
    loading runs in a worker while the viewer's thread may read :attr:`predictor`.
    """

    def __init__(
        self, factory: PredictorFactory, release: Callable[[SlicePredictor], None] = lambda _: None
    ) -> None:
        self._factory, self._release = factory, release
        self._lock = threading.Lock()
        self.predictor: SlicePredictor | None = None
        self.key: tuple[str, str] | None = None

    def get(self, source: str, device: str) -> SlicePredictor:
        """The predictor for ``source`` on ``device``, loading it (and releasing another) if needed."""
        key = (str(source), str(device))
        with self._lock:
            if self.predictor is None or self.key != key:
                self._drop()
                self.predictor = self._factory(*key)
                self.key = key
            return self.predictor

    def holds(self, source: str, device: str) -> bool:
        """Whether the predictor held is the one for ``source`` on ``device``."""
        return self.predictor is not None and self.key == (str(source), str(device))

    def clear(self) -> None:
        """Release the predictor held (the widget closed)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self.predictor is not None:
            old, self.predictor, self.key = self.predictor, None, None
            self._release(old)


def load_predictor(source: str, device: str, backend: str = "auto") -> SlicePredictor:
    """The default factory: ``MedSamPredictor.from_pretrained`` (imports torch)."""
    from napari_medsam.core.predictor import MedSamPredictor

    return MedSamPredictor.from_pretrained(source=source, device=device, backend=backend)


def unload_predictor(predictor: SlicePredictor) -> None:
    """The default release: drop the predictor's model from the loaded-model registry."""
    model = getattr(predictor, "model", None)
    if model is not None:
        from napari_medsam.models.loading import unload_model

        unload_model(model)
