"""What the widget runs in the background: the model chosen, loaded ahead, and the slices on screen,
encoded ahead (only with weights on this machine: a download runs in a job, with its progress).

:class:`BackgroundWork` is a part of :class:`~napari_medsam._qt.widget.MedSamWidget` (mixed into it):
``preload`` asks :meth:`_preload_target`, ``encoding`` asks :meth:`_encode_target`.
"""

from __future__ import annotations

from functools import partial

from napari_medsam._qt.background import EncodeTarget
from napari_medsam._qt.options import BACKGROUND_SLICES, CUSTOM
from napari_medsam.engine.predictor import SlicePredictor
from napari_medsam.layers.prompts import current_plane


class BackgroundWork:
    """The model loaded ahead and the slices encoded ahead, replanned when the model, backend,
    image, window or slice changes."""

    def _on_model_changed(self, *_: object) -> None:
        self.controls.weights.visible = self.controls.model.value == CUSTOM
        self.encoding.forget_predictor()  # never encode with the old model again
        self._refresh()
        self._on_prefetch_input_changed()

    def _preload_target(self) -> tuple[str, str] | None:
        """The model to load ahead: the one chosen, unless a run has started or its weights are not
        on this machine (a download runs in a job, with its progress shown, never silently)."""
        if self._released or self.jobs.busy or self.model == CUSTOM:
            return None
        source, device = self.model_source, str(self.device)
        return (source, device) if self._loads_without_download(source, device) else None

    def _on_prefetch_input_changed(self, *_: object) -> None:
        """The slice, image, window or model changed: drop queued encodings, plan new ones."""
        self.encoding.schedule(self._image.value)

    def _on_backend_changed(self, backend: str) -> None:
        """Another encoder backend: the predictor held is released; the next use loads the model with it."""
        self._backend = str(backend)
        self.encoding.forget_predictor()
        self.models.clear()
        self._on_prefetch_input_changed()

    def _encode_target(self) -> EncodeTarget | None:
        """What to encode in the background: every slice of the plane on screen (a 2D image: itself)."""
        image = self._image.value
        if self._released or not self.prefetch or self.jobs.busy or self._input_problem():
            return None
        try:
            if self._volume_problem():  # 2D: nothing beyond the slice on screen
                data = image.data[0] if image.multiscale else image.data
                slices, centre = current_plane(image, *self._dims()).extract(data)[None], 0
            else:
                stack = self.current_stack()
                slices, centre = stack, stack.index
        except ValueError:  # e.g. the viewer's position lies outside this image
            return None
        model = (self.model_source, str(self.device))
        load = partial(self._background_predictor, *model)
        return EncodeTarget(model, load, slices, centre, self.intensity_window(image), BACKGROUND_SLICES)

    def _background_predictor(self, source: str, device: str) -> SlicePredictor | None:
        """The predictor to encode with (background thread): the one held, else loaded when its
        weights are on this machine (None: never a download in the background)."""
        return self.models.get(source, device) if self._loads_without_download(source, device) else None

    def _loads_without_download(self, source: str, device: str) -> bool:
        """Whether the model is held already or its weights are on this machine: only then is it
        loaded in the background (a download runs in a job, with its progress shown)."""
        from napari_medsam.models.loading import is_available_offline

        return self.models.holds(source, device) or is_available_offline(source)
