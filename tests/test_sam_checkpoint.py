"""Original segment-anything ``.pth`` checkpoints <-> transformers ``SamModel``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from napari_medsam.base.errors import ModelLoadError
from napari_medsam.models.sam_checkpoint import (
    default_num_heads,
    infer_family_from_checkpoint,
    load_segment_anything_checkpoint,
    rename_segment_anything_keys,
    sam_config_from_state_dict,
    segment_anything_state_dict,
)


class NotATensor:
    """Something only pickle can restore."""


def _tiny_sam(*, use_rel_pos: bool = True, heads: int = 2, seed: int = 0):
    """A tiny random SamModel (32 channels, 2 ViT blocks: windowed then global)."""
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(seed)
    vision = SamVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=heads,
        global_attn_indexes=[1],
        window_size=4,
        image_size=64,
        patch_size=4,
        mlp_dim=48,
        output_channels=32,
        num_pos_feats=16,
        use_rel_pos=use_rel_pos,
    )
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=64, patch_size=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, iou_head_hidden_dim=24)
    sam = SamModel(
        SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    )
    with torch.no_grad():  # the default init is ~1e-10: make every tensor distinct and non-trivial
        for param in sam.parameters():
            param.normal_(0.0, 0.1)
    return sam.eval()


@pytest.fixture(scope="module")
def tiny_sam():
    return _tiny_sam()


@pytest.fixture(scope="module")
def tiny_pth(tiny_sam, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny_medsam.pth"
    torch.save(segment_anything_state_dict(tiny_sam), path)
    return path


@pytest.fixture(scope="module")
def lite_state_dict(lite_checkpoint) -> dict[str, torch.Tensor]:
    return torch.load(lite_checkpoint, map_location="cpu", weights_only=True)


def _original_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_written_checkpoint_uses_original_vit_names(tiny_pth):
    keys = {k for k in _original_state_dict(tiny_pth) if k.startswith("image_encoder.")}
    expected = {"image_encoder.pos_embed", "image_encoder.neck.0.weight"}
    expected |= {"image_encoder.neck.2.weight"}
    expected |= {
        f"image_encoder.{m}.{p}"
        for m in ("patch_embed.proj", "neck.1", "neck.3")
        for p in ("weight", "bias")
    }
    for n in (0, 1):
        block = f"image_encoder.blocks.{n}"
        expected |= {f"{block}.attn.rel_pos_h", f"{block}.attn.rel_pos_w"}
        expected |= {
            f"{block}.{m}.{p}"
            for m in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2")
            for p in ("weight", "bias")
        }
    assert keys == expected


def test_written_checkpoint_matches_real_prompt_and_decoder_names(tiny_pth, lite_state_dict):
    # Same decoder depth, mask tokens and head depths as the real LiteMedSAM checkpoint.
    written = {k for k in _original_state_dict(tiny_pth) if not k.startswith("image_encoder.")}
    real = {k for k in lite_state_dict if not k.startswith("image_encoder.")}
    assert written == real


@pytest.mark.parametrize(
    ("original", "renamed"),
    [
        ("image_encoder.patch_embed.proj.weight", "vision_encoder.patch_embed.projection.weight"),
        ("image_encoder.blocks.3.norm1.bias", "vision_encoder.layers.3.layer_norm1.bias"),
        ("image_encoder.blocks.3.norm2.weight", "vision_encoder.layers.3.layer_norm2.weight"),
        ("image_encoder.blocks.11.attn.rel_pos_w", "vision_encoder.layers.11.attn.rel_pos_w"),
        ("image_encoder.neck.0.weight", "vision_encoder.neck.conv1.weight"),
        ("image_encoder.neck.1.bias", "vision_encoder.neck.layer_norm1.bias"),
        ("image_encoder.neck.2.weight", "vision_encoder.neck.conv2.weight"),
        ("image_encoder.neck.3.weight", "vision_encoder.neck.layer_norm2.weight"),
        ("prompt_encoder.point_embeddings.2.weight", "prompt_encoder.point_embed.2.weight"),
        ("prompt_encoder.mask_downscaling.4.bias", "prompt_encoder.mask_embed.layer_norm2.bias"),
        (
            "mask_decoder.transformer.layers.1.norm3.weight",
            "mask_decoder.transformer.layers.1.layer_norm3.weight",
        ),
        ("mask_decoder.output_upscaling.1.weight", "mask_decoder.upscale_layer_norm.weight"),
    ],
)
def test_rename_pairs(original, renamed):
    value = torch.zeros(1)
    assert rename_segment_anything_keys({original: value}) == {renamed: value}


def test_rename_special_cases():
    gaussian, step = torch.randn(2, 8), torch.tensor(5)
    renamed = rename_segment_anything_keys(
        {
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": gaussian,
            "image_encoder.layers.0.blocks.0.conv1.bn.num_batches_tracked": step,
            "some.unknown.key": step,
        }
    )
    assert renamed == {
        "prompt_encoder.shared_embedding.positional_embedding": gaussian,
        "shared_image_embedding.positional_embedding": gaussian,
        "some.unknown.key": step,
    }


def test_config_read_from_shapes(tiny_sam, tiny_pth):
    config = sam_config_from_state_dict(_original_state_dict(tiny_pth))
    source = tiny_sam.config
    for name in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "global_attn_indexes",
        "window_size",
        "image_size",
        "patch_size",
        "mlp_dim",
        "output_channels",
        "num_pos_feats",
    ):
        assert getattr(config.vision_config, name) == getattr(source.vision_config, name), name
    for name in ("hidden_size", "image_size", "patch_size", "mask_input_channels"):
        assert getattr(config.prompt_encoder_config, name) == getattr(
            source.prompt_encoder_config, name
        ), name
    for name in ("hidden_size", "mlp_dim", "iou_head_hidden_dim", "num_hidden_layers"):
        assert getattr(config.mask_decoder_config, name) == getattr(
            source.mask_decoder_config, name
        ), name


def test_config_without_relative_positions_uses_documented_rule():
    state_dict = segment_anything_state_dict(_tiny_sam(use_rel_pos=False, heads=1))
    vision = sam_config_from_state_dict(state_dict).vision_config
    assert not vision.use_rel_pos
    assert vision.num_attention_heads == default_num_heads(32) == 1
    assert vision.global_attn_indexes == [0, 1]  # depth < 8: every block global


@pytest.mark.parametrize(("width", "heads"), [(768, 12), (1024, 16), (1280, 16), (512, 8), (32, 1)])
def test_default_num_heads(width, heads):
    assert default_num_heads(width) == heads


def test_round_trip_gives_identical_outputs(tiny_sam, tiny_pth):
    loaded = load_segment_anything_checkpoint(tiny_pth)

    pixel_values = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected_embedding = tiny_sam.get_image_embeddings(pixel_values)
    embedding = loaded.sam.get_image_embeddings(pixel_values)  # the same weights: the same numbers
    assert expected_embedding.std() > 0.1
    assert torch.equal(embedding, expected_embedding)
    # the fast encoder the predictor runs: the same mathematics, other float rounding (oneDNN)
    torch.testing.assert_close(loaded.encoder(pixel_values), expected_embedding, rtol=1e-4, atol=1e-5)

    box = torch.tensor([[[10.0, 12.0, 40.0, 50.0]]])
    with torch.no_grad():
        expected = tiny_sam(image_embeddings=expected_embedding, input_boxes=box)
        got = loaded.sam(image_embeddings=embedding, input_boxes=box)
    assert expected.pred_masks.std() > 1e-3
    assert torch.equal(got.pred_masks, expected.pred_masks)
    assert torch.equal(got.iou_scores, expected.iou_scores)


@pytest.mark.parametrize("wrapping", ["bare", "model", "state_dict", "module_prefix", "hf_names"])
def test_every_weight_round_trips(tiny_sam, tiny_pth, tmp_path, wrapping):
    original = _original_state_dict(tiny_pth)
    contents = {
        "bare": original,
        "model": {"model": original, "epoch": 3},
        "state_dict": {"state_dict": original},
        "module_prefix": {f"module.{k}": v for k, v in original.items()},
        "hf_names": tiny_sam.state_dict(),
    }[wrapping]
    path = tmp_path / "wrapped.pth"
    torch.save(contents, path)

    loaded = load_segment_anything_checkpoint(path)

    source_weights, loaded_weights = tiny_sam.state_dict(), loaded.sam.state_dict()
    assert set(loaded_weights) == set(source_weights)
    for key, value in source_weights.items():
        assert torch.equal(loaded_weights[key], value), key


def test_config_argument_overrides_shapes(tiny_pth):
    config = sam_config_from_state_dict(_original_state_dict(tiny_pth))
    config.mask_decoder_config.num_attention_heads = 4  # not visible in the shapes
    loaded = load_segment_anything_checkpoint(tiny_pth, config=config)
    assert loaded.sam.config.mask_decoder_config.num_attention_heads == 4
    assert (
        load_segment_anything_checkpoint(
            tiny_pth
        ).sam.config.mask_decoder_config.num_attention_heads
        == 8
    )


def test_loaded_model_state(tiny_pth):
    loaded = load_segment_anything_checkpoint(tiny_pth, dtype=torch.bfloat16)
    assert loaded.family == "medsam"
    assert loaded.name == "tiny_medsam"
    assert loaded.dtype == torch.bfloat16
    assert loaded.device == torch.device("cpu")
    assert not loaded.sam.training
    assert not loaded.encoder.training
    params = list(loaded.sam.parameters())
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in params)
    assert not any(p.is_meta for p in params)
    embedding = loaded.encoder(torch.rand(2, 3, 64, 64))  # float32 input is cast
    assert embedding.shape == (2, 32, 16, 16)
    assert embedding.dtype == torch.bfloat16


def test_family_argument_and_log(tiny_pth, tmp_path, caplog):
    assert load_segment_anything_checkpoint(tiny_pth, family="sam").family == "sam"
    official = tmp_path / "sam_vit_b_01ec64.pth"
    official.write_bytes(tiny_pth.read_bytes())
    with caplog.at_level(logging.INFO, logger="napari_medsam.models.sam_checkpoint"):
        assert load_segment_anything_checkpoint(official).family == "sam"
    assert "'sam'" in caplog.text
    with pytest.raises(ValueError, match="family"):
        load_segment_anything_checkpoint(tiny_pth, family="lite-medsam")


@pytest.mark.parametrize(
    ("width", "filename", "family"),
    [
        (1024, "my_finetune.pth", "sam"),
        (1280, None, "sam"),
        (768, "sam_vit_b_01ec64.pth", "sam"),
        (768, "/models/SAM_VIT_B_01EC64.PTH", "sam"),
        (768, "medsam_vit_b.pth", "medsam"),
        (768, "sam_vit_b_other.pth", "medsam"),
        (32, None, "medsam"),
    ],
)
def test_family_rule(width, filename, family):
    assert infer_family_from_checkpoint(width, filename) == family


def test_family_rule_reads_width_from_state_dict(tiny_sam, tiny_pth):
    assert infer_family_from_checkpoint(_original_state_dict(tiny_pth), "x.pth") == "medsam"
    assert infer_family_from_checkpoint(tiny_sam.state_dict(), "sam_vit_b_01ec64.pth") == "sam"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_segment_anything_checkpoint(tmp_path / "nope.pth")


@pytest.mark.parametrize("damage", ["random_bytes", "truncated", "empty"])
def test_corrupt_file(tiny_pth, tmp_path, damage):
    path = tmp_path / "bad.pth"
    data = {
        "random_bytes": os.urandom(4096),
        "truncated": tiny_pth.read_bytes()[:5000],
        "empty": b"",
    }[damage]
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match="not a readable PyTorch checkpoint"):
        load_segment_anything_checkpoint(path)


def test_file_needing_pickle(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"weight": torch.zeros(2), "extra": NotATensor()}, path)
    with pytest.raises(ModelLoadError, match="pickle") as info:
        load_segment_anything_checkpoint(path)
    assert "NotATensor" in str(info.value)


def test_non_tensor_entries(tiny_pth, tmp_path):
    path = tmp_path / "mixed.pth"
    torch.save({**_original_state_dict(tiny_pth), "note": "hello"}, path)
    with pytest.raises(ModelLoadError, match="not tensors"):
        load_segment_anything_checkpoint(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("remove", "missing keys: image_encoder.blocks.0.mlp.lin2.bias"),
        ("reshape", "wrong shapes: image_encoder.blocks.1.mlp.lin2.bias (33,) (expected (32,))"),
        ("extra", "unexpected keys: image_encoder.extra.weight"),
    ],
)
def test_mismatched_state_dict(tiny_pth, tmp_path, change, message):
    state_dict = _original_state_dict(tiny_pth)
    if change == "remove":
        del state_dict["image_encoder.blocks.0.mlp.lin2.bias"]
    elif change == "reshape":
        state_dict["image_encoder.blocks.1.mlp.lin2.bias"] = torch.zeros(33)
    else:
        state_dict["image_encoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "mismatch.pth"
    torch.save(state_dict, path)
    with pytest.raises(ModelLoadError) as info:
        load_segment_anything_checkpoint(path)
    assert message in str(info.value)


def test_not_a_sam_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ModelLoadError, match=r"image_encoder\.patch_embed\.proj\.weight"):
        load_segment_anything_checkpoint(path)


def test_lite_medsam_checkpoint_is_refused(lite_state_dict, lite_checkpoint):
    with pytest.raises(ValueError, match="LiteMedSAM"):
        load_segment_anything_checkpoint(lite_checkpoint)
    with pytest.raises(ValueError, match="LiteMedSAM"):
        sam_config_from_state_dict(lite_state_dict)


def test_lite_medsam_prompt_encoder_and_decoder_load_strictly(lite_state_dict):
    from transformers import SamConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        global_attn_indexes=[0],
        image_size=64,
        patch_size=16,
        mlp_dim=16,
        output_channels=256,
        num_pos_feats=128,
    )
    prompt = SamPromptEncoderConfig(image_size=256, patch_size=4)
    sam = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt))
    renamed = rename_segment_anything_keys(lite_state_dict)

    # TinyViT keys pass through unchanged (BatchNorm step counters are dropped), except the neck,
    # whose layout and names are SAM's.
    encoder_keys = {k for k in lite_state_dict if k.startswith("image_encoder.")}
    passed = {k for k in renamed if k.startswith("image_encoder.")}
    neck = {k for k in encoder_keys if k.startswith("image_encoder.neck.")}
    assert passed == {k for k in encoder_keys - neck if not k.endswith("num_batches_tracked")}
    neck_names = ["conv1.weight", "conv2.weight"]
    neck_names += [f"layer_norm{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    assert {k for k in renamed if k.startswith("vision_encoder.")} == {
        f"vision_encoder.neck.{name}" for name in neck_names
    }

    head = {k: v for k, v in renamed.items() if not k.startswith(("image_encoder.", "vision"))}
    expected = {k for k in sam.state_dict() if not k.startswith("vision_encoder.")}
    assert set(head) == expected
    result = sam.load_state_dict(head, strict=False)
    assert result.unexpected_keys == []
    assert all(k.startswith("vision_encoder.") for k in result.missing_keys)

    gaussian = lite_state_dict["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    assert torch.equal(sam.shared_image_embedding.positional_embedding, gaussian)
    assert torch.equal(sam.prompt_encoder.shared_embedding.positional_embedding, gaussian)
    assert torch.equal(
        sam.mask_decoder.iou_prediction_head.proj_out.weight,
        lite_state_dict["mask_decoder.iou_prediction_head.layers.2.weight"],
    )
    assert torch.equal(
        sam.mask_decoder.output_hypernetworks_mlps[1].layers[0].bias,
        lite_state_dict["mask_decoder.output_hypernetworks_mlps.1.layers.1.bias"],
    )
    assert torch.equal(
        sam.prompt_encoder.mask_embed.conv3.weight,
        lite_state_dict["prompt_encoder.mask_downscaling.6.weight"],
    )
    assert torch.equal(
        sam.mask_decoder.transformer.layer_norm_final_attn.weight,
        lite_state_dict["mask_decoder.transformer.norm_final_attn.weight"],
    )
