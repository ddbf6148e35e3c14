"""What an object is, in DICOM's codes: the segmented property category and type for its name.

Names of common organs map to their SNOMED CT codes in DICOM's CID 7151 ("Segmentation Property
Types for Anatomical Structure", as pydicom ships it), with the category "Anatomical Structure"
(CID 7150). Any other name is SCT 85756007 "Tissue" for both. DICOM Segmentations and the
terminology tags of ``.seg.nrrd`` files take their codes from here.
"""

from __future__ import annotations

import re

from pydicom.sr.coding import Code

#: Organ name (lower case, no laterality) -> pydicom keyword of its code in CID 7151.
ORGANS: dict[str, str] = {
    "liver": "Liver",
    "spleen": "Spleen",
    "kidney": "Kidney",
    "pancreas": "Pancreas",
    "stomach": "Stomach",
    "gallbladder": "Gallbladder",
    "aorta": "Aorta",
    "bladder": "Bladder",
    "urinary bladder": "Bladder",
    "lung": "Lung",
    "heart": "Heart",
    "esophagus": "Esophagus",
    "duodenum": "Duodenum",
    "colon": "Colon",
    "small bowel": "SmallIntestine",
    "small intestine": "SmallIntestine",
    "rectum": "Rectum",
    "prostate": "Prostate",
    "uterus": "Uterus",
    "brain": "Brain",
    "adrenal gland": "AdrenalGland",
    "thyroid": "Thyroid",
    "thyroid gland": "Thyroid",
    "trachea": "Trachea",
    "inferior vena cava": "InferiorVenaCava",
    "portal vein": "PortalVein",
    "spinal cord": "SpinalCord",
    "vertebra": "Vertebra",
    "rib": "Rib",
    "sacrum": "Sacrum",
    "femur": "Femur",
    "humerus": "Humerus",
    "sternum": "Sternum",
    "lymph node": "LymphNode",
}
_LATERALITY = re.compile(r"\b(left|right)\b")


def property_codes(name: str) -> tuple[Code, Code]:
    """(category, type) codes for an object called ``name`` ("kidney_right" -> Kidney)."""
    from pydicom.sr.codedict import codes

    words = " ".join(_LATERALITY.sub(" ", name.lower().replace("_", " ")).split())
    keyword = ORGANS.get(words)
    if keyword is None:
        return codes.cid7150.Tissue, codes.cid7150.Tissue
    return codes.cid7150.AnatomicalStructure, getattr(codes.cid7151, keyword)


def terminology_tag(name: str) -> str:
    """The ``TerminologyEntry`` value 3D Slicer reads from a ``.seg.nrrd`` segment's tags."""

    def triplet(code: Code) -> str:
        return f"{code.scheme_designator}^{code.value}^{code.meaning}"

    category, kind = property_codes(name)
    return (
        f"Segmentation category and type - DICOM master list~{triplet(category)}~{triplet(kind)}"
        "~^^~Anatomic codes - DICOM master list~^^~^^"
    )
