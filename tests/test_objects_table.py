"""The objects table, driven as a user would on the shipped CT: it follows every change of the labels.

Segment, Propagate, Interpolate, painting, erasing and undo; names from the boxes' ``name``
feature and from editing the table; Export CSV; the names saved with the labels.
"""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import slicerio

from conftest import rectangle
from fakes import SpyPredictor
from napari_medsam._qt.widget import MedSamWidget
from napari_medsam.layers.objects import object_names
from napari_medsam.layers.prompt_layers import set_features

pytestmark = pytest.mark.gui
TIMEOUT_MS = 20_000
VOXEL_ML = 3.0**3 / 1000  # the sample is 3 mm isotropic


@pytest.fixture
def session(make_napari_viewer):
    """The sample CT (radiological display, 3 mm), the widget docked with a box-as-mask spy."""
    viewer = make_napari_viewer()
    (image,) = viewer.open_sample("napari-medsam", "abdominal_ct")
    widget = MedSamWidget(viewer, predictor_factory=lambda source, device: SpyPredictor())
    viewer.window.add_dock_widget(widget)
    boxes, _ = widget.add_prompt_layers()
    viewer.dims.set_point(0, image.data_to_world([15, 0, 0])[0])
    return SimpleNamespace(viewer=viewer, image=image, widget=widget, boxes=boxes)


def shown(widget):
    """The table as the user reads it: one tuple of cell texts per row."""
    table = widget.objects.table
    return [
        tuple(table.item(r, c).text() for c in range(table.columnCount())) for r in range(table.rowCount())
    ]


def row_of(image, labels, label_id, name):
    """What the table should show for object ``label_id``, computed from the arrays."""
    inside = labels == label_id
    slices = int(inside.any(axis=(1, 2)).sum())
    mean = float(image[inside].mean())
    return (
        name,
        str(label_id),
        str(int(inside.sum())),
        f"{inside.sum() * VOXEL_ML:.2f}",
        str(slices),
        f"{mean:.1f}",
    )


def test_the_table_follows_segment_propagate_interpolate_paint_erase_and_undo(session, qtbot, tmp_path):
    s = session
    w, boxes, hu = s.widget, s.boxes, s.image.data

    def expect(*rows):
        labels = w.labels_layer.data
        wanted = [row_of(hu, labels, i, name) for i, name in rows]
        qtbot.waitUntil(lambda: shown(w) == wanted, timeout=TIMEOUT_MS)

    boxes.add_rectangles(rectangle(30, 20, 60, 50, 15))
    features = boxes.features.copy()
    features["name"] = ["liver"]  # a name typed into the boxes' features
    set_features(boxes, features)
    assert w.segment() == [1]
    expect((1, "liver"))
    assert shown(w)[0][2] == str(31 * 31)
    assert shown(w)[0][4] == "1"

    w.propagate(max_slices=2)  # 2 slices on each side
    expect((1, "liver"))
    assert shown(w)[0][4] == "5"

    boxes.add_rectangles(rectangle(70, 80, 80, 95, 5))
    boxes.add_rectangles(rectangle(70, 80, 84, 99, 8))
    s.viewer.dims.set_point(0, s.image.data_to_world([5, 0, 0])[0])
    assert w.interpolate() == [2]
    expect((1, "liver"), (2, "object 2"))

    labels = w.labels_layer
    labels.selected_label, labels.brush_size = 7, 3
    labels.paint((12, 40, 100), 7)  # painting a new object by hand
    expect((1, "liver"), (2, "object 2"), (7, "object 7"))
    labels.paint((12, 40, 100), 0)  # and erasing it
    expect((1, "liver"), (2, "object 2"))
    labels.undo()  # the erasing, one Ctrl+Z
    expect((1, "liver"), (2, "object 2"), (7, "object 7"))
    labels.undo()  # the painting
    labels.undo()  # Interpolate, one step
    expect((1, "liver"))
    assert shown(w)[0][4] == "5"
    labels.undo()  # Propagate
    expect((1, "liver"))
    assert shown(w)[0][4] == "1"


def test_names_edited_in_the_table_are_the_layers_and_are_saved(session, qtbot, tmp_path):
    s = session
    w = s.widget
    s.boxes.add_rectangles(rectangle(30, 20, 60, 50, 15))
    s.boxes.add_rectangles(rectangle(70, 80, 80, 95, 15))
    assert w.segment() == [1, 2]
    qtbot.waitUntil(lambda: [r[0] for r in shown(w)] == ["object 1", "object 2"], timeout=TIMEOUT_MS)
    w.objects.table.item(1, 0).setText("spleen")  # the user types a name
    assert object_names(w.labels_layer) == {1: "object 1", 2: "spleen"}
    qtbot.waitUntil(lambda: [r[0] for r in shown(w)] == ["object 1", "spleen"], timeout=TIMEOUT_MS)
    w.objects.table.selectRow(1)
    assert w.labels_layer.selected_label == 2  # ready to paint corrections on that object

    path = w.objects.export_csv(tmp_path / "objects.csv")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["label", "name", "voxels", "volume_ml", "slices", "mean_intensity"]
    assert [(r["label"], r["name"], r["voxels"]) for r in rows] == [
        ("1", "object 1", "961"),
        ("2", "spleen", "176"),
    ]
    assert float(rows[1]["volume_ml"]) == pytest.approx(176 * VOXEL_ML)

    [saved] = w.labels_layer.save(str(tmp_path / "organs.seg.nrrd"), plugin="napari-medsam")
    segments = slicerio.read_segmentation(saved, skip_voxels=True)["segments"]
    assert [(s["labelValue"], s["name"]) for s in segments] == [(1, "object 1"), (2, "spleen")]
    assert segments[1]["terminology"]["type"][1] == "78961009"  # SCT Spleen
