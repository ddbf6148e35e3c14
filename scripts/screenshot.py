"""Screenshot of the MedSAM widget segmenting the sample CT phantom -> docs/images/widget.png.

Runs the bundled LiteMedSAM offline. Needs a display: on a headless machine run it as
``xvfb-run -a python scripts/screenshot.py`` (not QT_QPA_PLATFORM=offscreen: napari's canvas
needs OpenGL). Prints the Dice of the result against the phantom's true outline.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs/images/widget.png")
    parser.add_argument("--size", type=int, nargs=2, default=(1400, 860), metavar=("W", "H"))
    parser.add_argument(
        "--propagate", action="store_true", help="also propagate the organ through the volume"
    )
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    from napari_medsam._sample_data import PHANTOM, ct_phantom
    from napari_medsam.core.phantoms import ct_phantom_volume

    viewer = napari.Viewer(show=True, title="napari-medsam")
    viewer.window._qt_window.resize(*args.size)
    ((data, meta, _),) = ct_phantom()
    _, organ = ct_phantom_volume(**PHANTOM)
    viewer.add_image(data, **meta)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM segmentation")
    widget.model, widget.device = "lite-medsam", "cpu"
    boxes, clicks = widget.add_prompt_layers()
    z = data.shape[0] // 2
    viewer.dims.set_current_step(0, z)
    rows, cols = np.nonzero(organ[z])
    r0, c0, r1, c1 = rows.min() - 6, cols.min() - 6, rows.max() + 6, cols.max() + 6
    boxes.add_rectangles(np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]]))

    start = time.perf_counter()
    (label_id,) = widget.segment()
    elapsed = time.perf_counter() - start
    mask = widget.labels_layer.data[z] == label_id
    dice = 2 * (mask & organ[z]).sum() / (mask.sum() + organ[z].sum())
    print(f"segment (load + encode + decode) {elapsed:.2f} s, Dice {dice:.3f} on slice {z}")
    if args.propagate:
        start = time.perf_counter()
        widget.propagate()
        elapsed = time.perf_counter() - start
        volume_mask = widget.labels_layer.data == label_id
        dice = 2 * (volume_mask & organ).sum() / (volume_mask.sum() + organ.sum())
        print(f"propagate {elapsed:.1f} s, 3D Dice {dice:.3f}")

    boxes.mode = "select"
    viewer.layers.selection.active = clicks
    viewer.reset_view()
    QApplication.processEvents()
    picture = viewer.screenshot(canvas_only=False, flash=False)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    imsave(args.output, picture, check_contrast=False)
    print(f"wrote {args.output} ({picture.shape[1]} x {picture.shape[0]})")
    viewer.close()


if __name__ == "__main__":
    main()
