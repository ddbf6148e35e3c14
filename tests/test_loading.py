"""Model sources: aliases, folders, checkpoints, and failing fast and clearly when weights are missing."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from napari_medsam.base.errors import ModelLoadError
from napari_medsam.models import loading
from napari_medsam.models.loading import is_available_offline, load_model, resolve_source


@pytest.mark.parametrize(
    ("source", "kind", "target", "family"),
    [
        ("medsam", "hub", "flaviagiammarino/medsam-vit-base", "medsam"),
        ("lite-medsam", "lite", "lite-medsam", "lite-medsam"),
        ("sam-vit-base", "hub", "facebook/sam-vit-base", "sam"),
        ("SAM-ViT-Huge", "hub", "facebook/sam-vit-huge", "sam"),
        ("someone/my-medsam", "hub", "someone/my-medsam", None),
    ],
)
def test_sources_resolve(source, kind, target, family, monkeypatch):
    monkeypatch.delenv(loading.MEDSAM_PATH_ENV, raising=False)
    resolved = resolve_source(source)
    assert (resolved.kind, resolved.target, resolved.family) == (kind, target, family)


def test_medsam_alias_follows_a_configured_local_path(tiny_medsam_dir, monkeypatch):
    monkeypatch.setenv(loading.MEDSAM_PATH_ENV, str(tiny_medsam_dir))
    resolved = resolve_source("medsam")
    assert (resolved.kind, resolved.family) == ("folder", "medsam")
    assert is_available_offline("medsam")
    assert loading.default_source() == "medsam"


def test_unknown_and_missing_sources(tmp_path):
    with pytest.raises(ValueError, match="unknown model source"):
        resolve_source("not a model")
    with pytest.raises(FileNotFoundError):
        resolve_source(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError):
        load_model("./nowhere/medsam_vit_b.pth")
    with pytest.raises(TypeError):
        resolve_source(42)
    with pytest.raises(ValueError, match="family"):
        load_model("lite-medsam", family="unet")


def test_hub_model_not_cached_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="lite-medsam") as err:
        load_model("sam-vit-base", device="cpu")
    assert "HF_HUB_OFFLINE" in str(err.value)
    assert not is_available_offline("sam-vit-base")


def test_unreachable_hub_gives_advice(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        loading._ensure_hub_reachable("facebook/sam-vit-base")


def test_folder_family_follows_the_processor_config(tiny_sam_dir, tiny_medsam_dir):
    assert load_model(tiny_sam_dir, device="cpu", dtype="float32").family == "sam"
    assert load_model(tiny_medsam_dir, device="cpu", dtype="float32").family == "medsam"
    forced = load_model(tiny_sam_dir, device="cpu", dtype="float32", family="medsam")
    assert forced.family == "medsam"


def test_folder_without_config_is_rejected(tmp_path):
    (tmp_path / "notes.json").write_text(json.dumps({}))
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(tmp_path, device="cpu")


def test_bundled_lite_medsam_is_available_offline():
    assert is_available_offline("lite-medsam")


def test_bad_device_and_dtype():
    with pytest.raises(ValueError, match="device"):
        load_model("lite-medsam", device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        load_model("lite-medsam", device="cpu", dtype="int8")


def test_the_loaded_model_registry_is_bounded_and_can_be_emptied(tiny_sam_dir, tiny_medsam_dir, monkeypatch):
    monkeypatch.setattr(loading, "_loaded", type(loading._loaded)())
    first = load_model(tiny_sam_dir, device="cpu", dtype="float32")
    second = load_model(tiny_medsam_dir, device="cpu", dtype="float32")
    assert load_model(tiny_sam_dir, device="cpu", dtype="float32") is first  # shared, and now most recent
    third = load_model(tiny_sam_dir, device="cpu", dtype="bfloat16")
    assert loading.loaded_models() == [first, third]  # the least recently used (second) went out
    assert load_model(tiny_medsam_dir, device="cpu", dtype="float32") is not second
    assert loading.unload_model(third) == 1
    assert third not in loading.loaded_models()
    assert loading.unload_model() == 1  # everything: the reloaded MedSAM folder
    assert loading.loaded_models() == []


def test_one_predictor_per_slot_and_a_model_change_releases_the_previous():
    from napari_medsam.engine.model_slot import ModelSlot

    made, released = [], []

    def factory(source, device):
        made.append((source, device))
        return object()

    slot = ModelSlot(factory, released.append)
    a = slot.get("lite-medsam", "cpu")
    assert slot.get("lite-medsam", "cpu") is a
    assert slot.holds("lite-medsam", "cpu")
    b = slot.get("sam-vit-base", "cpu")
    assert released == [a]
    assert made == [("lite-medsam", "cpu"), ("sam-vit-base", "cpu")]
    slot.clear()
    assert released == [a, b]
    assert slot.predictor is None
    assert not slot.holds("sam-vit-base", "cpu")


def test_the_onnx_backend_without_its_extra_names_the_extra(monkeypatch, capsys, tmp_path):
    """ONNX Runtime is the optional [onnx] extra: asking for it names the extra; auto never needs it."""
    import torch

    from napari_medsam.base.errors import MissingExtraError
    from napari_medsam.cli import main
    from napari_medsam.models import backends
    from napari_medsam.models import onnx_encoder as ox

    for module in ox.ONNX_MODULES:
        monkeypatch.setitem(sys.modules, module, None)  # importing it raises ImportError
    cpu = torch.device("cpu")
    with pytest.raises(MissingExtraError, match=r"pip install 'napari-medsam\[onnx\]'"):
        backends.resolve_backend("onnxruntime", cpu, torch.float32)
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    assert backends.resolve_backend("auto", cpu, torch.float32) == "torch"
    np.save(tmp_path / "slice.npy", np.zeros((32, 32), np.float32))
    args = ["segment", str(tmp_path / "slice.npy"), "--box", "2", "2", "20", "20", "--backend", "onnxruntime"]
    args += ["-o", str(tmp_path / "mask.npy")]
    assert main(args) == 1
    assert capsys.readouterr().err.strip() == (
        "napari-medsam: error: the ONNX Runtime encoder backend needs onnxruntime: "
        "pip install 'napari-medsam[onnx]'"
    )
