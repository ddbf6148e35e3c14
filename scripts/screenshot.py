"""Screenshot of the MedSAM widget on the shipped abdominal CT -> docs/images/widget.png.

Opens the sample as ``scripts/demo_viewer.py`` does, boxes the liver on one slice (the reference
liver's box + 3 px, named "liver" by the box's ``name`` feature), segments and propagates it with
the bundled LiteMedSAM offline, and waits for the objects table. Needs a display: on a headless
machine run it as ``xvfb-run -a python scripts/screenshot.py`` (not QT_QPA_PLATFORM=offscreen:
napari's canvas needs OpenGL). Prints the Dice of the result against the reference liver.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from demo_viewer import DEMO_SLICE, open_demo

ROOT = Path(__file__).resolve().parents[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs/images/widget.png")
    parser.add_argument("--size", type=int, nargs=2, default=(1500, 980), metavar=("W", "H"))
    args = parser.parse_args()

    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    from napari_medsam.base.boxes import expand_box, mask_box
    from napari_medsam.io.samples import ABDOMINAL_CT_LIVER
    from napari_medsam.io.volumes import read_volume
    from napari_medsam.layers.prompt_layers import set_features

    viewer, widget, boxes, clicks = open_demo(show=True)
    viewer.window._qt_window.resize(*args.size)
    widget.model, widget.device = "lite-medsam", "cpu"
    liver = read_volume(ABDOMINAL_CT_LIVER)[0] > 0
    z = DEMO_SLICE
    x0, y0, x1, y1 = expand_box(mask_box(liver[z]), liver.shape[1:], fraction=0.0, pixels=3.0)
    boxes.add_rectangles(np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]]))
    features = boxes.features.copy()
    features["name"] = ["liver"]  # the box's name feature names its object
    set_features(boxes, features)

    start = time.perf_counter()
    (label_id,) = widget.segment()
    mask = widget.labels_layer.data == label_id
    print(f"segment {time.perf_counter() - start:.2f} s, Dice {dice(mask[z], liver[z]):.3f} on slice {z}")
    start = time.perf_counter()
    widget.propagate()
    mask = widget.labels_layer.data == label_id
    print(f"propagate {time.perf_counter() - start:.1f} s, 3D Dice {dice(mask, liver):.3f}")

    boxes.mode = "select"
    viewer.layers.selection.active = clicks
    QApplication.processEvents()  # let the window take its size before fitting the view
    viewer.reset_view()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [s.name for s in widget.objects.stats] != ["liver"]:
        QApplication.processEvents()
        time.sleep(0.05)
    print("table:", [s.row() for s in widget.objects.stats])
    picture = viewer.screenshot(canvas_only=False, flash=False)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    imsave(args.output, picture, check_contrast=False)
    print(f"wrote {args.output} ({picture.shape[1]} x {picture.shape[0]})")
    viewer.close()


if __name__ == "__main__":
    main()
