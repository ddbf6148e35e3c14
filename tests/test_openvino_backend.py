"""The OpenVINO encoder backend and ``auto``'s measured choice: parity on real weights, the IR cache."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from conftest import count_calls, require_extra
from napari_medsam.models import backends
from napari_medsam.models import openvino_encoder as ovx

require_extra("openvino", "openvino")  # the testing extra installs it: CI must have it


@pytest.fixture
def conversions(monkeypatch):
    """Counts the models converted from torch."""
    return count_calls(monkeypatch, ovx, "_convert")


def test_compiled_form_is_kept_once(lite_predictor_model, lite_on):
    """OpenVINO's compiled form lies beside the IR: a second load compiles from it, adding nothing."""
    folder = lite_on("openvino").encoder.path.parent
    ovx.openvino_encoder(lite_predictor_model, cache_dir=folder)
    assert len(list((folder / "compiled").iterdir())) == 1


def test_the_conversion_never_runs_openvinos_telemetry_tool(tiny_medsam, tmp_path, monkeypatch):
    """``openvino.convert_model`` sends usage telemetry unless the user opted out: the encoder reaches
    OpenVINO through its ONNX graph and the runtime's reader instead, and still runs."""
    import openvino

    def refuse(*args, **kwargs):
        raise AssertionError("openvino.convert_model was called")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    encoder = ovx.openvino_encoder(tiny_medsam, cache_dir=tmp_path)
    size = tiny_medsam.sam.config.vision_config.image_size
    assert encoder.run_one(torch.zeros(1, 3, size, size).numpy()).shape[-2:] == (size // 16, size // 16)


def test_foreign_model_is_converted_again(tiny_medsam, tmp_path, conversions):
    """Another model's IR under this name, with a sidecar rewritten to match its bytes: still
    converted again, because the key recorded inside the IR is the other model's."""
    ovx.openvino_encoder(tiny_medsam, cache_dir=tmp_path)
    xml, weights = ovx.cache_paths(tiny_medsam, tmp_path)
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
    assert conversions == ["medsam", "medsam", "medsam"]


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
    record = json.loads(backends.choice_path(tiny_medsam).read_text())
    assert record["key"] == backends.machine_key(tiny_medsam)
    assert record["backend"] == "openvino"
    assert record["seconds"] == {"torch": 2.0, "openvino": 1.0}
    assert backends.choose(tiny_medsam).backend == "openvino"
    assert len(timed) == 1  # remembered, not timed again

    monkeypatch.setattr(backends, "measure", lambda models, runs=2: {"torch": 1.0, "openvino": 3.0})
    other = replace(tiny_medsam, weights="other-weights")  # another model: its own measurement
    assert backends.choose(other).backend == "torch"


def test_processes_that_measured_at_once_run_what_the_first_kept(tiny_medsam, tmp_path, monkeypatch):
    """A cluster's workers may measure at the same time and disagree: the first record kept wins,
    so every process runs the same backend (and its embeddings share one identity in a store)."""
    monkeypatch.setenv(ovx.CACHE_ENV, str(tmp_path))
    first = {"key": backends.machine_key(tiny_medsam), "backend": "openvino", "seconds": {}, "measured": ""}

    def measure(models, runs=2):  # another process keeps its record while this one measures
        assert backends._remember(tiny_medsam, first) == "openvino"
        return {"torch": 1.0, "openvino": 2.0}

    monkeypatch.setattr(backends, "measure", measure)
    assert backends.choose(tiny_medsam).backend == "openvino"  # what was kept first, not its own
    assert json.loads(backends.choice_path(tiny_medsam).read_text()) == first
    assert list(tmp_path.glob("auto-choices/.*")) == []  # no temporary file left


def test_one_thread_workers_and_a_two_thread_cli_read_one_choice(tiny_medsam, tmp_path, monkeypatch):
    """A cluster's one-thread workers and the CLI on the same machine run one backend: their
    embeddings must share a store's entries (CI once stored a cohort twice, one copy per backend)."""
    monkeypatch.setenv(ovx.CACHE_ENV, str(tmp_path))
    threads = torch.get_num_threads()
    monkeypatch.setattr(backends, "measure", lambda models, runs=2: {"torch": 2.0, "openvino": 1.0})
    try:
        torch.set_num_threads(1)
        assert backends.choose(tiny_medsam).backend == "openvino"  # measured by a one-thread worker
        torch.set_num_threads(2)
        monkeypatch.setattr(backends, "measure", lambda models, runs=2: {"torch": 1.0, "openvino": 2.0})
        assert backends.choose(tiny_medsam).backend == "openvino"  # read, not measured again
    finally:
        torch.set_num_threads(threads)


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
