"""The fidelity guard on real CT and MR for every encoder path ``auto`` may choose (issues 27, 33).

    python benchmarks/bench_fidelity.py [--step N]            # the backends auto chooses between
    python benchmarks/bench_fidelity.py --parts               # bfloat16 per part: which one breaks

For every labelled slice (every ``--step``-th) of the shared real volumes, CT and MR, organs and
lesions (``/work/shared/data``: TotalSegmentator's CT organs, MSD spleen CT, brain MR tumour,
spinal-cord MR, LIDC lung nodule CT, ProstateX lesion MR, NSCLC lung tumour, cord and lungs CT),
a box from the label (+3 px) is segmented by LiteMedSAM float32 through PyTorch's plain
operators (the reference) and through each candidate path; the guard passes when the masks' IoU
has mean >= 0.99 and worst >= 0.97 over all boxes. Candidates: PyTorch float32 with the fused
oneDNN calls (``models/onednn``) and OpenVINO float32 (where installed): the two ``auto`` times
against each other. With ``--parts`` (on a CPU with native bfloat16): each part of the model in
bfloat16 alone (patch embedding, each TinyViT stage with its patch merging, the neck, the
decoder), and the whole encoder. Prints one table, with the CPU and the load.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Iterator
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from napari_medsam.base.metrics import iou
from napari_medsam.base.windows import training_window
from napari_medsam.engine.predictor import MedSamPredictor
from napari_medsam.models import LoadedModel, onednn
from napari_medsam.models.backends import openvino_installed
from napari_medsam.models.devices import cpu_has_native_bfloat16
from napari_medsam.models.loading import load_model, with_backend
from napari_medsam.models.tinyvit import TinyViT

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_inference import machine, plain_ops, print_table

DATA = "/work/shared/data"
#: (name, modality, image, labels, label ids judged)
VOLUMES = [
    ("brain MR T1 Gd tumour", "MR", "more/brain-mr-tumour/brain1_image.nrrd",
     "more/brain-mr-tumour/brain1_label.nrrd", (1,)),
    ("spine MR T2 cord", "MR", "more/spine-mr-cord/sub-unf01_T2w.nii.gz",
     "more/spine-mr-cord/sub-unf01_T2w_seg-manual.nii.gz", (1,)),
    ("MSD spleen CT", "CT", "more/ct-spleen/sub-spleen2_ct.nii.gz",
     "more/ct-spleen/sub-spleen2_ct_seg-manual.nii.gz", (1,)),
    ("TotalSegmentator CT organs", "CT", "totalseg/example_ct_sm.nii.gz", "totalseg/example_seg.nii.gz",
     (1, 2, 3, 5, 6, 52)),
    ("LIDC lung nodule CT", "CT", "more/ct-lung-nodule/lidc-idri-0001_ct.nii.gz",
     "more/ct-lung-nodule/lidc-idri-0001_nodule.nii.gz", (1,)),
    ("ProstateX lesion MR", "MR", "more/mr-prostate-lesion/prostatex-0000_t2w.nii.gz",
     "more/mr-prostate-lesion/prostatex-0000_lesion.nii.gz", (1,)),
    ("NSCLC lung tumour, cord, lungs CT", "CT", "more/ct-lung-nsclc/lung1-001_ct.nii.gz",
     "more/ct-lung-nsclc/lung1-001_labels.nii.gz", (1, 2, 3, 4)),
]  # fmt: skip


def read(path: str) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(DATA, path)))


def boxes(labels: np.ndarray, ids: tuple[int, ...], step: int) -> Iterator[tuple[int, list[tuple[int, ...]]]]:
    """(slice, the boxes + 3 px of its judged labels) of every ``step``-th labelled slice."""
    labelled = [z for z in range(len(labels)) if np.isin(labels[z], ids).any()]
    h, w = labels.shape[1:]
    for z in labelled[::step]:
        found = []
        for label in ids:
            rows, cols = np.nonzero(labels[z] == label)
            if len(rows):
                found.append((max(0, cols.min() - 3), max(0, rows.min() - 3), min(w - 1, cols.max() + 3),
                              min(h - 1, rows.max() + 3)))  # fmt: skip
        yield z, found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step", type=int, default=1, help="every N-th labelled slice")
    parser.add_argument("--parts", action="store_true", help="bfloat16 per part of the model instead")
    args = parser.parse_args(argv)
    print(f"fidelity guard: {machine()}")
    base = load_model("lite-medsam", device="cpu", dtype="float32", backend="torch")
    reference = MedSamPredictor(base)
    candidates = part_candidates(base) if args.parts else backend_candidates(base)
    onednn.fused_ops_work()
    scores: dict[str, dict[str, list[float]]] = {n: {} for n in candidates}
    for name, modality, image_path, label_path, ids in VOLUMES:
        volume, labels = read(image_path), read(label_path)
        window = training_window(volume, modality).window
        for z, found in boxes(labels, ids, args.step):
            with plain_ops():
                reference.cache.clear()
                reference.set_image(volume[z], window)
                wanted = [reference.predict(box=box).mask for box in found]
            for candidate, predictor in candidates.items():
                predictor.cache.clear()
                predictor.set_image(volume[z], window)
                for box, want in zip(found, wanted, strict=True):
                    got = predictor.predict(box=box).mask
                    scores[candidate].setdefault(name, []).append(iou(got, want))
        print(f"{name}: {sum(len(s.get(name, [])) for s in scores.values())} masks compared", flush=True)
        report(scores)


def backend_candidates(base: LoadedModel) -> dict[str, MedSamPredictor]:
    """The float32 backends ``auto`` chooses between: PyTorch (fused oneDNN calls) and OpenVINO."""
    candidates = {"torch float32, fused oneDNN calls": MedSamPredictor(base)}
    if openvino_installed():
        candidates["openvino float32"] = MedSamPredictor(with_backend(base, "openvino"))
    return candidates


def part_candidates(base: LoadedModel) -> dict[str, MedSamPredictor]:
    """LiteMedSAM with one part in bfloat16 (each encoder part, the decoder), and the whole encoder."""
    if not cpu_has_native_bfloat16():
        raise SystemExit("--parts needs a CPU with native bfloat16 (AVX512-BF16 or AMX)")
    encoder: TinyViT = base.encoder
    plans = {f"{part} in bfloat16": {part: torch.bfloat16} for part in encoder.part_names()}
    plans["whole encoder in bfloat16"] = dict.fromkeys(encoder.part_names(), torch.bfloat16)
    candidates = {
        name: MedSamPredictor(replace(base, encoder=encoder.with_part_dtypes(plan), name=name))
        for name, plan in plans.items()
    }
    decoder = copy.deepcopy(base.sam).to(torch.bfloat16)  # the model's inputs stay float32
    candidates["decoder in bfloat16"] = MedSamPredictor(replace(base, sam=decoder))
    return candidates


def report(scores: dict[str, dict[str, list[float]]]) -> None:
    """The guard table of the masks compared so far."""
    rows = []
    for candidate, per_volume in scores.items():
        every = [v for values in per_volume.values() for v in values]
        passes = np.mean(every) >= 0.99 and min(every) >= 0.97
        detail = "; ".join(f"{n}: {np.mean(v):.4f} / {min(v):.4f} ({len(v)})" for n, v in per_volume.items())
        rows.append((candidate, f"{np.mean(every):.4f} / {min(every):.4f} ({len(every)})",
                     "pass" if passes else "FAIL", detail))  # fmt: skip
    print_table(
        "Mask IoU against torch float32 with plain operators, a box from the label on real slices",
        ("path", "mean / worst (n)", "guard", "per volume: mean / worst (n)"),
        rows,
    )


if __name__ == "__main__":
    main()
