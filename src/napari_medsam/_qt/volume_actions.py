"""Propagate, Correct, Interpolate and End here: the widget's actions on the volume's slices.

:class:`VolumeActions` is a part of :class:`~napari_medsam._qt.widget.MedSamWidget` (mixed into it,
beside :class:`~napari_medsam._qt.runs.Runs`, whose read -> job -> apply steps it takes).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from napari_medsam.base.jobs import Job, run_to_end
from napari_medsam.layers import volume as vol
from napari_medsam.layers.directions import SliderSides, slider_sides
from napari_medsam.layers.objects import selected_object
from napari_medsam.layers.prompts import spatial_shape


class VolumeActions:
    """The actions on a volume, for the buttons and for scripts (:meth:`propagate`, :meth:`correct`,
    :meth:`interpolate`, :meth:`end_here`)."""

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

    def current_stack(self) -> vol.PlaneStack:
        """The slices parallel to the one on screen, along the axis of the nearest slider."""
        if self._image.value is None:
            raise ValueError("Open or pick an image layer first.")
        return vol.current_stack(self._image.value, *self._dims())

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

    def _volume_problem(self) -> str | None:
        return vol.NEEDS_3D if len(spatial_shape(self._image.value)) < 3 else None

    def _slider_sides(self) -> SliderSides | None:
        """What each side of the slider is in the patient (None: no slider through the image here)."""
        try:
            return slider_sides(self._image.value, self.current_stack())
        except ValueError:  # e.g. the viewer's position lies outside the image
            return None

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
