"""The real CT in the repository for tests and benchmarks: volumes, reference labels, boxes.

The CT is the package sample (TotalSegmentator's ``example_ct_sm``); its labels and the DICOM
series are in ``tests/data`` (credit and licence in its README). Nothing outside the clone is read.

Also an independent restatement of LiteMedSAM's published inference (CVPR24_LiteMedSAM_infer),
step by step, for parity tests: it shares no code with napari_medsam's preprocessing.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from napari_medsam.io.samples import ABDOMINAL_CT

DATA = Path(__file__).resolve().parent / "data"
#: TotalSegmentator's example_ct_sm: the package's abdominal CT sample, the same file.
CT_SM = ABDOMINAL_CT
SEG_SM = DATA / "example_seg.nii.gz"
DICOM_SERIES = DATA / "example_ct_dicom"
SEG_DICOM = DATA / "example_seg_dicom.nii.gz"
BRAIN_MR = DATA / "brain-mr-tumour"
CT_SPLEEN = DATA / "ct-spleen"
LUNG_NODULE = DATA / "ct-lung-nodule"
PROSTATE_LESION = DATA / "mr-prostate-lesion"
#: Organs judged on real anatomy (label ids of the TotalSegmentator v2 "total" map).
ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6, "aorta": 52}


@functools.cache
def ct_sm() -> tuple[np.ndarray, np.ndarray]:
    """example_ct_sm (HU, (30, 101, 122)) and its reference labels, on the stored voxel grid."""
    import SimpleITK as sitk

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(CT_SM)))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(SEG_SM)))
    return ct, seg


@functools.cache
def ct_dicom() -> tuple[np.ndarray, np.ndarray]:
    """The DICOM series (HU, (20, 512, 512)) and its labels resampled onto it (nearest neighbour)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(DICOM_SERIES)))
    image = reader.Execute()
    label = sitk.ReadImage(str(SEG_DICOM))
    resampled = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(resampled)


@functools.cache
def brain_mr() -> tuple[np.ndarray, np.ndarray]:
    """Brain MR T1 after gadolinium ((25, 256, 256), 6.5 mm slices) and its tumour label (1, slices 11-17)."""
    return _pair(BRAIN_MR / "brain1_image.nrrd", BRAIN_MR / "brain1_label.nrrd")


@functools.cache
def ct_spleen() -> tuple[np.ndarray, np.ndarray]:
    """Abdominal CT in HU ((26, 166, 164), 5 mm slices) and its manual spleen label (1, slices 3-22)."""
    return _pair(CT_SPLEEN / "sub-spleen2_ct.nii.gz", CT_SPLEEN / "sub-spleen2_ct_seg-manual.nii.gz")


@functools.cache
def lung_nodule() -> tuple[np.ndarray, np.ndarray]:
    """Chest CT slab in HU ((16, 512, 512), 0.70 mm, 2.5 mm slices) and its nodule (1, slices 3-10)."""
    return _pair(LUNG_NODULE / "lidc-idri-0001_ct.nii.gz", LUNG_NODULE / "lidc-idri-0001_nodule.nii.gz")


@functools.cache
def prostate_lesion() -> tuple[np.ndarray, np.ndarray]:
    """Prostate MR, T2-weighted ((19, 384, 384), 0.5 mm, 3 mm slices) and its lesion (1, slices 8-11)."""
    return _pair(
        PROSTATE_LESION / "prostatex-0000_t2w.nii.gz", PROSTATE_LESION / "prostatex-0000_lesion.nii.gz"
    )


def _pair(image: Path, label: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image and its label file as (z, y, x) arrays, the label as uint8."""
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    return sitk.GetArrayFromImage(sitk.ReadImage(str(image))), labels.astype(np.uint8)


def label_names() -> dict[int, str]:
    """Label id -> name of the reference labels."""
    return {int(k): v for k, v in json.loads((DATA / "labels.json").read_text()).items()}


def oracle_box(mask: np.ndarray, margin: int = 3) -> tuple[float, float, float, float] | None:
    """The mask's bounding box grown by ``margin`` px, clipped: (x0, y0, x1, y1); None if empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    height, width = mask.shape
    return (
        float(max(cols.min() - margin, 0)),
        float(max(rows.min() - margin, 0)),
        float(min(cols.max() + margin, width - 1)),
        float(min(rows.max() + margin, height - 1)),
    )


def soft_tissue_uint8(hu: np.ndarray) -> np.ndarray:
    """MedSAM's CT preprocessing with the soft-tissue window: clip to (-160, 240), scale to 0..255."""
    clipped = np.clip(hu.astype(np.float64), -160.0, 240.0)
    return ((clipped + 160.0) / 400.0 * 255.0).astype(np.uint8)


def official_lite_medsam(sam, encoder, image_uint8: np.ndarray, boxes: list) -> list[np.ndarray]:
    """Masks of LiteMedSAM's published 2D inference for int boxes on a uint8 slice.

    Every step as CVPR24_LiteMedSAM_infer writes it: 3 channels; ``resize_longest_side`` with
    ``int(side * scale + 0.5)`` and ``cv2.INTER_AREA``; min-max; zero pad to 256 x 256; boxes
    through ``np.zeros_like`` of the int box and ``int(v * 256 / max(H, W))``; the decoder's
    256 x 256 logits cropped to the resized part, bilinear up to (H, W), sigmoid, > 0.5.
    """
    import cv2
    import torch
    import torch.nn.functional as F

    img_3c = np.repeat(image_uint8[:, :, None], 3, axis=-1)
    height, width = img_3c.shape[:2]
    scale = 256 * 1.0 / max(height, width)
    newh, neww = int(height * scale + 0.5), int(width * scale + 0.5)
    img_256 = cv2.resize(img_3c, (neww, newh), interpolation=cv2.INTER_AREA)
    img_256_norm = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), a_min=1e-8, a_max=None)
    padded = np.pad(img_256_norm, ((0, 256 - newh), (0, 256 - neww), (0, 0)))
    tensor = torch.tensor(padded).float().permute(2, 0, 1).unsqueeze(0)
    masks = []
    with torch.inference_mode():
        embedding = encoder(tensor)
        for box in boxes:
            box = np.asarray(box, dtype=np.int64)
            box256 = np.zeros_like(box)
            for i in range(len(box)):
                box256[i] = int(box[i] * 256 / max(height, width))
            box_torch = torch.as_tensor(box256[None, None, ...], dtype=torch.float)
            out = sam(image_embeddings=embedding, input_boxes=box_torch, multimask_output=False)
            logits = out.pred_masks[0, 0][None].float()[..., :newh, :neww]
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            masks.append((torch.sigmoid(logits)[0, 0] > 0.5).numpy())
    return masks
