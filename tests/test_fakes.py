"""The tests' stand-ins implement the predictor protocol, so production code never asks what it talks to."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import fakes
from napari_medsam.engine.predictor import MedSamPredictor, Prediction, SlicePredictor
from napari_medsam.models.families import FAMILIES

STAND_INS = [
    cls
    for _, cls in inspect.getmembers(fakes, inspect.isclass)
    if cls.__module__ == fakes.__name__ and issubclass(cls, fakes.StandIn) and cls is not fakes.StandIn
]
ARGUMENTS = {fakes.HeldSpy: (99,), fakes.BackendSpy: ("torch",)}


def test_the_real_predictor_is_what_the_protocol_describes(tiny_medsam):
    assert isinstance(MedSamPredictor(tiny_medsam), SlicePredictor)


@pytest.mark.parametrize("cls", STAND_INS, ids=lambda c: c.__name__)
def test_every_stand_in_implements_the_protocol_and_gives_predictions(cls):
    predictor = cls(*ARGUMENTS.get(cls, ()))
    assert isinstance(predictor, SlicePredictor)
    assert predictor.family in FAMILIES
    image = np.full((40, 48), 40, np.int16)
    image[10:30, 12:36] = 140
    assert predictor.precompute(image, None) in (True, False)
    predictor.set_image(image, None)
    prediction = predictor.predict(box=(10.0, 8.0, 38.0, 32.0))
    assert isinstance(prediction, Prediction)
    assert prediction.mask.shape == image.shape
    assert prediction.mask[20, 24]
    assert predictor.cells().shape[:2] == (fakes.CELLS, fakes.CELLS)


def test_the_benchmarks_official_procedure_walks_a_volume(tiny_medsam, monkeypatch):
    """``benchmarks/baselines.PlainPredictor`` (the published inference, timed against ours by
    bench_inference) implements the protocol, so its propagation rows run: a walk asks every
    predictor for ``coverage`` and ``cells``."""
    from pathlib import Path

    from napari_medsam.base.jobs import run_to_end
    from napari_medsam.engine.propagation import propagate

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from baselines import PlainPredictor

    plain = PlainPredictor("medsam", tiny_medsam.sam, tiny_medsam.encoder)
    assert isinstance(plain, SlicePredictor)
    volume = np.full((5, 40, 48), 40, np.int16)
    volume[:, 10:30, 12:36] = 140
    steps = []
    walk = propagate(plain, volume, 2, key_box=(12.0, 10.0, 36.0, 30.0), window=(0.0, 200.0))
    run_to_end(walk, steps.append)
    assert {step.slice_index for step in steps} >= {2}
    assert plain.coverage(np.ones((40, 48), bool)).shape == plain.cells().shape[:2]
