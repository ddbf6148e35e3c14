"""MedSamWidget: boxes and clicks in napari layers -> MedSAM / SAM / LiteMedSAM masks in Labels.

Every action reads its inputs on the viewer's thread (:meth:`MedSamWidget.prepare`,
:meth:`MedSamWidget.prepare_volume`), runs the model in a job that touches no layer, then writes
all masks as one undo step (:meth:`MedSamWidget.apply`, :meth:`MedSamWidget.apply_volume`).
:meth:`segment`, :meth:`propagate` and :meth:`interpolate` chain the three synchronously for
scripts; the buttons run the same jobs in a thread worker with progress and Cancel.
Auto-segment runs Segment on each box or click drawn (``_widget_background.AutoSegment``);
prefetching encodes the neighbours of the slice on screen (``NeighbourPrefetch``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from functools import partial
from typing import Any

import napari.layers
import napari.viewer
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info, show_warning

from napari_medsam import _widget_segment as seg
from napari_medsam import _widget_volume as vol
from napari_medsam._widget_background import AutoSegment, NeighbourPrefetch, PrefetchTarget
from napari_medsam._widget_jobs import Job, JobRunner
from napari_medsam._widget_layers import (
    ClickPolarity,
    LayerInputs,
    add_boxes_layer,
    add_clicks_layer,
    add_labels_layer,
)
from napari_medsam._widget_options import (
    ALL_SLICES,
    CHOOSE_WEIGHTS,
    CUSTOM,
    DEVICES,
    LAYER_WINDOW,
    MODELS,
    PREFETCH_RADIUS,
    SWITCH_TO_2D,
    THIS_SLICE,
    TOGGLE_KEY,
    WINDOWS,
    ModelOption,
    Option,
    PredictorFactory,
    PredictorLike,
    default_model,
    load_predictor,
)
from napari_medsam._widget_qt import CloseWatcher
from napari_medsam.prompts import spatial_shape
from napari_medsam.propagation import run_to_end

__all__ = ["ALL_SLICES", "MODELS", "THIS_SLICE", "TOGGLE_KEY", "WINDOWS", "MedSamWidget", "load_predictor"]


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
    device = Option("_device", f"Where the model runs: one of {DEVICES}.")
    window = Option("_window", f"Intensity window preset: one of {list(WINDOWS)}.")
    scope = Option("_scope", f"What Segment and Interpolate take: {THIS_SLICE!r} or {ALL_SLICES!r}.")
    overwrite = Option("_overwrite", "Whether new masks may overwrite other objects' pixels.", bool)
    auto_segment = Option("_auto", "Segment each box or click as soon as it is drawn or edited.", bool)
    prefetch = Option("_prefetch", "Encode the slices next to the one on screen in the background.", bool)
    positive_clicks = Option("_positive", "Polarity of the next click (key T toggles it).", bool)

    def __init__(
        self, viewer: napari.viewer.Viewer, predictor_factory: PredictorFactory | None = None
    ) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._factory = predictor_factory or load_predictor
        self._predictor: PredictorLike | None = None
        self._predictor_key: tuple[str, str] | None = None
        self._predictor_lock = threading.Lock()
        self._showing_problem = self._released = False

        def layers_of(kind: type) -> Callable[[Any], list[tuple[str, Any]]]:
            return lambda _: [(ly.name, ly) for ly in self._viewer.layers if isinstance(ly, kind)]

        self._image = ComboBox(label="image", choices=layers_of(napari.layers.Image))
        self._boxes = ComboBox(label="boxes", choices=layers_of(napari.layers.Shapes), nullable=True)
        self._clicks = ComboBox(label="clicks", choices=layers_of(napari.layers.Points), nullable=True)
        self._labels = ComboBox(
            label="labels", choices=layers_of(napari.layers.Labels), nullable=True,
            tooltip="Output Labels layer; empty: a new one is created on the first Segment",
        )  # fmt: skip
        self._new_layers = PushButton(text="New box + click layers")
        self._positive = CheckBox(value=True, text=f"next click positive ({TOGGLE_KEY.upper()})")
        self._auto = CheckBox(value=False, text="auto-segment each box / click drawn")
        self._model = ComboBox(label="model", choices=MODELS, value=default_model())
        self._weights = FileEdit(label="weights", mode="r", visible=False)
        self._device = ComboBox(label="device", choices=DEVICES, value="auto")
        self._window = ComboBox(label="window", choices=list(WINDOWS), value=LAYER_WINDOW)
        self._scope = ComboBox(label="segment", choices=[THIS_SLICE, ALL_SLICES], value=THIS_SLICE)
        self._overwrite = CheckBox(value=False, text="overwrite other labels")
        self._prefetch = CheckBox(value=True, text="encode neighbouring slices ahead")
        self.segment_button = PushButton(text="Segment")
        self.propagate_button = PushButton(text=vol.PROPAGATE)
        self.interpolate_button = PushButton(text=vol.INTERPOLATE)
        self.cancel_button = PushButton(text="Cancel")
        #: Buttons that start a job: disabled while one runs or the inputs are incomplete.
        self.run_buttons = [self.segment_button, self.propagate_button, self.interpolate_button]
        #: The row of action buttons; another action can be inserted before Cancel.
        buttons = [*self.run_buttons, self.cancel_button]
        self.actions = Container(widgets=buttons, layout="horizontal", labels=False)
        self.actions.margins = (0, 0, 0, 0)
        self.progress_bar = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status_label = Label(value="")
        self.extend(
            [
                self._image, self._boxes, self._clicks, self._labels, self._new_layers,
                self._positive, self._auto, self._model, self._weights, self._device, self._window,
                self._scope, self._overwrite, self._prefetch, self.actions,
                self.progress_bar, self.status_label,
            ]
        )  # fmt: skip
        self.jobs = JobRunner(
            self.progress_bar, self.status_label, self.cancel_button, self._notify, self._on_busy
        )
        self.job_finished = self.jobs.finished
        self.auto = AutoSegment(self.native, self._auto_segment, lambda: self.jobs.busy)
        #: Plans what to encode ahead; ``prefetcher`` encodes it in a background thread.
        self.neighbours = NeighbourPrefetch(self.native, self._prefetch_target, PREFETCH_RADIUS)
        self.prefetcher = self.neighbours.prefetcher

        self._new_layers.changed.connect(self.add_prompt_layers)
        for button in self.run_buttons:
            button.changed.connect(partial(self._start, button.text))
        self._boxes.changed.connect(lambda layer: self.auto.watch("boxes", layer))
        self._clicks.changed.connect(self._on_clicks_layer_changed)
        self._auto.changed.connect(self._on_auto_changed)
        for picker in (self._model, self._weights, self._device):
            picker.changed.connect(self._on_model_changed)
        for picker in (self._image, self._labels):
            picker.changed.connect(self._refresh)
        for picker in (self._image, self._window, self._prefetch):
            picker.changed.connect(self._on_prefetch_input_changed)
        self.job_finished.connect(self._on_job_finished)
        self._viewer_events = [
            (self._viewer.layers.events.inserted, self._on_layer_inserted),
            (self._viewer.layers.events.removed, self._on_layers_changed),
            (self._viewer.layers.events.reordered, self._on_layers_changed),
            (self._viewer.dims.events.ndisplay, self._on_dims_changed),
            (self._viewer.dims.events.order, self._on_dims_changed),
            (self._viewer.dims.events.current_step, self._on_dims_changed),
        ]
        for emitter, callback in self._viewer_events:
            emitter.connect(callback)
        #: Polarity of the next click; key T toggles it (or flips the selected clicks).
        self.polarity = ClickPolarity(self._viewer, self._positive, TOGGLE_KEY)
        self._close_watcher = CloseWatcher(self.native, self.release)
        self.auto.watch("boxes", self._boxes.value)
        self._on_clicks_layer_changed(self._clicks.value)
        self._on_prefetch_input_changed()
        self._refresh()

    # ------------------------------------------------------------------ public API

    @property
    def predictor(self) -> PredictorLike | None:
        """The predictor of the last run (None before the first run)."""
        return self._predictor

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
            labels = add_labels_layer(self._viewer, image, spatial_shape(image))
            self.reset_choices()
            self._labels.value = labels
        return self._labels.value

    def intensity_window(self, image: Any) -> tuple[float, float] | None:
        """The (low, high) window the 'window' option gives for ``image`` (None: slice min..max)."""
        if image.rgb:
            return None
        if self._window.value == LAYER_WINDOW:
            low, high = (float(v) for v in image.contrast_limits)
            return low, high
        return WINDOWS[self._window.value]

    def get_predictor(self, source: str | None = None, device: str | None = None) -> PredictorLike:
        """The predictor for a model and device (default: the ones chosen), loaded on first use.

        Loading is slow: call it inside a job, with ``source`` and ``device`` read on the
        viewer's thread (a worker thread must not read Qt widgets).
        """
        key = (source or self.model_source, device or str(self.device))
        with self._predictor_lock:
            if self._predictor is None or self._predictor_key != key:
                self._predictor = None
                self._predictor = self._factory(*key)
                self._predictor_key = key
            return self._predictor

    def segment(self) -> list[int]:
        """Segment synchronously as the Segment button does; return the label ids written.

        Raises ValueError when there is nothing to segment or the layers do not fit together.
        """
        request = self._idle_then(self.prepare)
        return self.apply(request, run_to_end(self.segment_job(request), self.jobs.show_progress))

    def propagate(self, **options: Any) -> list[int]:
        """Propagate each object on the current slice through the volume, as Propagate does.

        ``options`` go to :func:`napari_medsam.propagation.propagate` (``expand``,
        ``min_area_fraction``, ``max_slices``, ...). Returns the label ids written.
        """
        request = self._idle_then(lambda: self.prepare_volume(vol.PROPAGATE, **options))
        return self.apply_volume(request, run_to_end(self.volume_job(request), self.jobs.show_progress))

    def interpolate(self) -> list[int]:
        """Segment the slices between key boxes of one object, as Interpolate does; return the ids."""
        request = self._idle_then(lambda: self.prepare_volume(vol.INTERPOLATE))
        return self.apply_volume(request, run_to_end(self.volume_job(request), self.jobs.show_progress))

    def run_job(self, job: Job[Any], on_done: Callable[[Any], None], *, title: str) -> Any:
        """Run a progress-yielding job in a thread worker (progress bar, Cancel, notifications)."""
        return self.jobs.start(job, on_done, title=title)

    def add_prompt_layers(self, *_: object) -> tuple[Any, Any]:
        """Add a boxes (Shapes) and a clicks (Points) layer over the image and pick them."""
        image = self._image.value
        if image is None:
            self._notify("warning", "Open or pick an image layer first.")
            return None, None
        boxes = add_boxes_layer(self._viewer, image)
        clicks = add_clicks_layer(self._viewer, image, positive=self._positive.value)
        self.reset_choices()
        self._boxes.value, self._clicks.value = boxes, clicks
        self._viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"
        return boxes, clicks

    def current_stack(self) -> vol.PlaneStack:
        """The slices parallel to the one on screen, along the axis of the nearest slider."""
        if self._image.value is None:
            raise ValueError("Open or pick an image layer first.")
        return vol.current_stack(self._image.value, *self._dims())

    def release(self) -> None:
        """Give back the key binding and viewer connections, stop jobs and prefetching (on close)."""
        if self._released:
            return
        self._released = True
        self.jobs.cancel()
        self.auto.close()
        self.neighbours.close()
        self._predictor = None
        self.polarity.release()
        for emitter, callback in self._viewer_events:
            emitter.disconnect(callback)

    # ------------------------------------------------------------------ read, run, write

    def prepare(
        self, box_rows: Collection[int] | None = None, click_rows: Collection[int] | None = None
    ) -> seg.SegmentRequest:
        """Read image, prompts and options into a Segment request (viewer's thread).

        With ``box_rows`` / ``click_rows`` (auto-segment), only the objects of those boxes and
        clicks on the current slice are taken.
        """
        inputs, settings = self._run_inputs(self._input_problem())
        return seg.read_segment_request(inputs, box_rows=box_rows, click_rows=click_rows, **settings)

    def segment_job(self, request: seg.SegmentRequest) -> Job[seg.SegmentOutcome]:
        """The model part of a Segment run (no layer access): yields (done, total, message)."""
        return seg.segment_steps(request, self.get_predictor)

    def apply(self, request: seg.SegmentRequest, outcome: seg.SegmentOutcome) -> list[int]:
        """Write the masks into the labels layer as one undo step; return the ids written."""
        labels = self._output_labels(request.labels, request.image)
        return self._report(labels, *seg.write_masks(labels, request, outcome))

    def prepare_volume(self, action: str, **options: Any) -> vol.VolumeRequest:
        """Read a ``"Propagate"`` or ``"Interpolate"`` request (viewer's thread)."""
        inputs, settings = self._run_inputs(self._input_problem() or self._volume_problem())
        return vol.read_volume_request(action, inputs, options=options, **settings)

    def volume_job(self, request: vol.VolumeRequest) -> Job[vol.VolumeOutcome]:
        """The model part of a Propagate or Interpolate run: yields (done, total, message) per slice."""
        return vol.volume_steps(request, self.get_predictor)

    def apply_volume(self, request: vol.VolumeRequest, outcome: vol.VolumeOutcome) -> list[int]:
        """Write a volume run's objects as one undo step; return the ids written."""
        labels = self._output_labels(request.labels, request.image)
        return self._report(labels, *vol.write_volume(labels, request, outcome))

    # ------------------------------------------------------------------ helpers

    def _dims(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        return tuple(self._viewer.dims.point), tuple(self._viewer.dims.order)

    def _run_inputs(self, problem: str | None) -> tuple[LayerInputs, dict[str, Any]]:
        """The layers, slice and settings a run reads (viewer's thread); ValueError on ``problem``."""
        if problem:
            raise ValueError(problem)
        image = self._image.value
        inputs = LayerInputs(image, self._labels.value, self._boxes.value, self._clicks.value, *self._dims())
        settings = {
            "this_slice_only": self._scope.value == THIS_SLICE,
            "window": self.intensity_window(image),
            "source": self.model_source,
            "device": str(self.device),
            "overwrite": bool(self.overwrite),
        }
        return inputs, settings

    def _idle_then(self, read: Callable[[], Any]) -> Any:
        if self.jobs.busy:
            raise RuntimeError("a job is still running; wait for it or press Cancel")
        return read()

    def _output_labels(self, labels: Any | None, image: Any) -> Any:
        if labels is not None and labels not in self._viewer.layers:
            raise ValueError(f"The labels layer {labels.name!r} was removed during the run.")
        return self.ensure_labels_layer(image) if labels is None else labels

    def _report(self, labels: Any, written: list[int], notes: list[str]) -> list[int]:
        if written:
            labels.selected_label = written[-1]  # ready to paint corrections
        for note in notes:
            self._notify("warning", note)
        self.status_label.value = f"Wrote label(s) {written}" if written else "Nothing written"
        return written

    def _input_problem(self) -> str | None:
        image, labels = self._image.value, self._labels.value
        if image is None:
            return "Open or pick an image layer (File > Open Sample > MedSAM for a demo)."
        if labels is not None and tuple(labels.data.shape) != spatial_shape(image):
            return (
                f"The labels layer {labels.name!r} has shape {tuple(labels.data.shape)} but the "
                f"image has {spatial_shape(image)}: pick another labels layer or none."
            )
        if self._viewer.dims.ndisplay != 2:
            return SWITCH_TO_2D
        return CHOOSE_WEIGHTS if self.model == CUSTOM else None

    def _volume_problem(self) -> str | None:
        return vol.NEEDS_3D if len(spatial_shape(self._image.value)) < 3 else None

    def _refresh(self, *_: object) -> None:
        problem = self._input_problem()
        volume_problem = problem or (None if self._image.value is None else self._volume_problem())
        tips = {
            self.segment_button: (problem, "Segment the boxes and clicks (one undo step)"),
            self.propagate_button: (volume_problem, "Carry the objects on this slice through the volume"),
            self.interpolate_button: (volume_problem, "Segment the slices between an object's key boxes"),
        }
        for button in self.run_buttons:
            blocker, tip = tips.get(button, (problem, button.tooltip))
            button.enabled = blocker is None and not self.jobs.busy
            button.tooltip = blocker or tip
        if problem:
            self.status_label.value, self._showing_problem = problem, True
        elif self._showing_problem:
            self.status_label.value, self._showing_problem = "Ready", False

    def _notify(self, level: str, message: str) -> None:
        {"error": show_error, "warning": show_warning}.get(level, show_info)(message)

    def _on_busy(self, busy: bool) -> None:
        if busy:
            self.neighbours.stop()
        self._refresh()

    def _on_job_finished(self, outcome: str) -> None:
        self.auto.resume()
        self.neighbours.schedule(self._image.value)

    def _start(self, action: str, *_: object) -> None:
        """A button's run: read (a warning if that fails), run in the worker, write when done."""
        volume = action in (vol.PROPAGATE, vol.INTERPOLATE)
        try:
            request = self.prepare_volume(action) if volume else self.prepare()
        except ValueError as err:
            self._notify("warning", str(err))
            return
        job = self.volume_job(request) if volume else self.segment_job(request)
        apply = self.apply_volume if volume else self.apply
        self.run_job(job, lambda outcome: apply(request, outcome), title=action)

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

    def _on_auto_changed(self, value: bool) -> None:
        self.auto.enabled = bool(value)

    def _on_model_changed(self, *_: object) -> None:
        self._weights.visible = self._model.value == CUSTOM
        self.neighbours.forget_predictor()  # never encode with the old model again
        self._refresh()
        self._on_prefetch_input_changed()

    def _on_clicks_layer_changed(self, layer: Any) -> None:
        self.auto.watch("clicks", layer)
        self.polarity.set_layer(layer)

    def _on_layer_inserted(self, event: Any) -> None:
        self.reset_choices()
        layer = event.value
        if isinstance(layer, napari.layers.Shapes) and self._boxes.value is None:
            self._boxes.value = layer
        elif isinstance(layer, napari.layers.Points) and self._clicks.value is None:
            self._clicks.value = layer
        self._refresh()

    def _on_layers_changed(self, *_: object) -> None:
        self.reset_choices()
        self._refresh()
        self._on_prefetch_input_changed()

    def _on_dims_changed(self, *_: object) -> None:
        self._refresh()
        self._on_prefetch_input_changed()

    # ------------------------------------------------------------------ prefetch

    def _on_prefetch_input_changed(self, *_: object) -> None:
        """The slice, image, window or model changed: drop queued encodings, plan new ones."""
        self.neighbours.schedule(self._image.value)

    def _prefetch_target(self) -> PrefetchTarget | None:
        """What to encode ahead: the slices around this one, with the predictor of the model chosen."""
        predictor, image = self._predictor, self._image.value
        if (
            self._released or not self.prefetch or self.jobs.busy or predictor is None
            or not hasattr(predictor, "precompute") or self._input_problem() or self._volume_problem()
            or self._predictor_key != (self.model, str(self.device))
        ):  # fmt: skip
            return None
        try:
            stack = self.current_stack()
        except ValueError:  # e.g. the viewer's position lies outside this image
            return None
        return predictor, stack, stack.index, self.intensity_window(image)
