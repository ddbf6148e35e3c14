"""What the graph backends (ONNX Runtime, OpenVINO) share: a model converted once, then masks as PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import count_calls, require_extra
from napari_medsam.base.metrics import iou
from realdata import ORGANS, ct_sm, oracle_box

#: backend -> (its builder, the function that converts a model, the module it needs, its extra,
#: the suffixes of the graph file and of the file with its weights)
GRAPH_BACKENDS = {
    "onnxruntime": ("onnx_encoder", "_export", "onnxruntime", "onnx", "onnx", "onnx"),
    "openvino": ("openvino_encoder", "_convert", "openvino", "openvino", "xml", "bin"),
}


def backend_module(backend: str):
    """The backend's module (skipping where its extra is missing)."""
    import importlib

    module_name, _, needs, extra, _, _ = GRAPH_BACKENDS[backend]
    require_extra(needs, extra)
    return importlib.import_module(f"napari_medsam.models.{module_name}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(GRAPH_BACKENDS))
def test_tiny_medsam_vit_through_a_graph_backend(backend, tiny_medsam_dir, tmp_path, monkeypatch):
    """A tiny random MedSAM ViT: from_pretrained(backend=...) converts once, then predicts as torch."""
    from napari_medsam import MedSamPredictor
    from napari_medsam.models.loading import unload_model

    module = backend_module(backend)
    _, converter, _, _, suffix, _ = GRAPH_BACKENDS[backend]
    conversions = count_calls(monkeypatch, module, converter)
    monkeypatch.setenv(module.CACHE_ENV, str(tmp_path))
    image = np.random.default_rng(0).integers(0, 255, (90, 120)).astype(np.uint8)
    try:
        candidate = MedSamPredictor.from_pretrained(str(tiny_medsam_dir), device="cpu", backend=backend)
        reference = MedSamPredictor.from_pretrained(str(tiny_medsam_dir), device="cpu", backend="torch")
        assert (candidate.model.backend, reference.model.backend) == (backend, "torch")
        assert conversions == ["medsam"]
        assert len(list(tmp_path.glob(f"medsam-float32-*.{suffix}"))) == 1
        candidate.set_image(image)
        reference.set_image(image)
        assert torch.allclose(candidate._embedding, reference._embedding, atol=2e-3)
        box = (10, 12, 80, 70)
        assert iou(candidate.predict(box=box).mask, reference.predict(box=box).mask) > 0.97
    finally:
        unload_model()


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(GRAPH_BACKENDS))
def test_lite_medsam_parity_on_real_ct(backend, lite_predictor_model, lite_on):
    """Real weights, real CT: embeddings agree to float32 rounding and the masks of every organ agree."""
    from napari_medsam import MedSamPredictor

    backend_module(backend)
    graph = lite_on(backend)
    ct, seg = ct_sm()
    reference, candidate = MedSamPredictor(lite_predictor_model), MedSamPredictor(graph)
    assert candidate.model.identity != reference.model.identity  # never mixed in a cache
    window = (-160.0, 240.0)
    ious = []
    for index in (8, 15, 22):
        pixels = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(index))
        with torch.inference_mode():
            want = lite_predictor_model.encoder(pixels)
        got = graph.encoder(pixels)
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


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(GRAPH_BACKENDS))
def test_converted_graph_is_cached_and_reused(backend, lite_predictor_model, lite_on, monkeypatch):
    """The second load reads the cached graph: no conversion, the same embeddings."""
    module = backend_module(backend)
    graph = lite_on(backend)
    conversions = count_calls(monkeypatch, module, GRAPH_BACKENDS[backend][1])
    build = getattr(module, GRAPH_BACKENDS[backend][0])
    again = build(lite_predictor_model, cache_dir=graph.encoder.path.parent)
    assert conversions == []
    pixels = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(pixels), graph.encoder(pixels))


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(GRAPH_BACKENDS))
def test_damaged_cache_is_rebuilt(backend, tiny_medsam, tmp_path, monkeypatch):
    """Damaged weights in the cache (their SHA-256 no longer matches), then an unreadable sidecar:
    converted again each time, never trusted; the rebuilt encoder gives the first one's embeddings."""
    module = backend_module(backend)
    builder, converter, _, _, graph_suffix, weights_suffix = GRAPH_BACKENDS[backend]
    conversions = count_calls(monkeypatch, module, converter)
    build = getattr(module, builder)
    first = build(tiny_medsam, cache_dir=tmp_path)
    pixels = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    expected = first(pixels)
    (weights,) = tmp_path.glob(f"medsam-float32-*.{weights_suffix}")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # damaged in the middle of the weights
    weights.write_bytes(bytes(data))
    rebuilt = build(tiny_medsam, cache_dir=tmp_path)
    assert conversions == ["medsam", "medsam"]
    torch.testing.assert_close(rebuilt(pixels), expected, rtol=1e-4, atol=1e-5)
    (graph,) = tmp_path.glob(f"medsam-float32-*.{graph_suffix}")
    graph.with_suffix(".json").write_text("{not json")  # an unreadable sidecar
    build(tiny_medsam, cache_dir=tmp_path)
    assert len(conversions) == 3
