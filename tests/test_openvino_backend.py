"""The OpenVINO encoder backend and ``auto``'s measured choice: parity on real weights, the IR cache."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import replace

import numpy as np
import pytest

if importlib.util.find_spec("openvino") is None:  # the testing extra installs [openvino]: CI must have it
    if os.environ.get("CI"):
        raise ImportError("the OpenVINO tests need the [openvino] extra: pip install -e '.[testing]'")
    pytest.skip("the [openvino] extra is not installed", allow_module_level=True)

import torch

from napari_medsam.base.metrics import iou
from napari_medsam.models import backends
from napari_medsam.models import openvino_encoder as ovx
from realdata import ORGANS, ct_sm, oracle_box


@pytest.fixture
def conversions(monkeypatch):
    """Counts the models converted from torch."""
    calls: list[str] = []
    real = ovx._convert

    def counting(model, key):
        calls.append(model.family)
        return real(model, key)

    monkeypatch.setattr(ovx, "_convert", counting)
    return calls


@pytest.fixture(scope="module")
def lite_openvino(lite_predictor_model, tmp_path_factory):
    """The real LiteMedSAM with its encoder on OpenVINO (float32), converted into a temporary cache."""
    encoder = ovx.openvino_encoder(lite_predictor_model, cache_dir=tmp_path_factory.mktemp("ov-lite"))
    return replace(lite_predictor_model, encoder=encoder, backend="openvino")


def test_lite_medsam_parity_on_real_ct(lite_predictor_model, lite_openvino):
    """Real weights, real CT: embeddings agree to float rounding and the masks of every organ agree."""
    from napari_medsam import MedSamPredictor

    ct, seg = ct_sm()
    reference, candidate = MedSamPredictor(lite_predictor_model), MedSamPredictor(lite_openvino)
    assert candidate.model.identity != reference.model.identity  # never mixed in a cache
    window = (-160.0, 240.0)
    ious = []
    for index in (8, 15, 22):
        pixels = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(index))
        with torch.inference_mode():
            want = lite_predictor_model.encoder(pixels)
        got = lite_openvino.encoder(pixels)
        assert float((got - want).norm() / want.norm()) < 1e-4  # float32 rounding, not bfloat16's 1e-2
        reference.set_image(ct[index], window)
        candidate.set_image(ct[index], window)
        for label in ORGANS.values():
            box = oracle_box(seg[index] == label)
            if box is not None:
                ious.append(iou(candidate.predict(box=box).mask, reference.predict(box=box).mask))
    assert len(ious) >= 8
    assert min(ious) >= 0.97
    assert np.mean(ious) >= 0.99


def test_converted_model_is_cached_and_reused(lite_predictor_model, lite_openvino, conversions):
    """The second load reads the cached IR (no conversion) and OpenVINO's compiled form is kept beside it."""
    folder = lite_openvino.encoder.path.parent
    again = ovx.openvino_encoder(lite_predictor_model, cache_dir=folder)
    assert conversions == []
    pixels = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(pixels), lite_openvino.encoder(pixels))
    assert len(list((folder / "compiled").iterdir())) == 1  # the same compiled model both times


@pytest.fixture
def tiny_medsam(tiny_medsam_dir):
    from napari_medsam.models.loading import load_model, unload_model

    yield load_model(tiny_medsam_dir, device="cpu", dtype="float32", backend="torch")
    unload_model()


def test_tiny_medsam_vit_through_openvino(tiny_medsam_dir, tmp_path, monkeypatch, conversions):
    """A tiny random MedSAM ViT: from_pretrained(backend="openvino") converts once, then predicts as torch."""
    from napari_medsam import MedSamPredictor
    from napari_medsam.models.loading import unload_model

    monkeypatch.setenv(ovx.CACHE_ENV, str(tmp_path))
    image = np.random.default_rng(0).integers(0, 255, (90, 120)).astype(np.uint8)
    try:
        candidate = MedSamPredictor.from_pretrained(str(tiny_medsam_dir), device="cpu", backend="openvino")
        reference = MedSamPredictor.from_pretrained(str(tiny_medsam_dir), device="cpu", backend="torch")
        assert (candidate.model.backend, reference.model.backend) == ("openvino", "torch")
        assert conversions == ["medsam"]
        assert len(list(tmp_path.glob("medsam-float32-*.xml"))) == 1
        candidate.set_image(image)
        reference.set_image(image)
        assert torch.allclose(candidate._embedding, reference._embedding, atol=2e-3)
        box = (10, 12, 80, 70)
        assert iou(candidate.predict(box=box).mask, reference.predict(box=box).mask) > 0.97
    finally:
        unload_model()


def test_damaged_or_foreign_cache_is_converted_again(tiny_medsam, tmp_path, conversions):
    first = ovx.openvino_encoder(tiny_medsam, cache_dir=tmp_path)
    xml, weights = ovx.cache_paths(tiny_medsam, tmp_path)
    pixels = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    expected = first(pixels)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # damaged in the middle of the weights
    weights.write_bytes(bytes(data))
    rebuilt = ovx.openvino_encoder(tiny_medsam, cache_dir=tmp_path)
    assert conversions == ["medsam", "medsam"]
    assert torch.allclose(rebuilt(pixels), expected, rtol=1e-4, atol=1e-5)

    # another model's IR under this name, with a sidecar rewritten to match its bytes: still
    # converted again, because the key recorded inside the IR is the other model's
    other = replace(tiny_medsam, weights="another-digest")
    ovx.openvino_encoder(other, cache_dir=tmp_path)
    other_xml, other_weights = ovx.cache_paths(other, tmp_path)
    xml.write_bytes(other_xml.read_bytes())
    weights.write_bytes(other_weights.read_bytes())
    sidecar = json.loads(other_xml.with_suffix(".json").read_text())
    sidecar["key"] = ovx.cache_key(tiny_medsam)
    digests = sidecar["sha256"]
    sidecar["sha256"] = {xml.name: digests[other_xml.name], weights.name: digests[other_weights.name]}
    xml.with_suffix(".json").write_text(json.dumps(sidecar))
    ovx.openvino_encoder(tiny_medsam, cache_dir=tmp_path)
    assert conversions == ["medsam", "medsam", "medsam", "medsam"]

    xml.with_suffix(".json").write_text("{not json")  # an unreadable sidecar
    ovx.openvino_encoder(tiny_medsam, cache_dir=tmp_path)
    assert len(conversions) == 5


def test_auto_measures_once_and_remembers(tiny_medsam, tmp_path, monkeypatch):
    """auto times torch against OpenVINO once per model and machine, keeps the faster, and reads the
    choice on the next load instead of timing again."""
    monkeypatch.setenv(ovx.CACHE_ENV, str(tmp_path))
    timed: list[set[str]] = []

    def measure(models, runs=backends.MEASURE_RUNS):
        timed.append(set(models))
        assert {m.backend for m in models.values()} == {"torch", "openvino"}
        return {"torch": 2.0, "openvino": 1.0}

    monkeypatch.setattr(backends, "measure", measure)
    chosen = backends.choose(tiny_medsam)
    assert chosen.backend == "openvino"
    assert timed == [{"torch", "openvino"}]
    record = json.loads(backends.choices_path().read_text())[backends.machine_key(tiny_medsam)]
    assert record["backend"] == "openvino"
    assert record["seconds"] == {"torch": 2.0, "openvino": 1.0}
    assert backends.choose(tiny_medsam).backend == "openvino"
    assert len(timed) == 1  # remembered, not timed again

    monkeypatch.setattr(backends, "measure", lambda models, runs=2: {"torch": 1.0, "openvino": 3.0})
    other = replace(tiny_medsam, weights="other-weights")  # another model: its own measurement
    assert backends.choose(other).backend == "torch"


def test_auto_is_torch_where_there_is_nothing_to_choose(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert backends.resolve_backend("auto", cpu, torch.float32) == "auto"  # measured once loaded
    for device, dtype in ((cuda, torch.float32), (cpu, torch.bfloat16), (cpu, torch.float16)):
        assert backends.resolve_backend("auto", device, dtype) == "torch"
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    assert backends.resolve_backend("auto", cpu, torch.float32) == "torch"


def test_measure_times_the_encoders_it_is_given(tiny_medsam):
    seconds = backends.measure({"a": tiny_medsam, "b": tiny_medsam}, runs=1)
    assert set(seconds) == {"a", "b"}
    assert all(0 < s < 60 for s in seconds.values())


def test_auto_runs_torch_when_the_conversion_fails(tiny_medsam, tmp_path, monkeypatch, caplog):
    from napari_medsam.base.errors import ModelLoadError

    monkeypatch.setenv(ovx.CACHE_ENV, str(tmp_path))

    def broken(model, key):
        raise ModelLoadError("no converter today")

    monkeypatch.setattr(ovx, "_convert", broken)
    chosen = backends.choose(tiny_medsam)
    assert chosen is tiny_medsam
    assert "openvino left out of auto's choice: no converter today" in caplog.text
    assert backends.remembered_choice(tiny_medsam) is None  # nothing measured: tried again next time
