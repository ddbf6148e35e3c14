"""The napari-medsam command: real LiteMedSAM on files, one-line errors, formats by extension."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from skimage.io import imread

from conftest import dice, make_phantom
from napari_medsam.cli import main


@pytest.fixture
def phantom_files(tmp_path):
    image, truth, box = make_phantom()
    np.save(tmp_path / "ct.npy", image)
    tifffile.imwrite(tmp_path / "ct.tif", image)
    return tmp_path, truth, box


def test_segment_npy_to_png_with_the_bundled_model(phantom_files, capsys):
    folder, truth, box = phantom_files
    out = folder / "mask.png"
    code = main(
        [
            "segment",
            str(folder / "ct.npy"),
            "--box",
            *map(str, box),
            "--preset",
            "soft-tissue",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    mask = imread(out)
    assert set(np.unique(mask)) <= {0, 255}
    assert dice(mask > 0, truth) >= 0.95
    assert "lite-medsam" in capsys.readouterr().out


def test_segment_tif_volume_slice_to_npy(phantom_files):
    folder, truth, box = phantom_files
    image = tifffile.imread(folder / "ct.tif")
    volume = np.stack([np.zeros_like(image), image, np.zeros_like(image)])
    tifffile.imwrite(folder / "vol.tif", volume, photometric="minisblack")
    out = folder / "labels.npy"
    assert (
        main(
            [
                "segment",
                str(folder / "vol.tif"),
                "--slice",
                "1",
                "--window",
                "-160",
                "240",
                "--box",
                *map(str, box),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    labels = np.load(out)
    assert labels.shape == volume.shape
    assert not labels[0].any()
    assert not labels[2].any()
    assert dice(labels[1] > 0, truth) >= 0.95


def test_two_boxes_give_two_label_ids(phantom_files):
    folder, _, box = phantom_files
    out = folder / "two.tif"
    second = (10, 10, 60, 50)
    assert (
        main(
            [
                "segment",
                str(folder / "ct.npy"),
                "--box",
                *map(str, box),
                "--box",
                *map(str, second),
                "--preset",
                "soft-tissue",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert set(np.unique(tifffile.imread(out))) <= {0, 1, 2}
    assert 1 in np.unique(tifffile.imread(out))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--box", "50", "50", "10", "10"], "empty or inverted"),
        (["--box", "1", "1", "20", "20", "--slice", "3"], "--slice given"),
        ([], "--box"),
        (["--box", "1", "1", "20", "20", "--model", "no-such-model"], "unknown model source"),
        (["--point", "5", "5", "3"], "LABEL must be 1"),
    ],
)
def test_errors_are_one_line_without_traceback(phantom_files, capsys, args, message):
    folder, _, _ = phantom_files
    code = main(["segment", str(folder / "ct.npy"), *args, "-o", str(folder / "x.png")])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_input_file(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "nope.npy"), "--box", "1", "1", "5", "5", "-o", "x.png"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_console_script_runs_the_demo(tmp_path):
    out = tmp_path / "demo.png"
    done = subprocess.run(
        [sys.executable, "-m", "napari_medsam.cli", "demo", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    reported = float(done.stdout.split("dice")[1].split()[0])
    assert reported >= 0.95
    assert out.exists()
