"""What the segment-anything and LiteMedSAM checkpoint loaders share.

Reading a file, the prompt encoder / mask decoder configs read from tensor shapes, comparing keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from napari_medsam.base.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import SamMaskDecoderConfig, SamPromptEncoderConfig

# The prompt encoder's random Fourier matrix: one tensor in segment-anything, two tied copies in
# transformers (the prompt encoder's and the image-wide positional embedding's).
GAUSSIAN_KEY = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
GAUSSIAN_TARGETS = (
    "prompt_encoder.shared_embedding.positional_embedding",
    "shared_image_embedding.positional_embedding",
)


def count_indices(state_dict: Mapping[str, Tensor], pattern: str) -> int:
    """1 + the largest index captured by ``pattern`` (a gap then shows up as missing keys)."""
    regex = re.compile(pattern)
    return 1 + max((int(m[1]) for key in state_dict if (m := regex.fullmatch(key))), default=-1)


def require(state_dict: Mapping[str, Tensor], key: str, model: str) -> Tensor:
    """``state_dict[key]``, or ``ModelLoadError`` saying the checkpoint is not a ``model`` one."""
    if key not in state_dict:
        raise ModelLoadError(f"The checkpoint has no '{key}': it is not a {model} model.")
    return state_dict[key]


def prompt_decoder_configs(
    state_dict: Mapping[str, Tensor], image_size: int, patch_size: int, model: str
) -> tuple[SamPromptEncoderConfig, SamMaskDecoderConfig]:
    """The prompt encoder and mask decoder configs a segment-anything-named state dict was made with.

    Every size is read from tensor shapes; the decoder's head count is not visible in them and
    stays transformers' default, 8, which every SAM / MedSAM / LiteMedSAM decoder uses.
    ``image_size / patch_size`` is the side of the image embedding grid.
    """
    from transformers import SamMaskDecoderConfig, SamPromptEncoderConfig

    def size(key: str, dim: int) -> int:
        return int(require(state_dict, key, model).shape[dim])

    prompt = SamPromptEncoderConfig(
        hidden_size=size("prompt_encoder.no_mask_embed.weight", 1),
        image_size=image_size,
        patch_size=patch_size,
        mask_input_channels=size("prompt_encoder.mask_downscaling.3.weight", 0),
        num_point_embeddings=count_indices(state_dict, r"prompt_encoder\.point_embeddings\.(\d+)\..+"),
    )
    hidden = size("mask_decoder.iou_token.weight", 1)
    cross_attention = size("mask_decoder.transformer.final_attn_token_to_image.q_proj.weight", 0)
    decoder = SamMaskDecoderConfig(
        hidden_size=hidden,
        num_hidden_layers=count_indices(state_dict, r"mask_decoder\.transformer\.layers\.(\d+)\..+"),
        mlp_dim=size("mask_decoder.transformer.layers.0.mlp.lin1.weight", 0),
        attention_downsample_rate=hidden // cross_attention,
        num_multimask_outputs=size("mask_decoder.mask_tokens.weight", 0) - 1,
        iou_head_depth=count_indices(state_dict, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\..+"),
        iou_head_hidden_dim=size("mask_decoder.iou_prediction_head.layers.0.weight", 0),
    )
    return prompt, decoder


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """``torch.load`` with ``weights_only=True``; unwrap ``model`` / ``state_dict`` nesting."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unreadable files
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe:
            raise ModelLoadError(
                f"{path.name} stores Python objects ({unsafe[1]}) that only pickle can load, "
                "and napari-medsam does not run pickle code from files. Re-save the weights "
                "alone where the file was made: torch.save(model.state_dict(), 'weights.pth')."
            ) from error
        raise ModelLoadError(
            f"{path.name} is not a readable PyTorch checkpoint (corrupt or truncated file?): "
            f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
        ) from error
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ModelLoadError(f"{path.name} does not hold a state dict (name -> tensor).")
    state_dict = {str(k): v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    if len(state_dict) != len(checkpoint):
        bad = [k for k, v in checkpoint.items() if not isinstance(v, Tensor)][:5]
        raise ModelLoadError(f"{path.name} holds entries that are not tensors: {bad}")
    if all(key.startswith("module.") for key in state_dict):  # saved from DataParallel
        state_dict = {key.removeprefix("module."): v for key, v in state_dict.items()}
    return state_dict


def state_dict_mismatches(
    renamed: Mapping[str, Tensor], expected: Mapping[str, Tensor], names: Mapping[str, str] | None = None
) -> list[str]:
    """Human-readable differences between a renamed checkpoint and a model's state dict.

    ``names`` maps a model key to the checkpoint's original name, shown instead where given.
    """
    names = names or {}

    def listing(keys: list[str]) -> str:
        shown = ", ".join(names.get(key) or key for key in keys[:8])
        return shown + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

    missing = [key for key in expected if key not in renamed]
    unexpected = [key for key in renamed if key not in expected]
    wrong = [
        f"{names.get(key) or key} {tuple(renamed[key].shape)} (expected {tuple(value.shape)})"
        for key, value in expected.items()
        if key in renamed and renamed[key].shape != value.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listing(unexpected)}")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong[:8]))
    return problems
