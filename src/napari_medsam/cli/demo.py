"""``napari-medsam demo``: segment the liver of the shipped abdominal CT offline, report Dice and timings.

A box around the reference liver (+3 px) on its largest slice is segmented with the bundled
LiteMedSAM, then propagated through the volume; both are scored against the reference label
that ships with the sample (TotalSegmentator's, Apache-2.0).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_medsam.cli.common import add_model_options, fetch_model

#: Pixels the demo's box leaves around the reference organ on each side.
BOX_MARGIN = 3.0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``demo`` subcommand."""
    demo = commands.add_parser(
        "demo", help="segment the liver of the shipped abdominal CT offline and report Dice and timings"
    )
    demo.add_argument(
        "-o", "--output", default="medsam_demo_liver.nii.gz", help="where to write the liver labels"
    )
    add_model_options(demo)
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Segment the reference liver's box on one slice, propagate it, print Dice and timings."""
    from napari_medsam.base.boxes import expand_box, mask_box
    from napari_medsam.base.metrics import dice
    from napari_medsam.base.windows import training_window
    from napari_medsam.engine.predictor import MedSamPredictor
    from napari_medsam.engine.propagation import label_volume
    from napari_medsam.io.files import write_mask
    from napari_medsam.io.samples import ABDOMINAL_CT, ABDOMINAL_CT_LIVER
    from napari_medsam.io.volumes import read_volume

    ct, geometry = read_volume(ABDOMINAL_CT)
    liver = read_volume(ABDOMINAL_CT_LIVER)[0] > 0
    z = int(np.argmax(liver.sum(axis=(1, 2))))
    box = expand_box(mask_box(liver[z]), ct.shape[1:], fraction=0.0, pixels=BOX_MARGIN)
    choice = training_window(ct, geometry.modality)
    fetch_model(args)
    start = time.perf_counter()
    predictor = MedSamPredictor.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, backend=args.backend
    )
    loaded = time.perf_counter()
    predictor.set_image(ct[z], window=choice.window)
    encoded = time.perf_counter()
    mask = predictor.predict(box=box).mask
    decoded = time.perf_counter()
    labels = label_volume(predictor, ct, z, [mask], window=choice.window)
    propagated = time.perf_counter()
    out = Path(args.output)
    write_mask(out, labels, geometry, names={1: "liver"}, model=args.model)
    depth, height, width = ct.shape
    print(f"model      {args.model} ({predictor.family}) on {predictor.model.device}")
    print(f"image      abdominal CT (TotalSegmentator) {width} x {height} x {depth}, 3 mm")
    print(f"window     {choice.describe()}")
    x0, y0, x1, y1 = box
    print(f"box        slice {z}: x0={x0:.0f} y0={y0:.0f} x1={x1:.0f} y1={y1:.0f} (the liver + 3 px)")
    print(
        f"timings    load {loaded - start:.2f} s, encode {encoded - loaded:.2f} s, "
        f"box->mask {1000 * (decoded - encoded):.0f} ms, propagate {propagated - decoded:.1f} s"
    )
    print(f"dice       {dice(mask, liver[z]):.3f} on slice {z} against the reference liver")
    print(f"dice 3D    {dice(labels == 1, liver):.3f} after propagation through {depth} slices")
    print(f"labels     {out}")
    return 0
