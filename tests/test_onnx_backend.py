"""The ONNX Runtime encoder backend: parity with PyTorch on real weights, the graph cache, ``auto``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import replace

import numpy as np
import pytest

if importlib.util.find_spec("onnxruntime") is None:  # the testing extra installs [onnx]: CI must have it
    if os.environ.get("CI"):
        raise ImportError("the ONNX tests need the [onnx] extra: pip install -e '.[testing]'")
    pytest.skip("the [onnx] extra is not installed", allow_module_level=True)

import torch

from napari_medsam.base.metrics import iou
from napari_medsam.models import BACKENDS, LoadedModel
from napari_medsam.models import onnx_encoder as ox
from realdata import ORGANS, ct_sm, oracle_box


@pytest.fixture
def exports(monkeypatch):
    """Counts the graphs exported from torch."""
    calls: list[str] = []
    real = ox._export

    def counting(model, key):
        calls.append(model.family)
        return real(model, key)

    monkeypatch.setattr(ox, "_export", counting)
    return calls


@pytest.fixture(scope="module")
def lite_onnx(lite_predictor_model, tmp_path_factory):
    """The real LiteMedSAM with its encoder on ONNX Runtime (float32), exported into a temporary cache."""
    cache = tmp_path_factory.mktemp("onnx-lite")
    encoder = ox.onnx_encoder(lite_predictor_model, cache_dir=cache)
    return replace(lite_predictor_model, encoder=encoder, backend="onnxruntime")


def test_lite_medsam_parity_on_real_ct(lite_predictor_model, lite_onnx):
    """Real weights, real CT: embeddings agree to float rounding and masks of every organ agree."""
    from napari_medsam import MedSamPredictor

    ct, seg = ct_sm()
    torch_predictor, onnx_predictor = MedSamPredictor(lite_predictor_model), MedSamPredictor(lite_onnx)
    assert onnx_predictor.model.identity != torch_predictor.model.identity  # never mixed in a cache
    window = (-160.0, 240.0)
    ious = []
    for index in (8, 15, 22):
        torch_predictor.set_image(ct[index], window)
        onnx_predictor.set_image(ct[index], window)
        difference = (onnx_predictor._embedding - torch_predictor._embedding).abs().max()
        assert float(difference) < 2e-3  # both float16 in the cache: a few float16 steps at most
        for label in ORGANS.values():
            box = oracle_box(seg[index] == label)
            if box is not None:
                ious.append(iou(onnx_predictor.predict(box=box).mask, torch_predictor.predict(box=box).mask))
    assert len(ious) >= 8
    assert min(ious) >= 0.97
    assert np.mean(ious) >= 0.99


def test_graph_is_cached_and_reused(lite_predictor_model, lite_onnx, exports):
    """The second load reads the cached graph: no export, same embeddings."""
    cache = lite_onnx.encoder.path.parent
    again = ox.onnx_encoder(lite_predictor_model, cache_dir=cache)
    assert exports == []
    pixels = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(pixels), lite_onnx.encoder(pixels))


def _model(weights="w1", family="lite-medsam", dtype=torch.float32, name="m"):
    return LoadedModel(family, None, torch.nn.Identity(), name, torch.device("cpu"), dtype, weights)


def test_cache_key_names_weights_family_and_dtype(tmp_path):
    base = ox.cache_path(_model(), tmp_path)
    others = [
        ox.cache_path(_model(weights="w2"), tmp_path),
        ox.cache_path(_model(family="medsam"), tmp_path),
        ox.cache_path(_model(dtype=torch.bfloat16), tmp_path),
    ]
    assert len({base, *others}) == 4
    assert ox.cache_path(_model(name="elsewhere"), tmp_path) == base  # the digest, not the name


def test_models_without_weights_file_are_told_apart_by_their_tensors(tmp_path):
    """Two random in-memory models of the same name never share a graph."""
    one, two = (LoadedModel("medsam", None, torch.nn.Linear(2, 2), "random", torch.device("cpu"),
                            torch.float32) for _ in range(2))  # fmt: skip
    assert ox.cache_path(one, tmp_path) != ox.cache_path(two, tmp_path)


@pytest.fixture
def tiny_medsam(tiny_medsam_dir):
    from napari_medsam.models.loading import load_model, unload_model

    yield load_model(tiny_medsam_dir, device="cpu", dtype="float32")
    unload_model()


def test_tiny_medsam_vit_through_onnx_runtime(tiny_medsam_dir, tmp_path, monkeypatch, exports):
    """A tiny random MedSAM ViT: from_pretrained(backend="onnxruntime") exports once, then predicts."""
    from napari_medsam import MedSamPredictor
    from napari_medsam.models.loading import unload_model

    monkeypatch.setenv(ox.CACHE_ENV, str(tmp_path))
    image = np.random.default_rng(0).integers(0, 255, (90, 120)).astype(np.uint8)
    try:
        onnx = MedSamPredictor.from_pretrained(str(tiny_medsam_dir), device="cpu", backend="onnxruntime")
        reference = MedSamPredictor.from_pretrained(str(tiny_medsam_dir), device="cpu", backend="torch")
        assert (onnx.model.backend, reference.model.backend) == ("onnxruntime", "torch")
        assert exports == ["medsam"]
        assert len(list(tmp_path.glob("medsam-float32-*.onnx"))) == 1
        onnx.set_image(image)
        reference.set_image(image)
        assert torch.allclose(onnx._embedding, reference._embedding, atol=2e-3)
        box = (10, 12, 80, 70)
        assert iou(onnx.predict(box=box).mask, reference.predict(box=box).mask) > 0.97
    finally:
        unload_model()


def test_damaged_or_foreign_cache_file_is_rebuilt(tiny_medsam, tmp_path, exports):
    first = ox.onnx_encoder(tiny_medsam, cache_dir=tmp_path)
    path = first.path
    pixels = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    expected = first(pixels)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # damaged in the middle (weights)
    path.write_bytes(bytes(data))
    rebuilt = ox.onnx_encoder(tiny_medsam, cache_dir=tmp_path)
    assert exports == ["medsam", "medsam"]
    assert torch.equal(rebuilt(pixels), expected)

    # a foreign graph under this name, with a sidecar copied to match its bytes: still rebuilt,
    # because the key recorded inside the graph is another model's
    other = replace(tiny_medsam, weights="another-digest")
    foreign = ox.onnx_graph_bytes(other, tmp_path)
    path.write_bytes(foreign)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["sha256"] = hashlib.sha256(foreign).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    ox.onnx_encoder(tiny_medsam, cache_dir=tmp_path)
    assert exports == ["medsam", "medsam", "medsam", "medsam"]

    path.with_suffix(".json").write_text("{not json")  # an unreadable sidecar
    ox.onnx_encoder(tiny_medsam, cache_dir=tmp_path)
    assert len(exports) == 5


@pytest.mark.parametrize(
    ("backend", "device", "dtype", "message"),
    [
        ("tensorrt", "cpu", torch.float32, "unknown backend"),
        ("onnxruntime", "cuda", torch.float32, "CPU only"),
        ("onnxruntime", "cpu", torch.bfloat16, "float32"),
        ("openvino", "cuda", torch.float32, "CPU only"),
        ("openvino", "cpu", torch.bfloat16, "float32"),
    ],
)
def test_backend_errors_say_what_to_use(backend, device, dtype, message):
    from napari_medsam.models.backends import resolve_backend

    with pytest.raises(ValueError, match=message):
        resolve_backend(backend, torch.device(device), dtype)


def test_cli_backend_option_reaches_the_encoder(tmp_path, monkeypatch, exports, lite_onnx):
    """``segment --backend onnxruntime`` runs the real LiteMedSAM encoder through ONNX Runtime
    (the graph ``lite_onnx`` exported, from its cache)."""
    import argparse

    from napari_medsam.cli import main
    from napari_medsam.cli.common import add_model_options
    from napari_medsam.models.loading import unload_model

    parser = argparse.ArgumentParser()
    add_model_options(parser)
    assert parser.parse_args([]).backend == "auto"
    assert set(BACKENDS) == {"auto", "torch", "onnxruntime", "openvino"}
    for removed in ("tensorrt", "onnxruntime-int8"):  # int8 failed the fidelity guard: not offered
        with pytest.raises(SystemExit):
            parser.parse_args(["--backend", removed])
    monkeypatch.setenv(ox.CACHE_ENV, str(lite_onnx.encoder.path.parent))
    built: list[str] = []
    real = ox.onnx_encoder
    def counted(model, *args, **kwargs):
        built.append(model.family)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ox, "onnx_encoder", counted)
    ct, seg = ct_sm()
    np.save(tmp_path / "slice.npy", ct[15])
    box = [str(v) for v in oracle_box(seg[15] == ORGANS["liver"])]
    args = ["segment", str(tmp_path / "slice.npy"), "--box", *box, "--preset", "soft-tissue"]
    try:
        assert main([*args, "--backend", "onnxruntime", "-o", str(tmp_path / "onnx.npy")]) == 0
        assert (built, exports) == (["lite-medsam"], [])  # the ONNX encoder, from the cache
        assert main([*args, "--backend", "torch", "-o", str(tmp_path / "torch.npy")]) == 0
    finally:
        unload_model()
    onnx, reference = np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "torch.npy")
    assert reference.any()
    assert iou(onnx > 0, reference > 0) > 0.99
