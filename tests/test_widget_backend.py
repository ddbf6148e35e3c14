"""The widget's encoder backend option: the CLI's --backend, and a change reloads the model with it."""

from __future__ import annotations

import numpy as np
import pytest

from fakes import BackendSpy
from napari_medsam._qt import widget as widget_module
from napari_medsam._qt.widget import MedSamWidget
from napari_medsam.models import BACKENDS

pytestmark = pytest.mark.gui


def test_the_backend_option_loads_the_model_with_it(make_napari_viewer, monkeypatch):
    loads, released = [], []

    def load_predictor(source, device, backend="auto"):
        loads.append((source, device, backend))
        return BackendSpy(backend)

    monkeypatch.setattr(widget_module, "load_predictor", load_predictor)
    monkeypatch.setattr(widget_module, "unload_predictor", released.append)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32))
    w = MedSamWidget(viewer)
    w.model, w.device, w.prefetch = "lite-medsam", "cpu", False
    assert w.controls.backend.choices == BACKENDS
    assert w.backend == "auto"
    first = w.get_predictor()
    assert first.backend == "auto"
    w.backend = "torch"  # the predictor held is released; the next use loads with the new backend
    assert w.predictor is None
    assert released == [first]
    assert w.get_predictor().backend == "torch"
    assert loads == [("lite-medsam", "cpu", "auto"), ("lite-medsam", "cpu", "torch")]
    with pytest.raises(ValueError, match="backend must be one of"):
        w.backend = "tensorrt"
