"""The batch manifest and the cohort commands' arguments: what is refused before anything runs (exit 2)."""

from __future__ import annotations

import argparse

import pytest

from napari_medsam.cli import main
from napari_medsam.cli.embed import slice_range
from napari_medsam.cli.manifest import ManifestError, read_manifest

HEADER = "image,slice,box,name,label,propagate\n"


def write(tmp_path, text: str):
    manifest = tmp_path / "cohort" / "manifest.csv"
    manifest.parent.mkdir(exist_ok=True)
    manifest.write_text(text)
    return manifest


def test_rows_are_grouped_by_image_with_default_labels_names_and_outputs(tmp_path):
    manifest = write(
        tmp_path,
        HEADER
        + "ct/a.nii.gz,4,1 2 30 40,liver,,\n"
        + "series1,3,5 5 9 9,,7,false\n"
        + "ct/a.nii.gz,5,1 2 30,,,\n"
        + "ct/a.nii.gz,x,1 2 3 4,,,TRUE\n",
    )
    a, series = read_manifest(manifest, tmp_path / "out")
    assert (a.image, a.path, a.output) == (
        "ct/a.nii.gz",
        manifest.parent / "ct/a.nii.gz",
        tmp_path / "out/ct/a.nii.gz",
    )
    assert series.output == tmp_path / "out" / "series1.nii.gz"  # a DICOM folder
    assert [(r.label, r.name, r.slice, r.box, r.propagate) for r in a.rows] == [
        (1, "liver", 4, (1.0, 2.0, 30.0, 40.0), True),
        (2, "object 2", 5, None, True),
        (3, "object 3", None, (1.0, 2.0, 3.0, 4.0), True),
    ]
    assert [r.problem for r in a.rows] == [
        None, "box '1 2 30' is not four numbers x0 y0 x1 y1", "slice 'x' is not an integer",
    ]  # fmt: skip
    assert [(r.label, r.propagate) for r in series.rows] == [(7, False)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,box\na.nii.gz,1 2 3 4\n", r"missing column\(s\) \['slice'\]"),
        ("image,slice,box,lable\na.nii.gz,1,1 2 3 4,2\n", r"unknown column\(s\) \['lable'\]"),
        (HEADER + "a.nii.gz,1,1 2 3 4,,2,\na.nii.gz,2,1 2 3 4,,2,\n", "label 2 is given twice"),
        (HEADER + "a.nii.gz,1,1 2 3 4,,2,\na.nii.gz,2,1 2 3 4,,,\n", "label 2 is given twice"),  # 2nd row
        (HEADER + "a.nii.gz,1,1 2 3 4,,x,\n", "label 'x' is not an integer"),
        (HEADER + "a.nii.gz,1,1 2 3 4,,0,\n", "label 0 is outside"),
        (HEADER + "a.nii.gz,1,1 2 3 4,,,maybe\n", "propagate 'maybe' is not true or false"),
        (HEADER + "../a.nii.gz,1,1 2 3 4,,,\n", "must be a path inside the manifest's folder"),
        (HEADER + "a.nii,1,1 2 3 4,,,\na.nii.gz,1,1 2 3 4,,,\n", "would both be written to"),
        (HEADER, "no rows"),
    ],
)
def test_an_invalid_manifest_exits_2_and_runs_nothing(tmp_path, capsys, text, message):
    manifest = write(tmp_path, text)
    with pytest.raises(ManifestError, match=message):
        read_manifest(manifest, tmp_path / "out")
    assert main(["batch", str(manifest), "-o", str(tmp_path / "out"), "--workers", "1"]) == 2
    assert "napari-medsam: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--model", "--store"])
def test_an_unknown_model_or_a_folder_that_is_not_a_store_exits_2(tmp_path, option):
    manifest = write(tmp_path, HEADER + "a.nii.gz,1,1 2 3 4,,,\n")
    value = {"--model": "no-such-model", "--store": str(manifest.parent)}[option]
    assert main(["batch", str(manifest), "-o", str(tmp_path / "out"), option, value]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--workers", "0"],
        ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"],
        ["--window", "-160", "240", "--preset", "lung"],
    ],
)
def test_invalid_cluster_and_window_options_exit_2(tmp_path, argv):
    manifest = write(tmp_path, HEADER + "a.nii.gz,1,1 2 3 4,,,\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["batch", str(manifest), "-o", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("text", "indices"),
    [("2:5", [2, 3, 4]), (":2", [0, 1]), ("8:", [8, 9]), ("-3:-1", [7, 8]), ("::4", [0, 4, 8])],
)
def test_slices_follow_python_slice_semantics(text, indices):
    assert list(range(10)[slice_range(text)]) == indices


@pytest.mark.parametrize("text", ["3", "a:b", "1:2:3:4"])
def test_a_bad_slice_range_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        slice_range(text)
