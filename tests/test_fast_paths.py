"""Fast paths keep the masks: fast decoder and fast ViT encoder against transformers' SamModel."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import iou, make_phantom, tiny_sam_model
from napari_medsam import MedSamPredictor
from napari_medsam.models import LoadedModel, fast_decoder
from napari_medsam.models.fast_decoder import FastMaskDecoder
from napari_medsam.models.fast_vit import SamImageEncoder, encode_image


def lively_sam(seed: int = 0):
    """The tiny random SAM with larger decoder and positional weights, so outputs vary a lot."""
    sam = tiny_sam_model(seed)
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0.0, 0.3)
            elif "mask_decoder" in name and param.ndim > 1:
                param.normal_(0.0, 0.1)
    return sam


PROMPTS = {
    "box": {"input_boxes": torch.tensor([[[200.0, 300.0, 700.0, 800.0]]])},
    "clicks": {
        "input_points": torch.tensor([[[[100.0, 200.0], [500.0, 600.0]]]]),
        "input_labels": torch.tensor([[[1, 0]]]),
    },
    "box+click": {
        "input_boxes": torch.tensor([[[200.0, 300.0, 700.0, 800.0]]]),
        "input_points": torch.tensor([[[[400.0, 500.0]]]]),
        "input_labels": torch.tensor([[[1]]]),
    },
    "box+mask": {
        "input_boxes": torch.tensor([[[200.0, 300.0, 700.0, 800.0]]]),
        "input_masks": torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(1)),
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_fast_decoder_equals_sam_model(prompt, multimask):
    sam = lively_sam()
    embedding = torch.randn(1, 32, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = sam(image_embeddings=embedding, multimask_output=multimask, **PROMPTS[prompt])
        masks, scores = FastMaskDecoder(sam)(embedding, multimask_output=multimask, **PROMPTS[prompt])
    assert masks.shape == want.pred_masks.shape
    assert scores.shape == want.iou_scores.shape
    scale = want.pred_masks.abs().max()
    assert scale > 1e-3, "outputs must be non-trivial for the comparison to mean anything"
    torch.testing.assert_close(masks, want.pred_masks, atol=1e-5 * scale, rtol=1e-4)
    torch.testing.assert_close(scores, want.iou_scores, atol=1e-5, rtol=1e-4)
    assert iou(masks > 0, want.pred_masks > 0) >= 0.999


@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_bfloat16_fast_decoder_tracks_float32(prompt):
    """Prompt tokens in float32, image-side products in bfloat16: close to the float32 model."""
    sam32, sam16 = lively_sam(), lively_sam().to(torch.bfloat16)
    embedding = torch.randn(1, 32, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = sam32(image_embeddings=embedding, multimask_output=False, **PROMPTS[prompt]).pred_masks
        decoder, embedding16 = FastMaskDecoder(sam16), embedding.to(torch.bfloat16)
        first, scores = decoder(embedding16, **PROMPTS[prompt])
        again, _ = decoder(embedding16, **PROMPTS[prompt])  # reuses the cached image state
    assert decoder.token_decoder().iou_token.weight.dtype == torch.float32
    assert first.dtype == torch.bfloat16
    assert scores.dtype == torch.float32
    assert torch.equal(first, again)  # per-prompt work never writes into the cached image state
    assert iou(first > 0, want > 0) >= 0.98
    assert F.cosine_similarity(first.float().flatten(), want.flatten(), dim=0) > 0.999


def test_fast_decoder_on_real_lite_medsam(lite_predictor_model):
    predictor = MedSamPredictor(lite_predictor_model)
    image, _truth, box = make_phantom()
    predictor.set_image(image, window=(-160, 240))
    fast = predictor.predict(box=box)
    sam, embedding = lite_predictor_model.sam, predictor._embedding
    from napari_medsam.models.preprocessing import masks_from_logits, scale_box

    geometry = predictor._geometry
    boxes = torch.tensor(scale_box(np.asarray(box), geometry)[None, None], dtype=torch.float32)
    with torch.inference_mode():
        out = sam(image_embeddings=embedding, input_boxes=boxes, multimask_output=False)
    logits = out.pred_masks[0, 0].float()
    plain = masks_from_logits(logits, geometry)[0].numpy()
    assert iou(fast.mask, plain) >= 0.999
    np.testing.assert_allclose(fast.logits, logits[0].numpy(), atol=1e-3 * float(logits.abs().max()))
    assert abs(fast.score - float(out.iou_scores[0, 0, 0])) < 1e-4


def test_image_work_is_done_once_per_image():
    sam = lively_sam()
    decoder = FastMaskDecoder(sam)
    calls = [0]
    sam.mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.register_forward_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1)
    )
    first = torch.randn(1, 32, 64, 64)
    second = torch.randn(1, 32, 64, 64)
    for x0 in (100.0, 200.0, 300.0):
        decoder(first, input_boxes=torch.tensor([[[x0, 100.0, 800.0, 900.0]]]))
    assert calls[0] == 1  # the image keys of layer 0: once for three prompts
    decoder(second, input_boxes=torch.tensor([[[100.0, 100.0, 800.0, 900.0]]]))
    assert calls[0] == 2
    # a mask prompt changes the image side: computed afresh, the cached state left alone
    decoder(second, input_boxes=PROMPTS["box"]["input_boxes"], input_masks=PROMPTS["box+mask"]["input_masks"])
    assert calls[0] == 3
    decoder(second, input_boxes=PROMPTS["box"]["input_boxes"])
    assert calls[0] == 3


@pytest.mark.parametrize("window", [14, 8], ids=["padded-windows", "exact-windows"])
def test_fast_vit_equals_get_image_embeddings(window):
    from transformers import SamModel

    from conftest import tiny_sam_config

    config = tiny_sam_config()
    config.vision_config.window_size = window  # 64 x 64 tokens: 14 pads the windows, 8 does not
    torch.manual_seed(1)
    sam = SamModel(config).eval()
    with torch.no_grad():
        for name, param in sam.vision_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0.0, 0.3)
            elif param.ndim > 1:
                param.normal_(0.0, 0.05)
    pixels = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = sam.get_image_embeddings(pixels)
        got = encode_image(sam, pixels)
    assert got.shape == want.shape == (1, 32, 64, 64)
    assert want.std() > 0.1
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_predictor_uses_the_fast_encoder(tiny_medsam_dir, monkeypatch):
    import napari_medsam.models.fast_vit as fast_vit

    calls = [0]
    encode = fast_vit.encode_image

    def spy(sam, pixel_values):
        calls[0] += 1
        return encode(sam, pixel_values)

    monkeypatch.setattr(fast_vit, "encode_image", spy)
    predictor = MedSamPredictor.from_pretrained(
        str(tiny_medsam_dir), device="cpu", dtype="float32", backend="torch"
    )
    predictor.set_image(np.random.default_rng(0).integers(0, 255, (50, 60)).astype(np.uint8))
    assert calls[0] == 1


def test_mixed_bfloat16_encoder_keeps_the_masks():
    """bf16 matrix products, float32 residual stream/norms/relative positions: same masks."""
    sam32 = lively_sam()
    sam16 = lively_sam().to(torch.bfloat16)
    image, _, box = make_phantom(96, 128)
    model32 = LoadedModel("medsam", sam32, SamImageEncoder(sam32), "t32", torch.device("cpu"), torch.float32)
    predictor = MedSamPredictor(model32)
    predictor.set_image(image, window=(-160, 240))
    want = predictor.predict(box=box)
    exact = predictor._embedding
    from napari_medsam.models.preprocessing import model_input, to_rgb_uint8

    pixels, _ = model_input(to_rgb_uint8(image, (-160.0, 240.0)), "medsam")
    with torch.inference_mode():
        mixed = encode_image(sam16, torch.from_numpy(pixels)[None])
    assert mixed.dtype == torch.bfloat16
    assert F.cosine_similarity(mixed.float().flatten(), exact.float().flatten(), dim=0) > 0.999
    predictor._embedding = mixed.float()
    assert 0.01 < want.mask.mean() < 0.99
    assert iou(predictor.predict(box=box).mask, want.mask) >= 0.98


def test_bfloat16_model_keeps_the_masks():
    """A whole bfloat16 model (encoder and decoder) against float32 on the same tiny weights."""
    sam32, sam16 = lively_sam(), lively_sam().to(torch.bfloat16)
    cpu = torch.device("cpu")
    p32 = MedSamPredictor(LoadedModel("sam", sam32, SamImageEncoder(sam32), "a", cpu, torch.float32))
    p16 = MedSamPredictor(LoadedModel("sam", sam16, SamImageEncoder(sam16), "b", cpu, torch.bfloat16))
    image, _, box = make_phantom(96, 128)
    for predictor in (p32, p16):
        predictor.set_image(image, window=(-160, 240))
    want, got = p32.predict(box=box), p16.predict(box=box)
    assert 0.01 < want.mask.mean() < 0.99
    assert iou(got.mask, want.mask) >= 0.98
    assert np.corrcoef(got.logits.ravel(), want.logits.ravel())[0, 1] >= 0.99


def test_auto_dtype_is_float32_whatever_the_cpu(monkeypatch):
    """Reduced precision is opt-in: bfloat16 failed the real-data mask guard (bench_quality.py)."""
    from napari_medsam.models import devices

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(devices, "cpu_has_native_bfloat16", lambda native=native: native)
        assert devices.resolve_dtype("auto", cpu) == torch.float32
    assert devices.resolve_dtype("auto", cuda) == torch.float32
    assert devices.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert devices.resolve_dtype("fp16", cuda) == torch.float16


def test_native_bfloat16_detection_matches_the_kernel_flags():
    from napari_medsam.models.devices import _cpuinfo_flags, cpu_has_native_bfloat16

    flags = _cpuinfo_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo here")
    assert cpu_has_native_bfloat16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_plain_decoder_path_gives_the_same_masks_on_real_lite_medsam(lite_predictor_model, monkeypatch):
    """Where transformers' internals are missing the predictor falls back to SamModel's decoder."""
    image, _truth, box = make_phantom()
    fast = MedSamPredictor(lite_predictor_model)
    fast.set_image(image, window=(-160, 240))
    want = fast.predict(box=box)
    assert fast_decoder.decoder_for(lite_predictor_model.sam) is not None  # the fast path, normally

    def missing_internals(self, src):
        raise AttributeError("'SamTwoWayAttentionBlock' object has no attribute 'cross_attn_token_to_image'")

    monkeypatch.setattr(fast_decoder, "_decoders", weakref.WeakKeyDictionary())
    monkeypatch.setattr(FastMaskDecoder, "_layer0_state", missing_internals)
    assert fast_decoder.decoder_for(lite_predictor_model.sam) is None
    plain = MedSamPredictor(lite_predictor_model)
    plain.set_image(image, window=(-160, 240))
    got = plain.predict(box=box)
    assert iou(got.mask, want.mask) >= 0.999
    assert abs(got.score - want.score) < 1e-3
