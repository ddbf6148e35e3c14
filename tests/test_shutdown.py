"""Closing the widget or the viewer stops and joins background work, so a script exits cleanly.

Before, a scripted session ended in "terminate called without an active exception" (exit 134):
the prefetch thread was still inside the encoder when Python shut down. Run in a subprocess with
the real bundled LiteMedSAM, prefetching on.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gui

SCRIPT = textwrap.dedent(
    """
    import time
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    def wait_for(condition, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, what
            QApplication.processEvents()
            time.sleep(0.02)

    def open_widget(viewer):
        _, widget = viewer.window.add_plugin_dock_widget("napari-medsam", "MedSAM segmentation")
        widget.model, widget.device = "lite-medsam", "cpu"
        assert widget.prefetch
        boxes, _ = widget.add_prompt_layers()
        boxes.add_rectangles(np.array([[15, 30, 40], [15, 30, 100], [15, 85, 100], [15, 85, 40]]))
        return widget

    viewer = napari.Viewer(show=False)
    (image,) = viewer.open_sample("napari-medsam", "abdominal_ct")
    viewer.dims.set_point(0, image.data_to_world([15, 0, 0])[0])

    # 1. the widget closes while Propagate runs in a worker and the neighbours are being encoded
    widget = open_widget(viewer)
    assert widget.segment() == [1]
    wait_for(lambda: widget.prefetcher.encoded >= 1, "prefetching never started")
    widget.propagate_button.native.click()
    wait_for(lambda: widget.progress_bar.value >= 2, "propagation never started")
    worker, thread = widget.jobs.worker, widget.prefetcher._thread
    viewer.window.remove_dock_widget(widget.native.parent())
    assert widget._released
    assert not worker.is_running, "the job was not joined"
    assert not thread.is_alive(), "the prefetch thread was not joined"
    print("closed the widget: joined")

    # 2. the viewer closes while the neighbours are being encoded
    widget = open_widget(viewer)
    assert widget.segment()
    wait_for(lambda: widget.prefetcher.pending > 0 and widget.prefetcher.encoded >= 1, "no prefetch")
    thread = widget.prefetcher._thread
    viewer.close()
    assert widget._released
    assert not thread.is_alive(), "the prefetch thread was not joined"
    print("closed the viewer: joined")
    """
)


def test_closing_the_widget_and_the_viewer_ends_the_script_cleanly(lite_checkpoint, tmp_path):
    script = tmp_path / "session.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr
    lines = done.stdout.splitlines()
    assert lines.index("closed the widget: joined") < lines.index("closed the viewer: joined")
