"""Original segment-anything / MedSAM ``.pth`` checkpoints <-> transformers ``SamModel``.

The key table below was written against transformers' ``modeling_sam.py`` and the key list of a
real ``SamModel``; the original names are those of the segment-anything ``Sam`` module (also
used by MedSAM and by LiteMedSAM's prompt encoder and mask decoder).

This module imports torch at import time; import it lazily (not at napari start).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from napari_medsam.base.errors import ModelLoadError
from napari_medsam.models import LoadedModel
from napari_medsam.models.checkpoints import (
    GAUSSIAN_KEY,
    GAUSSIAN_TARGETS,
    count_indices,
    prompt_decoder_configs,
    read_state_dict,
    require,
    state_dict_mismatches,
)
from napari_medsam.models.families import Family, families_with, family_spec
from napari_medsam.models.fast_vit import SamImageEncoder

if TYPE_CHECKING:
    from transformers import SamConfig, SamModel

logger = logging.getLogger(__name__)

_DECODER_LAYER = "mask_decoder.transformer.layers.{n}."


def _same(key: str) -> tuple[str, str]:
    return key, key


# (original name, transformers name). Placeholders: {n} an index, {p} weight|bias,
# {proj} one of the four attention projections. Both sides of a row use the same placeholders.
_KEY_TABLE: tuple[tuple[str, str], ...] = (
    # ViT image encoder
    ("image_encoder.patch_embed.proj.{p}", "vision_encoder.patch_embed.projection.{p}"),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.blocks.{n}.norm1.{p}", "vision_encoder.layers.{n}.layer_norm1.{p}"),
    ("image_encoder.blocks.{n}.norm2.{p}", "vision_encoder.layers.{n}.layer_norm2.{p}"),
    ("image_encoder.blocks.{n}.attn.qkv.{p}", "vision_encoder.layers.{n}.attn.qkv.{p}"),
    ("image_encoder.blocks.{n}.attn.proj.{p}", "vision_encoder.layers.{n}.attn.proj.{p}"),
    ("image_encoder.blocks.{n}.attn.rel_pos_h", "vision_encoder.layers.{n}.attn.rel_pos_h"),
    ("image_encoder.blocks.{n}.attn.rel_pos_w", "vision_encoder.layers.{n}.attn.rel_pos_w"),
    ("image_encoder.blocks.{n}.mlp.lin1.{p}", "vision_encoder.layers.{n}.mlp.lin1.{p}"),
    ("image_encoder.blocks.{n}.mlp.lin2.{p}", "vision_encoder.layers.{n}.mlp.lin2.{p}"),
    ("image_encoder.neck.0.weight", "vision_encoder.neck.conv1.weight"),
    ("image_encoder.neck.1.{p}", "vision_encoder.neck.layer_norm1.{p}"),
    ("image_encoder.neck.2.weight", "vision_encoder.neck.conv2.weight"),
    ("image_encoder.neck.3.{p}", "vision_encoder.neck.layer_norm2.{p}"),
    # prompt encoder (the positional matrix is handled separately: it fills two tensors)
    ("prompt_encoder.point_embeddings.{n}.weight", "prompt_encoder.point_embed.{n}.weight"),
    _same("prompt_encoder.not_a_point_embed.weight"),
    _same("prompt_encoder.no_mask_embed.weight"),
    ("prompt_encoder.mask_downscaling.0.{p}", "prompt_encoder.mask_embed.conv1.{p}"),
    ("prompt_encoder.mask_downscaling.1.{p}", "prompt_encoder.mask_embed.layer_norm1.{p}"),
    ("prompt_encoder.mask_downscaling.3.{p}", "prompt_encoder.mask_embed.conv2.{p}"),
    ("prompt_encoder.mask_downscaling.4.{p}", "prompt_encoder.mask_embed.layer_norm2.{p}"),
    ("prompt_encoder.mask_downscaling.6.{p}", "prompt_encoder.mask_embed.conv3.{p}"),
    # mask decoder (the MLP heads are handled separately: their layer names depend on depth)
    _same("mask_decoder.iou_token.weight"),
    _same("mask_decoder.mask_tokens.weight"),
    _same(_DECODER_LAYER + "self_attn.{proj}.{p}"),
    _same(_DECODER_LAYER + "cross_attn_token_to_image.{proj}.{p}"),
    _same(_DECODER_LAYER + "cross_attn_image_to_token.{proj}.{p}"),
    (_DECODER_LAYER + "norm1.{p}", _DECODER_LAYER + "layer_norm1.{p}"),
    (_DECODER_LAYER + "norm2.{p}", _DECODER_LAYER + "layer_norm2.{p}"),
    (_DECODER_LAYER + "norm3.{p}", _DECODER_LAYER + "layer_norm3.{p}"),
    (_DECODER_LAYER + "norm4.{p}", _DECODER_LAYER + "layer_norm4.{p}"),
    _same(_DECODER_LAYER + "mlp.lin1.{p}"),
    _same(_DECODER_LAYER + "mlp.lin2.{p}"),
    _same("mask_decoder.transformer.final_attn_token_to_image.{proj}.{p}"),
    (
        "mask_decoder.transformer.norm_final_attn.{p}",
        "mask_decoder.transformer.layer_norm_final_attn.{p}",
    ),
    ("mask_decoder.output_upscaling.0.{p}", "mask_decoder.upscale_conv1.{p}"),
    ("mask_decoder.output_upscaling.1.{p}", "mask_decoder.upscale_layer_norm.{p}"),
    ("mask_decoder.output_upscaling.3.{p}", "mask_decoder.upscale_conv2.{p}"),
)

# Feed-forward heads: original ``layers.0 .. layers.{d-1}``; transformers ``proj_in``,
# ``layers.0 .. layers.{d-3}``, ``proj_out``.
_MLP_HEAD = re.compile(
    r"(?P<head>mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))"
    r"\.(?P<rest>layers\.\d+|proj_in|proj_out)\.(?P<p>weight|bias)"
)
# Keys with no counterpart, dropped on purpose: BatchNorm step counters (LiteMedSAM's encoder) and
# the normalisation constants some segment-anything forks save with the weights.
_DROPPED = re.compile(r"(.*\.)?num_batches_tracked|pixel_mean|pixel_std")

_PLACEHOLDERS = {"n": r"\d+", "p": r"weight|bias", "proj": r"q_proj|k_proj|v_proj|out_proj"}


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_PLACEHOLDERS[part]})"
        for i, part in enumerate(parts)
    )
    return re.compile(regex)


_FORWARD = tuple((_compile(src), dst) for src, dst in _KEY_TABLE)
_BACKWARD = tuple((_compile(dst), src) for src, dst in _KEY_TABLE)


def _rename(key: str, table: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, template in table:
        match = pattern.fullmatch(key)
        if match:
            return template.format(**match.groupdict())
    return None


def _mlp_depths(keys: Iterable[str], original: bool) -> dict[str, int]:
    """Number of linear layers of each feed-forward head, read from the key names."""
    depths: dict[str, int] = {}
    for key in keys:
        match = _MLP_HEAD.fullmatch(key)
        if not match:
            continue
        rest = match["rest"]
        index = int(rest.split(".")[1]) if rest.startswith("layers.") else -1
        depth = index + 1 if original else max(index + 3, 2)
        depths[match["head"]] = max(depths.get(match["head"], 0), depth)
    return depths


def _transformers_names(keys: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Original key -> its transformers keys (none for a dropped key, two for the tied matrix)."""
    keys = list(keys)
    depths = _mlp_depths(keys, original=True)
    names: dict[str, tuple[str, ...]] = {}
    for key in keys:
        match = _MLP_HEAD.fullmatch(key)
        if _DROPPED.fullmatch(key):
            names[key] = ()
        elif key == GAUSSIAN_KEY:
            names[key] = GAUSSIAN_TARGETS
        elif match and match["rest"].startswith("layers."):
            index, depth = int(match["rest"].split(".")[1]), depths[match["head"]]
            if index == 0:
                layer = "proj_in"
            elif index == depth - 1:
                layer = "proj_out"
            else:
                layer = f"layers.{index - 1}"
            names[key] = (f"{match['head']}.{layer}.{match['p']}",)
        else:
            names[key] = (_rename(key, _FORWARD) or key,)
    return names


def _original_names(keys: Iterable[str]) -> dict[str, str | None]:
    """Transformers key -> original key (``None`` for the redundant tied copy)."""
    keys = list(keys)
    depths = _mlp_depths(keys, original=False)
    names: dict[str, str | None] = {}
    for key in keys:
        match = _MLP_HEAD.fullmatch(key)
        if key == GAUSSIAN_TARGETS[0]:
            names[key] = GAUSSIAN_KEY
        elif key == GAUSSIAN_TARGETS[1]:
            names[key] = None if GAUSSIAN_TARGETS[0] in keys else GAUSSIAN_KEY
        elif match:
            rest = match["rest"]
            if rest == "proj_in":
                index = 0
            elif rest == "proj_out":
                index = depths[match["head"]] - 1
            else:
                index = int(rest.split(".")[1]) + 1
            names[key] = f"{match['head']}.layers.{index}.{match['p']}"
        else:
            names[key] = _rename(key, _BACKWARD) or key
    return names


def rename_segment_anything_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename segment-anything / MedSAM keys to transformers ``SamModel`` keys.

    ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`` fills both
    ``prompt_encoder.shared_embedding.positional_embedding`` and
    ``shared_image_embedding.positional_embedding`` (the same tensor). ``*.num_batches_tracked``,
    ``pixel_mean`` and ``pixel_std`` are dropped. Keys that match nothing (e.g. LiteMedSAM's
    TinyViT encoder) are returned unchanged, so a strict load names them. Note that LiteMedSAM's
    ``image_encoder.neck.*`` has SAM's names, so it becomes ``vision_encoder.neck.*``: rename only
    the ``prompt_encoder.*`` / ``mask_decoder.*`` part when the encoder is not a SAM ViT.
    """
    return {
        new: state_dict[key] for key, new_keys in _transformers_names(state_dict).items() for new in new_keys
    }


def segment_anything_state_dict(sam: SamModel) -> dict[str, Tensor]:
    """A ``SamModel``'s weights under the original segment-anything key names.

    ``torch.save(segment_anything_state_dict(sam), "model.pth")`` writes a checkpoint that
    segment-anything and :func:`load_segment_anything_checkpoint` read.
    """
    return _to_original_keys(sam.state_dict())


def _to_original_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {old: state_dict[key] for key, old in _original_names(state_dict).items() if old is not None}


# ---------------------------------------------------------------------------------------------
# Config from tensor shapes

_SAM_HEADS = {768: 12, 1024: 16, 1280: 16}  # ViT-B / L / H
_MODEL = "SAM / MedSAM ViT"


def _require(state_dict: Mapping[str, Tensor], key: str) -> Tensor:
    return require(state_dict, key, _MODEL)


def _with_original_names(state_dict: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """Accept transformers-named state dicts too, by renaming them to the original names."""
    if any(key.startswith("vision_encoder.") for key in state_dict):
        return _to_original_keys(state_dict)
    return state_dict


def _reject_lite_medsam(state_dict: Mapping[str, Tensor]) -> None:
    if any(key.startswith("image_encoder.layers.") for key in state_dict):
        raise ValueError(
            "This is a LiteMedSAM (TinyViT) checkpoint, not a segment-anything ViT one; "
            "load it with the LiteMedSAM loader."
        )


def default_num_heads(hidden_size: int) -> int:
    """SAM's head count for a ViT width: B 12, L 16, H 16; other widths ``max(1, width // 64)``."""
    return _SAM_HEADS.get(hidden_size, max(1, hidden_size // 64))


def sam_config_from_state_dict(state_dict: Mapping[str, Tensor]) -> SamConfig:
    """Build the ``SamConfig`` that a segment-anything-format state dict was trained with.

    Everything is read from tensor shapes: depth, width, patch and image size, MLP width,
    output channels, window size and global-attention blocks (from the ``rel_pos_h`` lengths:
    ``2 * grid - 1`` rows for global blocks, ``2 * window - 1`` for windowed ones), head count
    (``hidden_size / rel_pos_h.shape[1]``; without relative positions :func:`default_num_heads`),
    and the prompt encoder's and mask decoder's sizes. The decoder's head count is not in the
    shapes: SAM's 8 is used.
    """
    from transformers import SamConfig, SamVisionConfig

    _reject_lite_medsam(state_dict)
    sd = _with_original_names(state_dict)

    patch_weight = _require(sd, "image_encoder.patch_embed.proj.weight")
    hidden_size, num_channels, patch_size = (int(n) for n in patch_weight.shape[:3])
    depth = count_indices(sd, r"image_encoder\.blocks\.(\d+)\..+")
    if depth == 0:
        raise ModelLoadError("The checkpoint's ViT image encoder has no blocks.")
    pos_embed = sd.get("image_encoder.pos_embed")
    rel_pos = {
        i: sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"]
        for i in range(depth)
        if f"image_encoder.blocks.{i}.attn.rel_pos_h" in sd
    }
    rel_sizes = {i: (int(t.shape[0]) + 1) // 2 for i, t in rel_pos.items()}
    if pos_embed is not None:
        grid = int(pos_embed.shape[1])
    elif rel_sizes:
        grid = max(rel_sizes.values())
    else:
        grid = 1024 // patch_size
    if rel_pos:
        global_attn = [i for i, size in rel_sizes.items() if size == grid]
        windows = {size for size in rel_sizes.values() if size != grid}
        if len(windows) > 1:
            raise ModelLoadError(f"The checkpoint's ViT blocks use several window sizes {windows}.")
        window_size = windows.pop() if windows else 14
        num_heads = hidden_size // int(next(iter(rel_pos.values())).shape[1])
    else:
        step = max(1, depth // 4)
        global_attn = [i for i in range(depth) if (i + 1) % step == 0]
        window_size = 14
        num_heads = default_num_heads(hidden_size)
        logger.warning(
            "Checkpoint has no relative positions: assuming %d heads and global blocks %s",
            num_heads,
            global_attn,
        )
    gaussian = _require(sd, GAUSSIAN_KEY)
    vision = SamVisionConfig(
        hidden_size=hidden_size,
        num_hidden_layers=depth,
        num_attention_heads=num_heads,
        num_channels=num_channels,
        image_size=grid * patch_size,
        patch_size=patch_size,
        mlp_dim=int(_require(sd, "image_encoder.blocks.0.mlp.lin1.weight").shape[0]),
        qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in sd,
        use_abs_pos=pos_embed is not None,
        use_rel_pos=bool(rel_pos),
        window_size=window_size,
        global_attn_indexes=global_attn,
        output_channels=int(_require(sd, "image_encoder.neck.0.weight").shape[0]),
        num_pos_feats=int(gaussian.shape[1]),
    )
    prompt, decoder = prompt_decoder_configs(sd, grid * patch_size, patch_size, model=_MODEL)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


# ---------------------------------------------------------------------------------------------
# Family rule

_OFFICIAL_SAM_VIT_B = "sam_vit_b_01ec64.pth"


def infer_family_from_checkpoint(
    state_dict_or_width: Mapping[str, Tensor] | int, filename: str | PathLike[str] | None = None
) -> Family:
    """``"sam"`` or ``"medsam"`` for a ViT checkpoint, from its width and file name.

    MedSAM exists only as ViT-B, so widths of 1024 and more (ViT-L/H) are SAM; the official SAM
    ViT-B file ``sam_vit_b_01ec64.pth`` is SAM; every other ViT-B-like checkpoint is MedSAM.
    """
    if isinstance(state_dict_or_width, int):
        width = state_dict_or_width
    else:
        sd = _with_original_names(state_dict_or_width)
        width = int(_require(sd, "image_encoder.patch_embed.proj.weight").shape[0])
    if width >= 1024:
        return "sam"
    if filename is not None and Path(filename).name.lower() == _OFFICIAL_SAM_VIT_B:
        return "sam"
    return "medsam"


# ---------------------------------------------------------------------------------------------
# Loading


def load_segment_anything_checkpoint(
    path: str | PathLike[str],
    family: Family | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    config: SamConfig | None = None,
) -> LoadedModel:
    """Load an original segment-anything / MedSAM ViT ``.pth`` into a transformers ``SamModel``.

    Only ``torch.load(weights_only=True)`` is used. Raises ``FileNotFoundError`` for a missing
    path, ``ValueError`` for a LiteMedSAM checkpoint, and ``ModelLoadError`` for a file that is
    corrupt, needs pickle, or does not match a SAM ViT model. ``family=None`` applies
    :func:`infer_family_from_checkpoint`. ``config`` replaces the one read from the shapes
    (:func:`sam_config_from_state_dict`), e.g. for a mask decoder with other than 8 heads.
    """
    from transformers import SamModel

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint file at {path}")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder; expected a segment-anything .pth file.")
    if family is not None and family_spec(family).encoder != "ViT":
        raise ValueError(f"family must be one of {', '.join(families_with('ViT'))} or None, not {family!r}")
    state_dict = read_state_dict(path)
    _reject_lite_medsam(state_dict)
    state_dict = dict(_with_original_names(state_dict))
    if config is None:
        config = sam_config_from_state_dict(state_dict)
    if family is None:
        family = infer_family_from_checkpoint(config.vision_config.hidden_size, path)
        logger.info("%s: ViT width %d -> family %r", path.name, config.vision_config.hidden_size, family)

    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        sam = SamModel(config)
    expected = sam.state_dict()
    renamed_from = _transformers_names(state_dict)
    renamed = rename_segment_anything_keys(state_dict)
    names = {new: old for old, news in renamed_from.items() for new in news}
    names.update({k: v for k, v in _original_names(expected).items() if k not in names and v})
    problems = state_dict_mismatches(renamed, expected, names)
    if problems:
        raise ModelLoadError(
            f"{path.name} does not match a SAM ViT model ({'; '.join(problems)}). "
            "Is it a complete segment-anything / MedSAM checkpoint?"
        )
    sam.load_state_dict(renamed, strict=True, assign=True)
    sam.to(device=device, dtype=dtype).eval().requires_grad_(False)
    encoder = SamImageEncoder(sam).eval()
    return LoadedModel(
        family=family,
        sam=sam,
        encoder=encoder,
        name=path.stem,
        device=torch.device(device),
        dtype=dtype,
    )
