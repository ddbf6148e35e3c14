"""One :class:`FamilySpec` per model family: every fact in which MedSAM, SAM and LiteMedSAM differ.

The rest of the package asks the spec (``family_spec(model.family)``, ``LoadedModel.spec``) and
never compares a family's name: adding a family is one spec here (its procedures, when new, in
:mod:`napari_medsam.models.preprocessing`) and a loader (``docs/ARCHITECTURE.md``, "Where to
add"). The facts are those of each family's published inference (docs/preprocessing.md); the tests hold
each family's preprocessing against an independent re-statement of it.

Pure data: this module imports nothing of the package, so anything may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["medsam", "sam", "lite-medsam"]
#: The image encoders the families use: LiteMedSAM's TinyViT, or a ``SamModel``'s ViT.
Encoder = Literal["TinyViT", "ViT"]
#: How a slice is resized to the model input (:data:`napari_medsam.models.preprocessing.RESIZES`).
Resize = Literal["bicubic", "bilinear", "area"]
#: How resized grey levels become model input (:data:`~napari_medsam.models.preprocessing.NORMALISES`).
Normalise = Literal["uint8 min-max", "rounded ImageNet"]
#: How image pixels scale to model-input pixels (:func:`~napari_medsam.models.preprocessing.prompt_scale`).
PromptScale = Literal["per axis", "longest side"]
#: How low-resolution logits become a mask (:data:`~napari_medsam.models.preprocessing.MASK_OUTPUTS`).
MaskOutput = Literal["sigmoid, upsample", "upsample, crop, resize, > 0", "crop, upsample, sigmoid"]


@dataclass(frozen=True)
class FamilySpec:
    """What napari-medsam needs to know of a model family.

    - ``input_size``: the side of the square model input. It is also the scale at which
      :mod:`napari_medsam.base.zoom` judges a box small (the zoom of small objects).
    - ``keeps_aspect``: the longest side goes to ``input_size`` and the rest is zero-padded at the
      bottom and right; False: the slice is stretched to the square (no padding).
    - ``resize``, ``normalise``: the resize and the step from resized grey levels to model input.
    - ``prompt_scale``: image pixels to model-input pixels, per axis (resized / original size)
      or by the longest side's ratio on both axes; ``truncate_boxes``: boxes are truncated to
      whole model-input pixels after scaling.
    - ``mask_output``: the order of upsampling, cropping and thresholding of the mask decoder's
      256 x 256 logits (the orders differ on 0.5-4 % of pixels: each family keeps its own).
    - ``boxes_only``: trained on boxes only: clicks without a box get a warning, and one click
      never asks for several candidate masks.
    - ``previous_logits``: whether propagation feeds the previous slice's logits back as
      ``mask_input`` by default.
    - ``encoder``: the image encoder's architecture: which weights can load as this family, and
      what the ONNX Runtime and OpenVINO backends export (TinyViT itself, or the ``SamModel``'s ViT).
    """

    name: Family
    input_size: int
    keeps_aspect: bool
    resize: Resize
    normalise: Normalise
    prompt_scale: PromptScale
    truncate_boxes: bool
    mask_output: MaskOutput
    boxes_only: bool
    previous_logits: bool
    encoder: Encoder


MEDSAM = FamilySpec(
    name="medsam",
    input_size=1024,
    keeps_aspect=False,  # stretched to 1024 x 1024, as MedSAM was trained
    resize="bicubic",
    normalise="uint8 min-max",
    prompt_scale="per axis",
    truncate_boxes=False,
    mask_output="sigmoid, upsample",
    boxes_only=True,
    previous_logits=False,  # never trained with mask prompts
    encoder="ViT",
)
SAM = FamilySpec(
    name="sam",
    input_size=1024,
    keeps_aspect=True,
    resize="bilinear",
    normalise="rounded ImageNet",
    prompt_scale="per axis",
    truncate_boxes=False,
    mask_output="upsample, crop, resize, > 0",
    boxes_only=False,
    previous_logits=False,  # untested here (no SAM weights offline): off until measured
    encoder="ViT",
)
LITE_MEDSAM = FamilySpec(
    name="lite-medsam",
    input_size=256,
    keeps_aspect=True,
    resize="area",  # OpenCV's INTER_AREA on the uint8 slice, as CVPR24_LiteMedSAM_infer
    normalise="uint8 min-max",
    prompt_scale="longest side",
    truncate_boxes=True,  # int() of the scaled box, as published
    mask_output="crop, upsample, sigmoid",
    boxes_only=True,
    previous_logits=False,  # never trained with mask prompts
    encoder="TinyViT",
)

#: Every family, by name.
FAMILY_SPECS: dict[str, FamilySpec] = {spec.name: spec for spec in (MEDSAM, SAM, LITE_MEDSAM)}
FAMILIES: tuple[Family, ...] = tuple(spec.name for spec in FAMILY_SPECS.values())


def family_spec(family: str) -> FamilySpec:
    """The spec of ``family``; ValueError naming the families for any other name."""
    spec = FAMILY_SPECS.get(str(family))
    if spec is None:
        raise ValueError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}")
    return spec


def families_with(encoder: Encoder) -> tuple[Family, ...]:
    """The families whose image encoder is ``encoder`` (the weights of that architecture run as them)."""
    return tuple(spec.name for spec in FAMILY_SPECS.values() if spec.encoder == encoder)
