"""The widget's embedding store setting: remembered across sessions, filled by Segment and prefetch."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medsam._qt.widget import MedSamWidget
from napari_medsam.engine.store import EmbeddingStore

pytestmark = pytest.mark.gui


@pytest.fixture
def settings_dir(tmp_path, monkeypatch):
    """This test's own settings file."""
    folder = tmp_path / "settings"
    monkeypatch.setenv("NAPARI_MEDSAM_CONFIG_DIR", str(folder))
    return folder


def test_the_store_is_remembered_and_filled_ahead(
    make_napari_viewer, qtbot, tiny_sam_dir, tmp_path, settings_dir
):
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 100, size=(5, 48, 64)).astype(np.float32)
    volume[:, 14:34, 18:46] += 300
    path = tmp_path / "embeddings.zarr"
    viewer = make_napari_viewer()
    viewer.add_image(volume, contrast_limits=(-160, 240))
    widget = MedSamWidget(viewer)
    widget.model, widget.device = str(tiny_sam_dir), "cpu"
    widget.embedding_store = str(path)
    boxes, _ = widget.add_prompt_layers()
    viewer.dims.set_current_step(0, 2)
    boxes.add_rectangles(np.array([[2, 12, 16], [2, 12, 48], [2, 36, 48], [2, 36, 16]], float))
    with qtbot.waitSignal(widget.job_finished, timeout=60_000) as blocker:
        widget.segment_button.native.click()
    assert blocker.args == ["done"]
    assert widget.predictor.store.path == path
    store = EmbeddingStore(path)

    def settled():
        return not widget.encoding.planned and widget.prefetcher.wait(0)

    qtbot.waitUntil(lambda: settled() and widget.prefetcher.progress == (5, 5), timeout=60_000)
    assert len(store.entries()) == 5  # every slice, by Segment or in the background

    assert str(path) in (settings_dir / "napari-medsam.ini").read_text()  # on disk for the next session
    later = MedSamWidget(make_napari_viewer())
    assert str(later.embedding_store) == str(path)
    later.embedding_store = str(tmp_path)  # exists, holds other things: not a store
    assert later.controls.store.store is None
    assert "not a napari-medsam embedding store" in later.controls.store.edit.tooltip
    later.embedding_store = ""
    assert later.controls.store.store is None
    widget.embedding_store = ""
    assert widget.predictor.store is None  # the loaded predictor follows the setting
