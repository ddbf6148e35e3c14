"""MedSamPredictor against independent re-statements of each family's published inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.transform import resize

from conftest import dice, iou, make_phantom
from napari_medsam import MedSamPredictor
from napari_medsam.models.loading import load_model


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def window_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """MedSAM's CT preprocessing: clip to the window, scale to 0..255, cast to uint8."""
    clipped = np.clip(image.astype(np.float64), low, high)
    return ((clipped - low) / (high - low) * 255.0).astype(np.uint8)


def medsam_reference(sam, image_uint8: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    """MedSAM's published inference: stretch to 1024, min-max, box by 1024/W and 1024/H, sigmoid, upsample."""
    height, width = image_uint8.shape
    rgb = np.repeat(image_uint8[:, :, None], 3, axis=-1)
    stretched = resize(rgb, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    scaled = (stretched - stretched.min()) / np.clip(stretched.max() - stretched.min(), 1e-8, None)
    pixels = torch.tensor(scaled, dtype=torch.float32).permute(2, 0, 1)[None]
    box_1024 = np.asarray(box, dtype=np.float64) / np.array([width, height, width, height]) * 1024
    with torch.no_grad():
        embedding = sam.get_image_embeddings(pixels)
        out = sam(
            image_embeddings=embedding,
            input_boxes=torch.tensor(box_1024[None, None], dtype=torch.float32),
            multimask_output=False,
        )
    logits = out.pred_masks[0, 0]
    prob = F.interpolate(
        torch.sigmoid(logits)[None], size=(height, width), mode="bilinear", align_corners=False
    )
    return (prob[0, 0] > 0.5).numpy(), logits[0].numpy()


def sam_reference(sam, image_uint8: np.ndarray, box) -> np.ndarray:
    """SAM's own inference: longest side 1024, ImageNet mean/std, pad, logits upsampled, cropped, > 0."""
    height, width = image_uint8.shape
    scale = 1024 / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    rgb = np.repeat(image_uint8[:, :, None], 3, axis=-1)
    small = np.round(resize(rgb, (new_h, new_w), order=1, preserve_range=True, anti_aliasing=True))
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    padded = np.zeros((1024, 1024, 3))
    padded[:new_h, :new_w] = (small - mean) / std
    pixels = torch.tensor(padded, dtype=torch.float32).permute(2, 0, 1)[None]
    box_in = np.asarray(box, dtype=np.float64) * np.array([new_w / width, new_h / height] * 2)
    with torch.no_grad():
        out = sam(
            pixel_values=pixels,
            input_boxes=torch.tensor(box_in[None, None], dtype=torch.float32),
            multimask_output=False,
        )
    logits = F.interpolate(
        out.pred_masks[0, 0][None], size=(1024, 1024), mode="bilinear", align_corners=False
    )
    logits = F.interpolate(
        logits[..., :new_h, :new_w], size=(height, width), mode="bilinear", align_corners=False
    )
    return (logits[0, 0] > 0).numpy()


def count_encoder_calls(predictor: MedSamPredictor) -> list[int]:
    calls = [0]
    predictor.model.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("shape", [(160, 160), (120, 200)], ids=["square", "non-square"])
def test_medsam_matches_its_reference_inference(tiny_medsam_dir, shape):
    predictor = MedSamPredictor.from_pretrained(str(tiny_medsam_dir), device="cpu", dtype="float32")
    assert predictor.family == "medsam"
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, shape).astype(np.uint8)
    box = (20.0, 30.0, shape[1] - 40.0, shape[0] - 20.0)
    predictor.set_image(image)
    result = predictor.predict(box=box)
    ref_mask, ref_logits = medsam_reference(predictor.model.sam, image, box)
    assert 0.01 < ref_mask.mean() < 0.99, (
        "the reference mask must be non-trivial for the comparison to mean anything"
    )
    assert result.mask.shape == shape
    assert result.mask.dtype == bool
    assert iou(result.mask, ref_mask) >= 0.98
    assert correlation(result.logits, ref_logits) >= 0.995
    assert result.logits.shape == (256, 256)
    assert result.logits.dtype == np.float32


def test_medsam_window_is_clip_then_scale(tiny_medsam_dir):
    predictor = MedSamPredictor.from_pretrained(str(tiny_medsam_dir), device="cpu", dtype="float32")
    image, _, box = make_phantom(96, 128)
    predictor.set_image(image, window=(-160, 240))
    ref_mask, ref_logits = medsam_reference(predictor.model.sam, window_uint8(image, -160, 240), box)
    result = predictor.predict(box=box)
    assert iou(result.mask, ref_mask) >= 0.98
    assert correlation(result.logits, ref_logits) >= 0.995


def test_sam_family_pads_and_normalises(tiny_sam_dir):
    predictor = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    assert predictor.family == "sam"
    image = np.random.default_rng(2).integers(0, 256, (100, 180)).astype(np.uint8)
    box = (30.0, 10.0, 150.0, 80.0)
    predictor.set_image(image)
    ref = sam_reference(predictor.model.sam, image, box)
    assert 0.01 < ref.mean() < 0.99
    assert iou(predictor.predict(box=box).mask, ref) >= 0.98


def test_lite_medsam_upsamples_logits_before_the_sigmoid():
    from napari_medsam.models.preprocessing import InputGeometry, masks_from_logits

    geometry = InputGeometry("lite-medsam", (90, 150), (154, 256), 256)
    logits = torch.randn(1, 256, 256) * 4
    expected = (
        torch.sigmoid(
            F.interpolate(logits[None, :, :154, :256], size=(90, 150), mode="bilinear", align_corners=False)
        )[0, 0]
        > 0.5
    )
    assert torch.equal(masks_from_logits(logits, geometry)[0], expected)
    medsam = InputGeometry("medsam", (90, 150), (1024, 1024), 1024)
    expected_medsam = (
        F.interpolate(torch.sigmoid(logits)[None], size=(90, 150), mode="bilinear", align_corners=False)[0, 0]
        > 0.5
    )
    assert torch.equal(masks_from_logits(logits, medsam)[0], expected_medsam)


def test_box_scaling_per_family():
    from napari_medsam.models.preprocessing import InputGeometry, scale_box

    box = np.array([10.0, 20.0, 99.0, 59.0])
    medsam = InputGeometry("medsam", (80, 200), (1024, 1024), 1024)
    np.testing.assert_allclose(scale_box(box, medsam), box * np.array([1024 / 200, 1024 / 80] * 2))
    lite = InputGeometry("lite-medsam", (80, 200), (102, 256), 256)
    np.testing.assert_array_equal(scale_box(box, lite), np.trunc(box * 256 / 200))


def test_real_lite_medsam_segments_the_phantom(lite_predictor_model):
    predictor = MedSamPredictor(lite_predictor_model)
    for shape in [(192, 256), (256, 160)]:
        image, truth, box = make_phantom(*shape)
        predictor.set_image(image, window=(-160, 240))
        result = predictor.predict(box=box)
        x0, y0, x1, y1 = (round(v) for v in box)
        filled = np.zeros_like(truth)
        filled[y0 : y1 + 1, x0 : x1 + 1] = True
        assert dice(result.mask, truth) >= 0.95
        assert dice(result.mask, truth) > dice(filled, truth) + 0.1


def test_float16_cached_embedding_keeps_the_mask(lite_predictor_model):
    predictor = MedSamPredictor(lite_predictor_model)
    image, _, box = make_phantom()
    predictor.set_image(image, window=(-160, 240))
    cached = predictor.predict(box=box)
    from napari_medsam.models.preprocessing import model_input, to_rgb_uint8

    pixels, _ = model_input(to_rgb_uint8(image, (-160.0, 240.0)), "lite-medsam")
    with torch.no_grad():
        full = predictor.model.encoder(torch.from_numpy(pixels)[None])
    predictor._embedding = full  # the same prompt on the un-rounded float32 embedding
    exact = predictor.predict(box=box)
    assert iou(cached.mask, exact.mask) >= 0.98


def test_cache_hit_runs_no_encoder(tiny_sam_dir):
    predictor = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    calls = count_encoder_calls(predictor)
    image = np.random.default_rng(3).normal(size=(64, 80)).astype(np.float32)
    predictor.set_image(image)
    first = predictor.predict(box=(5, 5, 60, 50))
    predictor.set_image(image.copy())
    assert calls[0] == 1
    np.testing.assert_array_equal(predictor.predict(box=(5, 5, 60, 50)).mask, first.mask)
    assert predictor.is_cached(image)
    assert not predictor.is_cached(image, window=(-1, 1))
    predictor.set_image(image, window=(-1, 1))
    assert calls[0] == 2
    changed = image.copy()
    changed[10, 10] += 1
    assert predictor.precompute(changed) is True
    assert predictor.precompute(changed) is False
    assert calls[0] == 3


def test_cache_is_bounded_in_bytes():
    from napari_medsam.engine.cache import EmbeddingCache, EmbeddingKey

    cache = EmbeddingCache(max_bytes=3 * 1024)
    for i in range(5):
        cache.put(EmbeddingKey("m", str(i), None, 1), torch.zeros(512, dtype=torch.float16))
    assert len(cache) == 3
    assert cache.nbytes <= 3 * 1024
    assert cache.get(EmbeddingKey("m", "0", None, 1)) is None
    assert cache.get(EmbeddingKey("m", "4", None, 1)) is not None


def test_constant_image_is_not_an_error(tiny_sam_dir):
    predictor = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    predictor.set_image(np.full((40, 50), 7, dtype=np.int16))
    assert predictor.predict(box=(5, 5, 30, 30)).mask.shape == (40, 50)


def test_negative_click_reaches_the_decoder_as_background(tiny_sam_dir, monkeypatch):
    from napari_medsam.models import fast_decoder

    predictor = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    predictor.set_image(np.random.default_rng(4).normal(size=(64, 64)))
    seen = {}
    decode = fast_decoder.decode

    def spy(sam, embedding, **prompts):
        seen.update(prompts)
        return decode(sam, embedding, **prompts)

    monkeypatch.setattr(fast_decoder, "decode", spy)
    negative = predictor.predict(points=[[10, 20], [40, 30]], point_labels=[1, 0], multimask=True)
    assert seen["input_labels"].tolist() == [[[1, 0]]]
    np.testing.assert_allclose(seen["input_points"][0, 0].numpy(), [[160, 320], [640, 480]])
    positive = predictor.predict(points=[[10, 20], [40, 30]], point_labels=[1, 1], multimask=True)
    assert not np.array_equal(negative.logits, positive.logits)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"box": (10, 10, 5, 20)}, "empty or inverted"),
        ({"box": (10, 10, 10, 20)}, "empty or inverted"),
        ({"box": (1, 2, 3)}, "4 numbers"),
        ({"box": (np.nan, 1, 5, 5)}, "NaN"),
        ({"box": (100, 100, 200, 200)}, "wholly outside"),
        ({"box": (-20, 5, 0, 30)}, "no area"),
        ({"points": [[5, 500]], "point_labels": [1]}, "outside the image"),
        ({"points": [[5, 5], [6, 6]], "point_labels": [1]}, "2 points but 1"),
        ({"points": [[5, 5]], "point_labels": [2]}, "1 \\(foreground\\) or 0"),
        ({"point_labels": [1]}, "without points"),
        ({}, "no prompt"),
        ({"box": (1, 1, 20, 20), "mask_input": np.zeros((64, 64))}, "mask_input"),
    ],
)
def test_bad_prompts_raise_clear_errors(tiny_sam_dir, kwargs, match):
    predictor = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    predictor.set_image(np.zeros((50, 60), dtype=np.uint8))
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)


def test_box_partly_outside_is_clipped(tiny_sam_dir):
    predictor = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    image = np.random.default_rng(5).normal(size=(50, 60))
    predictor.set_image(image)
    clipped = predictor.predict(box=(-30, -10, 200, 40)).mask
    np.testing.assert_array_equal(clipped, predictor.predict(box=(0, 0, 59, 40)).mask)


@pytest.mark.parametrize(
    ("image", "window", "error", "match"),
    [
        (np.zeros((4, 30, 30)), None, ValueError, "3 dimensions"),
        (np.zeros((2, 4, 30, 30)), None, ValueError, "4 dimensions"),
        (np.zeros((5, 30, 30, 3)), None, ValueError, "RGB volume"),
        (np.zeros((0, 30)), None, ValueError, "empty"),
        (np.zeros((30, 30), dtype=complex), None, ValueError, "complex"),
        ([[1, 2], [3, 4]], None, TypeError, "numpy array"),
        (np.array([[np.nan, 1.0], [2.0, 3.0]]), None, ValueError, "NaN"),
        (np.zeros((30, 30)), (5, 5), ValueError, "below high"),
        (np.zeros((30, 30)), (0, np.inf), ValueError, "finite"),
    ],
)
def test_bad_images_raise_clear_errors(tiny_sam_dir, image, window, error, match):
    predictor = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    with pytest.raises(error, match=match):
        predictor.set_image(image, window=window)


def test_rgb_and_rgba_are_accepted(tiny_sam_dir):
    predictor = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    rgba = np.random.default_rng(6).integers(0, 256, (40, 50, 4)).astype(np.uint8)
    predictor.set_image(rgba)
    assert predictor.image_shape == (40, 50)
    rgb_mask = predictor.predict(box=(5, 5, 40, 30)).mask
    predictor.set_image(rgba[..., :3])
    np.testing.assert_array_equal(predictor.predict(box=(5, 5, 40, 30)).mask, rgb_mask)


def test_predict_before_set_image_raises(tiny_sam_dir):
    predictor = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(box=(1, 1, 5, 5))
    predictor.set_image(np.zeros((20, 20)))
    predictor.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(box=(1, 1, 5, 5))


def test_models_are_loaded_once_and_shared(tiny_sam_dir):
    first = load_model(str(tiny_sam_dir), device="cpu", dtype="float32")
    assert load_model(tiny_sam_dir, device="cpu", dtype="float32") is first
