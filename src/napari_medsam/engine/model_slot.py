"""One predictor at a time for an interactive session: loaded on first use, released on a model change."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from napari_medsam.base.jobs import Job
from napari_medsam.engine.predictor import SlicePredictor

if TYPE_CHECKING:
    from napari_medsam.engine.predictor import MedSamPredictor

T = TypeVar("T")
#: Loads a predictor for (model source, device).
PredictorFactory = Callable[[str, str], SlicePredictor]
#: Downloads what loading a model source needs, yielding progress.
Fetch = Callable[[str], Job[None]]


class ModelSlot:
    """Holds the one predictor of a widget (or script) for the model and device last asked for.

    :meth:`get` loads it on first use; asking for another model or device first releases the one
    held (``release`` is called with it, e.g. to unload it from the model registry). Thread-safe:
    loading runs in a worker while the viewer's thread may read :attr:`predictor`. ``fetch``
    (e.g. :func:`fetch_weights`) downloads what the factory will need, in :meth:`fetch_then`.
    """

    def __init__(
        self,
        factory: PredictorFactory,
        release: Callable[[SlicePredictor], None] = lambda _: None,
        fetch: Fetch | None = None,
    ) -> None:
        self._factory, self._release, self._fetch = factory, release, fetch
        self._lock = threading.Lock()
        self.predictor: SlicePredictor | None = None
        self.key: tuple[str, str] | None = None
        #: The (source, device) being loaded now, by whichever thread asked first; None otherwise.
        self.loading: tuple[str, str] | None = None

    def get(self, source: str, device: str) -> SlicePredictor:
        """The predictor for ``source`` on ``device``, loading it (and releasing another) if needed."""
        key = (str(source), str(device))
        with self._lock:
            if self.predictor is None or self.key != key:
                self._drop()
                self.loading = key
                try:
                    self.predictor = self._factory(*key)
                finally:
                    self.loading = None
                self.key = key
            return self.predictor

    def fetch_then(self, source: str, job: Job[T]) -> Job[T]:
        """``job``, after the slot's ``fetch`` for ``source``: a first download's progress comes
        before the job's own (its loading step then finds the files)."""
        if self._fetch is not None:
            yield from self._fetch(source)
        return (yield from job)

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


def load_predictor(source: str, device: str, backend: str = "auto") -> MedSamPredictor:
    """The default factory: ``MedSamPredictor.from_pretrained`` (imports torch). Its predictors
    pair with :func:`fetch_weights` and :func:`unload_predictor`."""
    from napari_medsam.engine.predictor import MedSamPredictor

    return MedSamPredictor.from_pretrained(source=source, device=device, backend=backend)


def fetch_weights(source: str) -> Job[None]:
    """The default factory's fetch: :func:`napari_medsam.models.loading.fetch_steps` (LiteMedSAM's
    checkpoint, downloaded on first use), with progress."""
    from napari_medsam.models.loading import fetch_steps

    yield from fetch_steps(source)


def unload_predictor(predictor: MedSamPredictor) -> None:
    """The default factory's release: drop the predictor's model from the loaded-model registry."""
    from napari_medsam.models.loading import unload_model

    unload_model(predictor.model)
