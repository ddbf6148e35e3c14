"""Open napari on the shipped abdominal CT, the MedSAM widget docked and its prompt layers ready.

``bash scripts/demo.sh`` runs this where there is a display. Draw a box around an organ (the
boxes layer is already in rectangle mode) and press Segment, then Propagate.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: The slice the viewer opens on (data index): the liver, spleen and kidneys are all in view.
DEMO_SLICE = 15


def open_demo(show: bool = True) -> tuple[Any, Any, Any, Any]:
    """A viewer with the sample CT on ``DEMO_SLICE``: (viewer, widget, boxes layer, clicks layer)."""
    import napari

    viewer = napari.Viewer(show=show, title="napari-medsam")
    (image,) = viewer.open_sample("napari-medsam", "abdominal_ct")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM segmentation")
    boxes, clicks = widget.add_prompt_layers()
    viewer.dims.set_point(0, image.data_to_world([DEMO_SLICE, 0, 0])[0])
    return viewer, widget, boxes, clicks


if __name__ == "__main__":
    import napari

    open_demo()
    napari.run()
