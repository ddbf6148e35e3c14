"""The loaded-model bundle the predictor uses; the model families are in :mod:`.families`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from napari_medsam.models.families import Family, FamilySpec, family_spec

if TYPE_CHECKING:
    import torch
    from transformers import SamModel

#: What runs a model's image encoder (``"auto"`` chooses one: :mod:`napari_medsam.models.backends`).
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")


@dataclass(eq=False)
class LoadedModel:
    """A model ready for inference.

    ``encoder`` maps ``pixel_values`` (B, 3, S, S) to image embeddings (B, 256, 64, 64);
    ``sam`` holds the prompt encoder and mask decoder used with those embeddings; ``weights`` is
    a digest of the files the weights came from (:func:`~napari_medsam.models.identity.weights_digest`);
    ``backend`` runs the encoder: ``"torch"``, ``"onnxruntime"`` or ``"openvino"``
    (:mod:`napari_medsam.models.backends`).
    """

    family: Family
    sam: SamModel
    encoder: torch.nn.Module
    name: str
    device: torch.device
    dtype: torch.dtype
    weights: str = ""
    backend: str = "torch"

    @property
    def spec(self) -> FamilySpec:
        """The facts of the model's family (input size, pre- and post-processing, prompts)."""
        return family_spec(self.family)

    @property
    def identity(self) -> str:
        """What an embedding of this model depends on: its weights (not their path), family and dtype.

        Models built in memory (no weights file) fall back to their name. An encoder run by ONNX
        Runtime or OpenVINO adds its backend: its embeddings differ from PyTorch's by float rounding,
        and a cache or store hit must give exactly the masks of the first run.
        """
        weights = self.weights or f"name:{self.name}"
        identity = f"{weights}|{self.family}|{str(self.dtype).removeprefix('torch.')}"
        return identity if self.backend == "torch" else f"{identity}|{self.backend}"
