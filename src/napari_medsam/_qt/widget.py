"""MedSamWidget: boxes and clicks in napari layers -> MedSAM / SAM / LiteMedSAM masks in Labels.

Every action reads its inputs on the viewer's thread (:meth:`MedSamWidget.prepare`,
:meth:`MedSamWidget.prepare_volume`), runs the model in a job that touches no layer, then writes
all masks as one undo step (:meth:`MedSamWidget.apply`, :meth:`MedSamWidget.apply_volume`).
:meth:`segment`, :meth:`propagate`, :meth:`correct` and :meth:`interpolate` chain the three
synchronously for scripts; the buttons run the same jobs in a thread worker with progress and
Cancel. The selected object is one fact: the labels layer's ``selected_label``, which the objects
table's highlighted row shows and sets; Propagate (by default), Correct and End here act on it.
Auto-segment runs Segment on each box or click drawn (``_qt.background.AutoSegment``), background
encoding encodes every slice of the image on screen (``VolumeEncoding``); ``objects`` is the table of
the objects' names and statistics (``_qt.objects_table``).

This module builds the widget and wires its parts; the actions live in their own modules, mixed
into the widget: Segment and the steps every run shares in ``_qt/runs.py``, Propagate, Correct,
Interpolate and End here in ``_qt/volume_actions.py``, the model loaded and the slices encoded
ahead in ``_qt/background_work.py``. The panels are ``_qt/pickers.py``, ``_qt/controls.py``,
``_qt/objects_table.py`` and ``_qt/review_list.py``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import napari.layers
import napari.viewer
from magicgui.widgets import Container
from napari.utils.notifications import show_error, show_info, show_warning

from napari_medsam._qt.activity import BackgroundActivity
from napari_medsam._qt.background import AutoSegment, VolumeEncoding
from napari_medsam._qt.background_work import BackgroundWork
from napari_medsam._qt.box_claims import BoxClaims
from napari_medsam._qt.captions import SEGMENT, captions, every_text, fit_name
from napari_medsam._qt.click_polarity import ClickPolarity
from napari_medsam._qt.controls import Controls, keep_narrow, keep_width
from napari_medsam._qt.jobs import JobRunner
from napari_medsam._qt.objects_table import ObjectTable
from napari_medsam._qt.options import (
    ALL_SLICES,
    CHOOSE_WEIGHTS,
    CUSTOM,
    DEVICES,
    JOIN_TIMEOUT_S,
    MODELS,
    THIS_SLICE,
    TOGGLE_KEY,
    WINDOWS,
    ModelOption,
    Option,
    default_model,
    layer_window,
)
from napari_medsam._qt.pickers import LayerPickers
from napari_medsam._qt.preload import ModelPreload
from napari_medsam._qt.reader_default import ReaderOffer
from napari_medsam._qt.runs import Runs
from napari_medsam._qt.shortcuts import SHORTCUTS, bind_shortcuts, press, shown
from napari_medsam._qt.volume_actions import VolumeActions
from napari_medsam._qt.watchers import CloseWatcher
from napari_medsam.base.label_policy import AFTER, BEFORE
from napari_medsam.engine.model_slot import (
    ModelSlot,
    PredictorFactory,
    fetch_weights,
    load_predictor,
    unload_predictor,
)
from napari_medsam.engine.predictor import SlicePredictor
from napari_medsam.layers import volume as vol
from napari_medsam.layers.objects import object_names
from napari_medsam.layers.requests import (
    ALL_OBJECTS,
    NEW_OBJECTS,
    PROPAGATE_SCOPES,
    SELECTED_OBJECT,
)
from napari_medsam.models import BACKENDS

__all__ = [
    "ALL_OBJECTS", "ALL_SLICES", "MODELS", "NEW_OBJECTS", "SELECTED_OBJECT", "THIS_SLICE", "TOGGLE_KEY",
    "WINDOWS", "MedSamWidget",
]  # fmt: skip


class MedSamWidget(Runs, VolumeActions, BackgroundWork, Container):
    """Segment the objects outlined by boxes (and clicks) with MedSAM into a Labels layer.

    Every option is a public attribute that scripts read and set and the GUI follows
    (``widget.model = "sam-vit-base"``, ``widget.overwrite = True``); setting a value the
    widget does not offer raises ValueError.
    """

    model = ModelOption()
    image_layer = Option("_image", "The Image layer segmented.")
    boxes_layer = Option("_boxes", "The Shapes layer of box prompts (None: no boxes).")
    clicks_layer = Option("_clicks", "The Points layer of click prompts (None: no clicks).")
    labels_layer = Option("_labels", "The output Labels layer (None: one is created on the first run).")
    device = Option("controls.device", f"Where the model runs: one of {DEVICES}.")
    backend = Option("controls.backend", f"What runs the image encoder (CLI --backend): one of {BACKENDS}.")
    window = Option("controls.window", f"Intensity window preset: one of {list(WINDOWS)}.")
    scope = Option("controls.scope", f"What Segment and Interpolate take: {THIS_SLICE!r} or {ALL_SLICES!r}.")
    propagate_scope = Option("controls.propagate_scope", f"What Propagate carries: {PROPAGATE_SCOPES}.")
    overwrite = Option("controls.overwrite", "Whether new masks may overwrite other objects' pixels.", bool)
    auto_segment = Option("controls.auto", "Segment each box or click as soon as it is drawn.", bool)
    prefetch = Option("controls.prefetch", "Encode every slice of the image in the background.", bool)
    embedding_store = Option("controls.store.edit", "Embedding store folder (.zarr), remembered; '': none.")
    positive_clicks = Option("controls.positive", "Polarity of the next click (key T toggles it).", bool)

    def __init__(
        self, viewer: napari.viewer.Viewer, predictor_factory: PredictorFactory | None = None
    ) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._showing_problem = self._released = False

        #: The image picker and its boxes, clicks and labels pickers (auto-picked, see _qt.pickers).
        self.pickers = LayerPickers(viewer)
        self._image = self.pickers.image
        self._boxes, self._clicks, self._labels = self.pickers.companions.values()
        c = self.controls = Controls(default_model())
        #: The one predictor: switching the model releases the previous one; it reads through the store.
        self._backend = "auto"  # the encoder backend chosen, read by loads in worker threads
        if predictor_factory is None:  # the default: weights fetched with progress, models unloaded
            self.models = ModelSlot(c.store.wrap(self._load_predictor), unload_predictor, fetch_weights)
        else:  # a given factory has its own weights and keeps its predictors
            self.models = ModelSlot(c.store.wrap(predictor_factory))
        self.segment_button, self.propagate_button, self.interpolate_button = c.run_buttons[:3]
        self.correct_button = c.correct_button
        self.cancel_button, self.run_buttons, self.actions = c.cancel_button, c.run_buttons, c.actions
        #: The buttons that end the selected object at this slice, by slider side ("before", "after").
        self.end_buttons = {BEFORE: c.end_before_button, AFTER: c.end_after_button}
        self.progress_bar, self.status_label = c.progress_bar, c.status_label
        self.extend([*self.pickers.widgets, *c.widgets])
        self.objects = ObjectTable(viewer, self._image, self._labels, on_selected=self._refresh)
        self.native.layout().addWidget(self.objects.native)
        #: The offer, once, to make napari-medsam napari's reader for medical files (a banner on top).
        self.reader_offer = ReaderOffer()
        self.native.layout().insertWidget(0, self.reader_offer.native)
        keep_narrow(self.native)
        self.jobs = JobRunner(c.progress_bar, c.status_label, c.cancel_button, self._notify, self._on_busy)
        self.job_finished = self.jobs.finished
        self.auto = AutoSegment(self.native, self._auto_segment, lambda: self.jobs.busy)
        #: Plans what to encode in the background; ``prefetcher`` encodes it in a thread.
        self.encoding = VolumeEncoding(self.native, self._encode_target, lambda _: self.activity.refresh())
        self.prefetcher = self.encoding.prefetcher
        #: The line under the status line: the model loading, the slices encoded in the background.
        self.activity = BackgroundActivity(
            self.native, c.encoding_status, c.progress_bar, self.models, lambda: self.prefetcher.progress,
            lambda: self.jobs.busy, lambda: self.preload.loading,
        )  # fmt: skip

        self.controls.new_layers.changed.connect(self.add_prompt_layers)
        actions = ("Segment", vol.PROPAGATE, vol.INTERPOLATE, vol.CORRECT)
        for button, action in zip(self.run_buttons, actions, strict=True):
            button.changed.connect(partial(self._start, action))
        for side, button in self.end_buttons.items():
            button.changed.connect(partial(self._end_clicked, side))
        self.controls.propagate_scope.changed.connect(self._refresh)
        self._boxes.changed.connect(lambda layer: self.auto.watch("boxes", layer))
        self._clicks.changed.connect(self._on_clicks_layer_changed)
        self.controls.auto.changed.connect(lambda on: setattr(self.auto, "enabled", bool(on)))
        for picker in (self.controls.model, self.controls.weights, self.controls.device):
            picker.changed.connect(self._on_model_changed)
        self._image.changed.connect(self._on_image_changed)
        self._labels.changed.connect(self._refresh)
        for picker in (self._image, self.controls.window, self.controls.prefetch):
            picker.changed.connect(self._on_prefetch_input_changed)
        self.job_finished.connect(self._on_job_finished)
        self.controls.backend.changed.connect(self._on_backend_changed)
        self._viewer_events = [
            (self._viewer.layers.events.inserted, self._on_layers_changed),
            (self._viewer.layers.events.removed, self._on_layers_changed),
            (self._viewer.layers.events.reordered, self._on_layers_changed),
            (self._viewer.dims.events.ndisplay, self._on_dims_changed),
            (self._viewer.dims.events.order, self._on_dims_changed),
            (self._viewer.dims.events.current_step, self._on_dims_changed),
        ]
        for emitter, callback in self._viewer_events:
            emitter.connect(callback)
        #: Polarity of the next click; key T toggles it (or flips the selected clicks).
        self.polarity = ClickPolarity(self.controls.positive)
        #: Which boxes are segmented as drawn; undoing a run frees its boxes (``_qt.box_claims``).
        self.claims = BoxClaims()
        #: Each action's button by name (the captions' and the shortcuts' keys).
        self.buttons = {
            SEGMENT: self.segment_button, vol.PROPAGATE: self.propagate_button,
            vol.INTERPOLATE: self.interpolate_button, vol.CORRECT: self.correct_button, **self.end_buttons,
        }  # fmt: skip
        for name, texts in every_text().items():
            keep_width(self.buttons[name], texts)
        self._fit = partial(fit_name, self.propagate_button)
        #: The shortcuts, bound on the viewer through napari's key bindings until the widget closes.
        self.keys = bind_shortcuts(self._viewer, self.buttons, self._press, self.polarity.toggle)
        self._close_watcher = CloseWatcher(self.native, self.release)
        #: Loads the chosen model in a thread soon after opening: the first Segment need not wait.
        #: Then encodes the slices around the one on screen (when prefetching is on).
        loaded = self._on_prefetch_input_changed
        self.preload = ModelPreload(
            self.native, self._preload_target, self.models.get, loaded, started=self.activity.refresh
        )
        self.pickers.auto_pick()
        self.auto.watch("boxes", self._boxes.value)
        self._on_clicks_layer_changed(self._clicks.value)
        self._on_prefetch_input_changed()
        self._refresh()

    @property
    def predictor(self) -> SlicePredictor | None:
        """The predictor of the last run (None before the first run)."""
        return self.models.predictor

    @property
    def model_source(self) -> str:
        """The model chosen, as the predictor loads it; ValueError when a custom path is missing."""
        if self.model == CUSTOM:
            raise ValueError(CHOOSE_WEIGHTS)
        return self.model

    def ensure_labels_layer(self, image: Any | None = None) -> Any:
        """The labels layer picked, or a new empty one over ``image`` (default: the one picked)."""
        if self._labels.value is None:
            image = self._image.value if image is None else image
            if image is None:
                raise ValueError("Open or pick an image layer first.")
            self.pickers.add_labels_layer(image)
        return self._labels.value

    def intensity_window(self, image: Any) -> tuple[float, float] | None:
        """The (low, high) window the 'window' option gives for ``image`` (None: slice min..max)."""
        return layer_window(self.controls.window.value, image)

    def get_predictor(self, source: str | None = None, device: str | None = None) -> SlicePredictor:
        """The predictor for a model and device (default: the ones chosen), loaded on first use.

        Loading is slow: call it inside a job, with ``source`` and ``device`` read on the
        viewer's thread (a worker thread must not read Qt widgets).
        """
        return self.models.get(source or self.model_source, device or str(self.device))

    def add_prompt_layers(self, *_: object) -> tuple[Any, Any]:
        """Add a boxes (Shapes) and a clicks (Points) layer over the image and pick them."""
        image = self._image.value
        if image is None:
            self._notify("warning", "Open or pick an image layer first.")
            return None, None
        return self.pickers.add_prompt_layers(image, positive=self.controls.positive.value)

    def release(self) -> None:
        """Closing the widget or the viewer: stop and join jobs and prefetching, give back bindings."""
        if self._released:
            return
        self._released = True
        self.jobs.cancel()
        self.jobs.wait(JOIN_TIMEOUT_S)
        self.preload.close(JOIN_TIMEOUT_S)
        self.auto.close()
        self.encoding.close(JOIN_TIMEOUT_S)
        self.activity.close()
        self.objects.close()
        self.models.clear()
        self.keys.release()
        self.claims.close()
        for emitter, callback in self._viewer_events:
            emitter.disconnect(callback)

    def _refresh(self, *_: object) -> None:
        problem = self._input_problem()
        volume_problem = problem or (None if self._image.value is None else self._volume_problem())
        sides = None if volume_problem else self._slider_sides()
        keys = {name: shown(key) for name, key in SHORTCUTS.items()}
        said = captions(self._selected_name(), str(self.propagate_scope), sides, keys, self._fit)
        blockers = dict.fromkeys([vol.PROPAGATE, vol.INTERPOLATE, vol.CORRECT, BEFORE, AFTER], volume_problem)
        for name, button in self.buttons.items():
            blocker = blockers.get(name, problem)
            button.text, tip = said[name]
            button.enabled = blocker is None and not self.jobs.busy
            button.tooltip = blocker or tip
        if problem:
            self.status_label.value, self._showing_problem = problem, True
        elif self._showing_problem:
            self.status_label.value, self._showing_problem = "Ready", False

    def _selected_name(self) -> str | None:
        """The selected object as buttons name it: its name, else its label id (None: none selected)."""
        labels = self._labels.value
        label_id = 0 if labels is None else int(labels.selected_label)
        return (object_names(labels).get(label_id) or f"label {label_id}") if label_id > 0 else None

    def _press(self, button: Any) -> None:
        """A shortcut: press ``button``, or say why it cannot be pressed now."""
        said = press(button, self.jobs.busy)
        if said:
            self.status_label.value = said

    def _notify(self, level: str, message: str) -> None:
        {"error": show_error, "warning": show_warning}.get(level, show_info)(message)

    def _on_busy(self, busy: bool) -> None:
        self.controls.backend.enabled = not busy  # the predictor of a running job stays
        if busy:
            self.encoding.stop()
        self._refresh()

    def _on_job_finished(self, outcome: str) -> None:
        self.auto.resume()
        self.encoding.schedule(self._image.value)

    def _start(self, action: str, *_: object) -> None:
        """A button's run: read (a warning if that fails), run in the worker, write when done."""
        volume = action in (vol.PROPAGATE, vol.INTERPOLATE, vol.CORRECT)
        try:
            request = self.prepare_volume(action) if volume else self.prepare()
        except ValueError as err:
            self.status_label.value = str(err)
            self._notify("warning", str(err))
            return
        if action in (vol.PROPAGATE, vol.CORRECT):
            self._run_with_preview(request)
            return
        job = self.volume_job(request) if volume else self.segment_job(request)
        apply = self.apply_volume if volume else self.apply
        self.run_job(job, lambda outcome: apply(request, outcome), title=action)

    def _on_image_changed(self, *_: object) -> None:
        """Another image: what the status line said was about the last one."""
        self.status_label.value, self._showing_problem = "Ready", False
        self._refresh()

    def _on_clicks_layer_changed(self, layer: Any) -> None:
        self.auto.watch("clicks", layer)
        self.polarity.set_layer(layer)

    def _on_layers_changed(self, *_: object) -> None:
        self.pickers.refresh()
        self._on_dims_changed()

    def _on_dims_changed(self, *_: object) -> None:
        self._refresh()
        self._on_prefetch_input_changed()

    def _load_predictor(self, source: str, device: str) -> SlicePredictor:
        return load_predictor(source, device, backend=self._backend)
