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
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial
from typing import Any

import napari.layers
import napari.viewer
from magicgui.widgets import Container
from napari.utils.notifications import show_error, show_info, show_warning

from napari_medsam._qt.activity import BackgroundActivity
from napari_medsam._qt.background import AutoSegment, EncodeTarget, VolumeEncoding
from napari_medsam._qt.box_claims import BoxClaims
from napari_medsam._qt.captions import SEGMENT, captions, every_text, fit_name
from napari_medsam._qt.controls import Controls, keep_narrow, keep_width
from napari_medsam._qt.jobs import JobRunner
from napari_medsam._qt.objects_table import ObjectTable
from napari_medsam._qt.options import (
    ALL_SLICES,
    BACKGROUND_SLICES,
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
from napari_medsam._qt.shortcuts import SHORTCUTS, bind_shortcuts, press, shown
from napari_medsam._qt.watchers import CloseWatcher
from napari_medsam.base.jobs import Job, run_to_end
from napari_medsam.base.label_policy import AFTER, BEFORE
from napari_medsam.engine.model_slot import (
    ModelSlot,
    PredictorFactory,
    fetch_weights,
    load_predictor,
    unload_predictor,
)
from napari_medsam.engine.predictor import SlicePredictor
from napari_medsam.layers import segment as seg
from napari_medsam.layers import volume as vol
from napari_medsam.layers.directions import SliderSides, slider_sides
from napari_medsam.layers.objects import object_names, selected_object
from napari_medsam.layers.prompt_layers import ClickPolarity
from napari_medsam.layers.prompts import current_plane, spatial_shape
from napari_medsam.layers.requests import (
    ALL_OBJECTS,
    NEW_OBJECTS,
    PROPAGATE_SCOPES,
    SELECTED_OBJECT,
    LayerInputs,
    RunSettings,
    run_problem,
)
from napari_medsam.models import BACKENDS

__all__ = [
    "ALL_OBJECTS", "ALL_SLICES", "MODELS", "NEW_OBJECTS", "SELECTED_OBJECT", "THIS_SLICE", "TOGGLE_KEY",
    "WINDOWS", "MedSamWidget",
]  # fmt: skip


class MedSamWidget(Container):
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
        self.models = ModelSlot(
            c.store.wrap(predictor_factory or self._load_predictor),
            unload_predictor,
            fetch=None if predictor_factory else fetch_weights,  # a given factory has its own weights
        )
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

    def segment(self) -> list[int]:
        """Segment synchronously as the Segment button does; return the label ids written.

        Raises ValueError when there is nothing to segment or the layers do not fit together.
        """
        request = self._idle_then(self.prepare)
        return self.apply(request, run_to_end(self.segment_job(request), self.jobs.show_progress))

    def propagate(self, **options: Any) -> list[int]:
        """Propagate objects of the current slice through the volume, as Propagate does.

        Which objects: ``propagate_scope`` (the selected one, the new ones, or all). ``options`` go
        to :func:`napari_medsam.engine.propagation.propagate` (``expand``, ``min_area_fraction``,
        ``max_slices``, ...). Returns the label ids written.
        """
        request = self._idle_then(lambda: self.prepare_volume(vol.PROPAGATE, **options))
        return self.apply_volume(request, run_to_end(self.volume_job(request), self.jobs.show_progress))

    def correct(self, **options: Any) -> list[int]:
        """Correct the selected object from the box drawn on this slice, as Correct does.

        ValueError (saying what to draw or select) when there is no selected object or no box.
        """
        request = self._idle_then(lambda: self.prepare_volume(vol.CORRECT, **options))
        return self.apply_volume(request, run_to_end(self.volume_job(request), self.jobs.show_progress))

    def end_here(self, side: str) -> list[int]:
        """End the selected object at the slice on screen, as the End here buttons do (one undo step).

        ``side`` is ``"before"`` (lower slider positions) or ``"after"``; returns the slider
        positions cleared. ValueError when there is no selected object.
        """
        problem = self._input_problem() or self._volume_problem()
        inputs, _ = self._idle_then(lambda: self._run_inputs(problem))
        labels = inputs.labels
        if labels is None or not labels.data.any():
            raise ValueError("End here acts on a segmented object: segment one first.")
        label_id = selected_object(labels, "End here")
        stack = self.current_stack()
        numbers = vol.slice_numbers(inputs, stack)
        name = vol.describe_object(labels, label_id)
        if not (stack.plane.extract(labels.data) == label_id).any():
            raise ValueError(
                f"The selected object ({name}) is not on {numbers.name(stack.index)}: go to the slice where "
                "it should end, or select it in the objects table."
            )
        ended = vol.end_object(labels, stack, label_id, numbers.side(side))
        cleared = sorted(numbers.steps[z] for z in ended)
        where = f"slice(s) {cleared[0]}..{cleared[-1]}" if cleared else "no slice (nothing lay that way)"
        toward = slider_sides(inputs.image, stack).toward(side)
        here = numbers.name(stack.index)
        self.status_label.value = f"Ended {name} at {here}: removed from {where}, {toward}"
        return cleared

    def interpolate(self) -> list[int]:
        """Segment the slices between key boxes of one object, as Interpolate does; return the ids."""
        request = self._idle_then(lambda: self.prepare_volume(vol.INTERPOLATE))
        return self.apply_volume(request, run_to_end(self.volume_job(request), self.jobs.show_progress))

    def run_job(
        self, job: Job[Any], on_done: Callable[[Any], None], *, title: str, also: dict[str, Any] | None = None
    ) -> Any:
        """Run a progress-yielding job in a thread worker (progress bar, Cancel, notifications).

        ``also``: more callbacks for the worker's signals (see ``JobRunner.start``).
        """
        return self.jobs.start(job, on_done, title=title, also=also)

    def add_prompt_layers(self, *_: object) -> tuple[Any, Any]:
        """Add a boxes (Shapes) and a clicks (Points) layer over the image and pick them."""
        image = self._image.value
        if image is None:
            self._notify("warning", "Open or pick an image layer first.")
            return None, None
        return self.pickers.add_prompt_layers(image, positive=self.controls.positive.value)

    def current_stack(self) -> vol.PlaneStack:
        """The slices parallel to the one on screen, along the axis of the nearest slider."""
        if self._image.value is None:
            raise ValueError("Open or pick an image layer first.")
        return vol.current_stack(self._image.value, *self._dims())

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

    def prepare(
        self, box_rows: Collection[int] | None = None, click_rows: Collection[int] | None = None
    ) -> seg.SegmentRequest:
        """Read image, prompts and options into a Segment request (viewer's thread).

        With ``box_rows`` / ``click_rows`` (auto-segment), only the objects of those boxes and
        clicks on the current slice are taken.
        """
        inputs, settings = self._run_inputs(self._input_problem())
        if box_rows is None and click_rows is None:  # the button: new and moved prompts only
            stale = partial(self.claims.stale, inputs.boxes, settings)
            box_rows, click_rows = seg.pending_rows(inputs, stale)
        return seg.read_segment_request(inputs, settings, box_rows=box_rows, click_rows=click_rows)

    def segment_job(self, request: seg.SegmentRequest) -> Job[seg.SegmentOutcome]:
        """The model part of a Segment run (no layer access): yields (done, total, message)."""
        return self.models.fetch_then(request.settings.source, seg.segment_steps(request, self.models.get))

    def apply(self, request: seg.SegmentRequest, outcome: seg.SegmentOutcome) -> list[int]:
        """Write the masks into the labels layer as one undo step; return the ids written."""
        labels = self._output_labels(request.inputs)
        rows = [obj.box_index for obj in request.objects if obj.box_index is not None]
        write = partial(seg.write_masks, labels, request, outcome)
        return self._report(labels, *self.claims.written(labels, request, rows, write))

    def prepare_volume(self, action: str, **options: Any) -> vol.VolumeRequest:
        """Read a ``"Propagate"`` or ``"Interpolate"`` request (viewer's thread)."""
        inputs, settings = self._run_inputs(self._input_problem() or self._volume_problem())
        return vol.read_volume_request(action, inputs, settings, options)

    def volume_job(self, request: vol.VolumeRequest) -> Job[vol.VolumeOutcome]:
        """The model part of a Propagate or Interpolate run: yields (done, total, message) per slice."""
        return self.models.fetch_then(request.settings.source, vol.volume_steps(request, self.models.get))

    def apply_volume(self, request: vol.VolumeRequest, outcome: vol.VolumeOutcome) -> list[int]:
        """Write a volume run's objects as one undo step; return the ids written."""
        labels = self._output_labels(request.inputs)
        rows = [row for obj in request.objects for row in obj.box_rows]
        write = partial(vol.write_volume, labels, request, outcome)
        written = self._report(labels, *self.claims.written(labels, request, rows, write))
        if summary := vol.run_summary(labels, request, outcome):
            self.status_label.value += f". {summary}"
        return written

    def _dims(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        return tuple(self._viewer.dims.point), tuple(self._viewer.dims.order)

    def _run_inputs(self, problem: str | None) -> tuple[LayerInputs, RunSettings]:
        """The layers, slice and settings a run reads (viewer's thread); ValueError on ``problem``."""
        if problem:
            raise ValueError(problem)
        image = self._image.value
        dims_range = tuple((float(r.start), float(r.stop), float(r.step)) for r in self._viewer.dims.range)
        layers = (image, self._labels.value, self._boxes.value, self._clicks.value)
        inputs = LayerInputs(*layers, *self._dims(), dims_range=dims_range)
        settings = RunSettings(
            window=self.intensity_window(image),
            source=self.model_source,
            device=str(self.device),
            overwrite=bool(self.overwrite),
            this_slice_only=self.controls.scope.value == THIS_SLICE,
            propagate=str(self.propagate_scope),
        )
        return inputs, settings

    def _idle_then(self, read: Callable[[], Any]) -> Any:
        if self.jobs.busy:
            raise RuntimeError("a job is still running; wait for it or press Cancel")
        return read()

    def _output_labels(self, inputs: LayerInputs) -> Any:
        labels = inputs.labels
        if labels is not None and labels not in self._viewer.layers:
            raise ValueError(f"The labels layer {labels.name!r} was removed during the run.")
        return self.ensure_labels_layer(inputs.image) if labels is None else labels

    def _report(self, labels: Any, written: list[int], notes: list[str]) -> list[int]:
        if written:
            labels.selected_label = written[-1]  # ready to paint corrections
        for note in notes:
            self._notify("warning", note)
        self.status_label.value = f"Wrote label(s) {written}" if written else "Nothing written"
        self._refresh()  # the buttons name the objects just written
        return written

    def _input_problem(self) -> str | None:
        problem = run_problem(self._image.value, self._labels.value, self._viewer.dims.ndisplay)
        return problem or (CHOOSE_WEIGHTS if self.model == CUSTOM else None)

    def _volume_problem(self) -> str | None:
        return vol.NEEDS_3D if len(spatial_shape(self._image.value)) < 3 else None

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

    def _slider_sides(self) -> SliderSides | None:
        """What each side of the slider is in the patient (None: no slider through the image here)."""
        try:
            return slider_sides(self._image.value, self.current_stack())
        except ValueError:  # e.g. the viewer's position lies outside the image
            return None

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

    def _run_with_preview(self, request: vol.VolumeRequest) -> None:
        """Run a Propagate or Correct whose masks show in the labels as they are found (Cancel
        takes them back); the result is then written as one undo step."""
        preview = vol.Preview(request.inputs.labels, request)

        def apply(outcome: vol.VolumeOutcome) -> None:
            preview.clear()
            self.apply_volume(request, outcome)

        also = {"yielded": preview.show, "aborted": preview.clear, "errored": preview.clear}
        self.run_job(self.volume_job(request), apply, title=request.action, also=also)

    def _end_clicked(self, side: str, *_: object) -> None:
        try:
            self.end_here(side)
        except ValueError as err:
            self.status_label.value = str(err)
            self._notify("warning", str(err))

    def _auto_segment(self, box_rows: set[int], click_rows: set[int]) -> None:
        """Segment the objects just drawn or edited (on this slice), as Segment would."""
        if self._released or self._input_problem():
            return
        try:
            request = self.prepare(box_rows, click_rows)
        except ValueError as err:  # e.g. drawn elsewhere, or too small: say so quietly
            self.status_label.value = str(err)
            return
        request.notes = []  # problems of prompts not drawn just now
        self.run_job(self.segment_job(request), lambda out: self.apply(request, out), title="Auto-segment")

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

    def _on_prefetch_input_changed(self, *_: object) -> None:
        """The slice, image, window or model changed: drop queued encodings, plan new ones."""
        self.encoding.schedule(self._image.value)

    def _load_predictor(self, source: str, device: str) -> SlicePredictor:
        return load_predictor(source, device, backend=self._backend)

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
