"""Segment, and what every run of the widget shares: read the layers and settings on the viewer's
thread, run the model in a job that touches no layer, write the result as one undo step.

:class:`Runs` is a part of :class:`~napari_medsam._qt.widget.MedSamWidget` (mixed into it): it uses
the widget's pickers (``_image``, ``_labels``, ``_boxes``, ``_clicks``), ``controls``, ``models``,
``jobs``, ``claims``, ``status_label``, its options and ``_refresh`` / ``_notify``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial
from typing import Any

from napari_medsam._qt.options import CHOOSE_WEIGHTS, CUSTOM, THIS_SLICE
from napari_medsam.base.jobs import Job, run_to_end
from napari_medsam.layers import segment as seg
from napari_medsam.layers.requests import LayerInputs, RunSettings, run_problem


class Runs:
    """Segment (the button, auto-segment and :meth:`segment` for scripts) and the read -> job ->
    apply steps every action takes."""

    def segment(self) -> list[int]:
        """Segment synchronously as the Segment button does; return the label ids written.

        Raises ValueError when there is nothing to segment or the layers do not fit together.
        """
        request = self._idle_then(self.prepare)
        return self.apply(request, run_to_end(self.segment_job(request), self.jobs.show_progress))

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

    def run_job(
        self, job: Job[Any], on_done: Callable[[Any], None], *, title: str, also: dict[str, Any] | None = None
    ) -> Any:
        """Run a progress-yielding job in a thread worker (progress bar, Cancel, notifications).

        ``also``: more callbacks for the worker's signals (see ``JobRunner.start``).
        """
        return self.jobs.start(job, on_done, title=title, also=also)

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
