"""Nothing lost, nothing silently wrong (issue 25): one test per case the probe found, numbered as there.

CLI runs that must stop before the model loads pass ``--model no-such-model``: an error about the
model would mean the check came too late.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_medsam
from fakes import SpyPredictor
from napari_medsam.base.windows import SOFT_TISSUE, training_window
from napari_medsam.cli import main
from napari_medsam.cli.batch import RowResult, _resumable, _write_outputs
from napari_medsam.cli.manifest import ImageRows, ObjectRow
from napari_medsam.engine.store import EmbeddingStore
from napari_medsam.io.files import read_image, write_mask
from napari_medsam.io.label_files import load_labels, save_labels
from napari_medsam.io.samples import ABDOMINAL_CT
from napari_medsam.io.volumes import VolumeGeometry, read_volume, write_labels
from napari_medsam.models.preprocessing import model_input
from test_store import GEOMETRY, MODEL, embedding, key
from test_volume_io import ct_volume, write_dicom_series

NO_MODEL = ["--model", "no-such-model"]


def segment(image: Path, *args: str) -> list[str]:
    return ["segment", str(image), "--box", "10", "10", "30", "30", *args]


def one_line_error(capsys, code: int, expected: str) -> str:
    """The CLI's stderr, checked: exit 1, one line, no traceback, ``expected`` in it, no model reached."""
    err = capsys.readouterr().err
    assert code == 1, err
    assert expected in err
    assert "Traceback" not in err
    assert "unknown model source" not in err
    assert len(err.strip().splitlines()) == 1
    return err


# 1 -------------------------------------------------------------------------------------------
KILLED_WRITER = """
import sys
import numpy as np
from pathlib import Path
from napari_medsam.io.files import write_mask
from napari_medsam.io.volumes import VolumeGeometry
labels = np.random.default_rng(1).integers(0, 6, (120, 256, 256)).astype(np.uint8)
print("ready", flush=True)
write_mask(Path(sys.argv[1]), labels, VolumeGeometry.identity(labels.shape), names={1: "liver"})
"""


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.parametrize(
    ("suffix", "delay"), [(".nii.gz", 0.0), (".nii.gz", 0.15), (".seg.nrrd", 0.05), (".npy", 0.0)]
)
def test_1_a_kill_during_a_write_leaves_the_old_file_or_the_whole_new_one(tmp_path, suffix, delay):
    target = tmp_path / f"labels{suffix}"
    old = np.zeros((120, 256, 256), np.uint8)
    old[10:20, 30:40, 50:60] = 3
    write_mask(target, old, VolumeGeometry.identity(old.shape), names={3: "spleen"})
    before = folder_state(tmp_path)
    package = Path(napari_medsam.__file__).parents[1]  # the code under test, in the writer too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [package, *sys.path]))}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while folder_state(tmp_path) == before and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    changed_while_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert changed_while_running, "the writer finished before it could be killed: grow the labels"
    back, _ = read_image(target) if suffix == ".npy" else read_volume(target)
    is_old = np.array_equal(back, old)
    assert is_old or (back.shape == old.shape and set(np.unique(back)) == set(range(6)))
    if suffix != ".npy":  # the names go with the file they belong to
        names = [o.name for o in load_labels(target)[2]]
        assert names == (["spleen"] if is_old else ["liver", "object 2", "object 3", "object 4", "object 5"])


# 2 -------------------------------------------------------------------------------------------
def test_2_segment_refuses_to_write_over_its_image_before_the_model_loads(tmp_path, capsys):
    image = tmp_path / "ct.npy"
    np.save(image, ct_volume((4, 40, 48))[0][0])
    content = image.read_bytes()
    one_line_error(capsys, main(segment(image, "-o", str(image), *NO_MODEL)), "would replace the input")
    link = tmp_path / "link.npy"
    link.symlink_to(image)
    one_line_error(capsys, main(segment(image, "-o", str(link), *NO_MODEL)), "would replace the input")
    os.link(image, tmp_path / "hard.npy")
    one_line_error(capsys, main(segment(image, "-o", str(tmp_path / "hard.npy"), *NO_MODEL)), "would replace")
    assert image.read_bytes() == content
    series = write_dicom_series(tmp_path / "series", ct_volume((4, 40, 48))[0], (2.0, 0.8, 0.8), (0, 0, 0))
    one_line_error(
        capsys,
        main(segment(tmp_path / "series", "--slice", "1", "-o", str(series[0]), *NO_MODEL)),
        "would replace the input",
    )


# 3 -------------------------------------------------------------------------------------------
def test_3_batch_refuses_an_output_folder_whose_files_would_replace_the_inputs(tmp_path, capsys):
    volume = ct_volume((4, 40, 48))[0]
    write_labels(tmp_path / "a.nii.gz", volume)  # an image in HU
    content = (tmp_path / "a.nii.gz").read_bytes()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,slice,box\na.nii.gz,1,5 5 20 20\n")
    assert main(["batch", str(manifest), "-o", str(tmp_path), *NO_MODEL]) == 2
    err = capsys.readouterr().err
    assert "would replace the input" in err
    assert "a.nii.gz" in err
    assert "unknown model" not in err
    assert (tmp_path / "a.nii.gz").read_bytes() == content


# 4 -------------------------------------------------------------------------------------------
def test_4_each_label_file_keeps_its_own_names_and_old_sidecars_still_load(tmp_path):
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[1, 2:5, 2:5] = 1
    save_labels(tmp_path / "organs.nii.gz", labels, None, names={1: "liver"})
    save_labels(tmp_path / "organs.nrrd", labels, None, names={1: "spleen"})
    assert [o.name for o in load_labels(tmp_path / "organs.nii.gz")[2]] == ["liver"]
    assert [o.name for o in load_labels(tmp_path / "organs.nrrd")[2]] == ["spleen"]
    save_labels(tmp_path / "old.mha", labels, None, names={1: "kidney"})
    (tmp_path / "old.mha.labels.json").rename(tmp_path / "old.labels.json")  # as earlier versions wrote
    assert [o.name for o in load_labels(tmp_path / "old.mha")[2]] == ["kidney"]


# 5 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["missing chunk", "chunk of another slice"])
def test_5_a_store_entry_with_a_missing_or_foreign_chunk_is_not_used_and_is_rewritten(tmp_path, damage):
    store = EmbeddingStore(tmp_path / "s.zarr")
    first, second = key("a" * 32), key("b" * 32)
    store.put(first, embedding(0), GEOMETRY, MODEL)
    store.put(second, embedding(1), GEOMETRY, MODEL)
    chunk = Path("c", "0", "0", "0", "0")
    if damage == "missing chunk":
        (store.entry_path(first) / chunk).unlink()
        assert first not in store
        assert [row.entries for row in store.usage()] == [1]  # what `napari-medsam store` reports
    else:
        shutil.copy(store.entry_path(second) / chunk, store.entry_path(first) / chunk)
    assert store.get(first) is None
    assert store.put(first, embedding(0), GEOMETRY, MODEL)  # re-encoded and written back
    assert torch.equal(store.get(first)[0], embedding(0))
    assert torch.equal(store.get(second)[0], embedding(1))


def test_5_segment_through_a_damaged_store_gives_the_masks_of_a_clean_run(tmp_path, tiny_sam_dir):
    from napari_medsam.engine.predictor import MedSamPredictor

    image = np.random.default_rng(2).normal(size=(50, 60))
    clean = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    clean.set_image(image)
    expected = clean.predict(box=(5, 5, 40, 30)).mask
    store = tmp_path / "s.zarr"
    MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32", store=store).set_image(
        image
    )
    (chunk,) = [p for p in store.rglob("*") if p.is_file() and p.parent.name == "0" and p.name == "0"]
    chunk.unlink()
    again = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32", store=store)
    again.set_image(image)
    np.testing.assert_array_equal(again.predict(box=(5, 5, 40, 30)).mask, expected)
    assert chunk.is_file()  # rewritten


# 6 -------------------------------------------------------------------------------------------
def test_6_one_nan_voxel_does_not_change_the_ct_window():
    ct = ct_volume((4, 40, 48))[0].astype(np.float32)
    assert training_window(ct).window == SOFT_TISSUE
    ct[2, 20, 20] = np.nan
    ct[3, 5, 5] = np.inf
    assert training_window(ct).window == SOFT_TISSUE
    mr = np.abs(ct_volume((4, 40, 48))[0]).astype(np.float32) + 1
    clean = training_window(mr).window
    mr[0, 0, 0], mr[1, 1, 1] = np.nan, np.inf
    assert training_window(mr).window == pytest.approx(clean, rel=1e-3)


# 7 -------------------------------------------------------------------------------------------
@pytest.fixture
def series(tmp_path):
    hu = ct_volume((8, 24, 28))[0]
    return tmp_path / "series", write_dicom_series(tmp_path / "series", hu, (2.0, 0.8, 0.8), (0, 0, 0))


def by_position(files: list[Path]) -> list[Path]:
    import pydicom

    return sorted(
        files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
    )


def test_7_a_series_with_a_missing_file_is_refused_naming_the_gap(series):
    folder, files = series
    assert read_volume(folder)[0].shape == (8, 24, 28)
    by_position(files)[4].unlink()
    with pytest.raises(
        ValueError, match=r"not evenly spaced: 4\.000 mm .* spacing is 2\.000 mm \(1 slice\(s\) missing\)"
    ):
        read_volume(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_7_a_series_with_an_unreadable_file_is_refused_naming_it(series, damage):
    folder, files = series
    victim = by_position(files)[7]  # the last slice: no gap would show it
    data = victim.read_bytes()
    victim.write_bytes(
        data[: len(data) // 2] if damage == "truncated" else data[:132] + bytes(200) + data[332:]
    )
    with pytest.raises(ValueError, match=rf"cannot be read \({victim.name}\)"):
        read_volume(folder)


def test_7_duplicated_positions_under_one_uid_are_refused(series):
    import pydicom
    from pydicom.uid import generate_uid

    folder, files = series
    for file in files[:3]:
        copy = pydicom.dcmread(file)
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        copy.save_as(folder / f"copy-{file.name}")
    with pytest.raises(ValueError, match="duplicated"):
        read_volume(folder)


# 8 -------------------------------------------------------------------------------------------
def test_8_a_batch_rerun_redoes_an_output_damaged_after_it_was_written(tmp_path):
    row = ObjectRow(2, "a.nii.gz", 1, (5.0, 5.0, 20.0, 20.0), "liver", 1, True)
    image = ImageRows("a.nii.gz", tmp_path / "a.nii.gz", tmp_path / "out" / "a.nii.gz", (row,))
    labels = np.zeros((4, 40, 48), np.uint8)
    labels[1:3, 5:20, 5:20] = 1
    results = [RowResult("a.nii.gz", 1, "liver", "done", int(labels.sum()), 1.0, 0.5)]
    _write_outputs(image, labels, VolumeGeometry.identity(labels.shape), results, "hash")
    assert _resumable(image, "hash") == results
    data = image.output.read_bytes()
    image.output.write_bytes(data[:-30] + bytes(30))  # damaged after it was written
    assert _resumable(image, "hash") is None
    image.output.write_bytes(data)
    (tmp_path / "out" / "a.nii.gz.labels.json").write_text('{"labels": []}\n')
    assert _resumable(image, "hash") is None


# 9 -------------------------------------------------------------------------------------------
def test_9_an_axis_a_volume_does_not_have_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "v.npy", ct_volume((4, 40, 48))[0])
    code = main(
        segment(tmp_path / "v.npy", "--slice", "1", "--axis", "3", "-o", str(tmp_path / "o.npy"), *NO_MODEL)
    )
    one_line_error(capsys, code, "--axis 3")


# 10 ------------------------------------------------------------------------------------------
HEADER_ONLY = b"\x93NUMPY\x01\x00v\x00{'descr': '<i2', 'fortran_order': False, 'shape': (9,), }"


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("empty.npy", b"", "is empty"),
    ("empty.png", b"", "is empty"),
    ("nifti.png", "nifti", "it is a gzip file"),
    ("short.npy", HEADER_ONLY, "damaged"),
])  # fmt: skip
def test_10_empty_damaged_or_misnamed_images_are_one_line(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    if content == "nifti":
        shutil.copy(ABDOMINAL_CT, path)
    else:
        path.write_bytes(content)
    one_line_error(capsys, main(segment(path, "-o", str(tmp_path / "o.png"), *NO_MODEL)), expected)


# 11 ------------------------------------------------------------------------------------------
def test_11_complex_images_are_refused_and_bool_images_taken(tmp_path, capsys):
    np.save(tmp_path / "c.npy", np.ones((40, 48), complex))
    one_line_error(
        capsys, main(segment(tmp_path / "c.npy", "-o", str(tmp_path / "o.png"), *NO_MODEL)), "complex"
    )
    mask = np.zeros((40, 48), bool)
    mask[10:30, 10:30] = True
    np.save(tmp_path / "b.npy", mask)
    assert training_window(read_image(tmp_path / "b.npy")[0]).window is None  # uint8, used as it is
    assert main(segment(tmp_path / "b.npy", "-o", str(tmp_path / "o.png"), *NO_MODEL)) == 1
    assert "unknown model source" in capsys.readouterr().err  # it got as far as the model


# 12 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["lite-medsam", "sam", "medsam"])
def test_12_a_2_x_5000_strip_is_resized_for_every_family(family):
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5000, 3)).astype(np.uint8)
    pixels, geometry = model_input(rgb, family)
    assert pixels.shape[-2:] == (geometry.input_size, geometry.input_size)
    assert min(geometry.resized) >= 1


def test_12_set_image_and_predict_on_a_2_x_5000_strip(tiny_sam_dir):
    from napari_medsam.engine.predictor import MedSamPredictor

    predictor = MedSamPredictor.from_pretrained(str(tiny_sam_dir), device="cpu", dtype="float32")
    predictor.set_image(np.random.default_rng(1).normal(size=(2, 5000)))
    assert predictor.predict(box=(100, 0, 900, 1)).mask.shape == (2, 5000)


# 13 ------------------------------------------------------------------------------------------
def test_13_batch_to_an_existing_file_is_refused_before_anything_runs(tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,slice,box\na.nii.gz,1,5 5 20 20\n")
    (tmp_path / "out").write_text("a file")
    assert main(["batch", str(manifest), "-o", str(tmp_path / "out"), *NO_MODEL]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


# 14 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("output", "extra", "expected"), [
    ("x.png", ["--propagate"], "3D result needs a volume format"),
    ("x.xyz", [], "cannot write x.xyz"),
    ("noext", [], "cannot write noext"),
    ("x.dcm", [], "needs labels made on an image opened from a DICOM series"),
])  # fmt: skip
def test_14_the_output_is_checked_before_the_model_loads(tmp_path, capsys, output, extra, expected):
    code = main(segment(ABDOMINAL_CT, "--slice", "20", *extra, "-o", str(tmp_path / output), *NO_MODEL))
    one_line_error(capsys, code, expected)


def test_14_an_upper_case_ending_is_written_and_read(tmp_path):
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[1, 2:5, 2:5] = 4
    write_mask(tmp_path / "SEG.NII.GZ", labels, VolumeGeometry.identity(labels.shape), names={4: "liver"})
    np.testing.assert_array_equal(read_volume(tmp_path / "SEG.NII.GZ")[0], labels)
    assert [o.name for o in load_labels(tmp_path / "SEG.NII.GZ")[2]] == ["liver"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SEG.NII.GZ", "SEG.NII.GZ.labels.json"]


# 15 ------------------------------------------------------------------------------------------
def test_15_messages_say_what_is_wrong(tmp_path, capsys):
    ct = str(ABDOMINAL_CT)
    run = ["--slice", "20", *NO_MODEL]
    out = str(tmp_path / "o.nii.gz")
    code = main(segment(ABDOMINAL_CT, *run, "--labels", ct, "-o", out))
    one_line_error(capsys, code, "is not a label image")
    shape = read_volume(ABDOMINAL_CT)[0].shape
    huge = np.zeros(shape, np.uint32)
    huge[0, 0, 0], huge[1, 1, 1] = 1, 70000
    write_labels(tmp_path / "huge.nii.gz", huge, read_volume(ABDOMINAL_CT)[1])
    code = main(segment(ABDOMINAL_CT, *run, "--labels", str(tmp_path / "huge.nii.gz"), "-o", out))
    one_line_error(capsys, code, "label ids are 1..65535")
    png = tmp_path / "png.nii.gz"
    from skimage.io import imsave

    imsave(png, np.zeros((40, 48), np.uint8), extension=".png", check_contrast=False)
    one_line_error(capsys, main(segment(png, "-o", str(tmp_path / "o.png"), *NO_MODEL)), "it is a PNG file")
    (tmp_path / "file").write_text("")
    one_line_error(
        capsys, main(segment(ABDOMINAL_CT, *run, "-o", str(tmp_path / "file" / "o.nii.gz"))), "is a file"
    )


UNPRIVILEGED = """
import contextlib, io, os, pwd, sys
from napari_medsam.cli import main
warm, args = sys.argv[1], sys.argv[2:]
if os.geteuid() == 0:  # root writes into read-only folders: drop to nobody, as CI runs as root
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        main([*args[:-1], os.path.join(warm, "o.nii.gz")])  # the same command once, writable: every
    nobody = pwd.getpwnam("nobody")  # module it needs is loaded (nobody may not read Python's own)
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
print(os.geteuid(), flush=True)
sys.exit(main(args))
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_15_a_read_only_folder_is_named(tmp_path):
    """The command as a user who cannot write the folder: as root (CI), a child process that drops
    to ``nobody`` before it runs the command."""
    import pwd

    shared = Path(tempfile.mkdtemp())  # pytest's folders are root's alone: nobody could not reach them
    try:
        shared.chmod(0o755)
        folder = shared / "ro"
        folder.mkdir(mode=0o555)
        folder.chmod(0o555)
        package = Path(napari_medsam.__file__).parents[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [package, *sys.path]))}
        args = segment(ABDOMINAL_CT, "--slice", "20", *NO_MODEL, "-o", str(folder / "o.nii.gz"))
        command = [sys.executable, "-c", UNPRIVILEGED, str(tmp_path), *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=shared, timeout=300)
        assert done.returncode == 1, done.stderr
        unprivileged = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
        assert done.stdout.split() == [str(unprivileged)]  # the command ran without root's rights
        assert done.stderr.strip().splitlines() == [
            f"napari-medsam: error: cannot write {folder / 'o.nii.gz'}: the folder {folder} is read-only"
        ]
        assert list(folder.iterdir()) == []
    finally:
        (shared / "ro").chmod(0o755)
        shutil.rmtree(shared)


# 16 ------------------------------------------------------------------------------------------
def test_16_nan_on_a_slice_only_propagation_reaches_is_refused_up_front_naming_it(tmp_path, capsys):
    volume = ct_volume((10, 40, 48))[0].astype(np.float32)
    volume[7, 3, 3] = np.nan
    np.save(tmp_path / "v.npy", volume)
    args = segment(tmp_path / "v.npy", "--slice", "2", "-o", str(tmp_path / "o.npy"), *NO_MODEL)
    one_line_error(capsys, main([*args, "--propagate"]), "slice 7 (axis 0) holds 1 NaN")
    assert main(args) == 1  # slice 2 alone is clean: the run goes on to the model
    assert "unknown model source" in capsys.readouterr().err


# 17 ------------------------------------------------------------------------------------------
def test_17_a_dicom_folder_whose_first_files_are_not_dicom_is_read(series):
    folder, _ = series
    for i in range(25):
        (folder / f"000-notes-{i:02d}.txt").write_text("not DICOM")
    assert read_volume(folder)[0].shape == (8, 24, 28)


def test_17_two_series_mixed_under_a_blank_uid_are_named(tmp_path):
    import pydicom

    hu = ct_volume((6, 24, 28))[0]
    first = write_dicom_series(tmp_path / "a", hu, (2.0, 0.8, 0.8), (0, 0, 0))
    second = write_dicom_series(tmp_path / "b", hu, (2.0, 0.8, 0.8), (0, 0, 0))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for files, (description, number) in ((first, ("T1 axial", 3)), (second, ("T2 axial", 4))):
        for file in files:
            dataset = pydicom.dcmread(file)
            dataset.SeriesInstanceUID = ""
            dataset.SeriesDescription, dataset.SeriesNumber = description, number
            dataset.save_as(mixed / f"{number}-{file.name}")
    with pytest.raises(ValueError, match=r"'T1 axial' \(series 3\), 'T2 axial' \(series 4\)"):
        read_volume(mixed)


def test_17_two_series_in_one_folder_are_named_by_description_and_number(tmp_path, caplog):
    import pydicom

    hu = ct_volume((6, 24, 28))[0]
    folder = tmp_path / "two"
    folder.mkdir()
    for name, depth, description in (("a", 6, "T1 axial"), ("b", 4, "T2 axial")):
        for file in write_dicom_series(tmp_path / name, hu[:depth], (2.0, 0.8, 0.8), (0, 0, 0)):
            dataset = pydicom.dcmread(file)
            dataset.SeriesDescription = description
            dataset.save_as(folder / f"{name}-{file.name}")
    with caplog.at_level("WARNING"):
        assert read_volume(folder)[0].shape == (6, 24, 28)
    assert "'T1 axial' (series 1, 6 files), 'T2 axial' (series 1, 4 files)" in caplog.text


# Must show: the viewer's Save -------------------------------------------------------------------
def test_save_never_writes_over_an_open_image_and_replaces_labels_whole(make_napari_viewer, tmp_path):
    from napari_medsam._writer import napari_write_labels

    volume = ct_volume((4, 40, 48))[0]
    write_labels(tmp_path / "ct.nii.gz", volume)
    content = (tmp_path / "ct.nii.gz").read_bytes()
    viewer = make_napari_viewer()
    [image] = viewer.open(str(tmp_path / "ct.nii.gz"), plugin="napari-medsam")
    labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="ct labels")
    labels.data[1, 5:10, 5:10] = 2
    with pytest.raises(ValueError, match="file of an open image"):
        napari_write_labels(str(tmp_path / "ct.nii.gz"), labels.data, labels._get_state())
    assert (tmp_path / "ct.nii.gz").read_bytes() == content
    target = str(tmp_path / "labels.nii.gz")
    assert napari_write_labels(target, labels.data, labels._get_state())[0] == target
    assert napari_write_labels(target, labels.data, labels._get_state())[0] == target  # replaced whole
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["ct.nii.gz", "labels.nii.gz", "labels.nii.gz.labels.json"]


def test_13_a_batch_row_that_hits_a_bug_names_the_log_file_holding_its_traceback(tmp_path, monkeypatch):
    import argparse

    from napari_medsam.cli import cluster
    from napari_medsam.cli.batch import BatchOptions, segment_image

    class Broken(SpyPredictor):  # a bug in the encoder
        def set_image(self, image, window=None):
            raise RuntimeError("boom")

    monkeypatch.setattr(cluster, "worker_predictor", lambda plugin: Broken())
    write_labels(tmp_path / "a.nii.gz", ct_volume((4, 40, 48))[0])
    row = ObjectRow(2, "a.nii.gz", 1, (5.0, 5.0, 20.0, 20.0), "liver", 1, False)
    image = ImageRows("a.nii.gz", tmp_path / "a.nii.gz", tmp_path / "out" / "a.nii.gz", (row,))
    options = BatchOptions("plugin", argparse.Namespace(window=None, preset=None))
    [result] = segment_image(image, "hash", options)
    log = tmp_path / "out" / "a.error.log"
    assert result.status == "failed"
    assert result.error == f"RuntimeError: boom (traceback in {log})"
    assert "Traceback" in log.read_text()
    assert "RuntimeError: boom" in log.read_text()


@pytest.mark.slow
def test_1_segment_killed_over_existing_labels_then_rerun_gives_the_uninterrupted_result(tmp_path):
    """The real command (LiteMedSAM) over yesterday's labels, killed as soon as its output appears."""
    box = ["--box", "40", "22", "100", "80"]  # around the liver on slice 15
    args = ["segment", str(ABDOMINAL_CT), *box, "--slice", "15", "--name", "liver"]
    assert main([*args, "-o", str(tmp_path / "reference.nii.gz")]) == 0
    work = tmp_path / "work"
    work.mkdir()
    out = work / "organs.nii.gz"
    old = np.zeros(read_volume(ABDOMINAL_CT)[0].shape, np.uint8)
    old[5:9, 10:20, 10:20] = 7
    write_mask(out, old, read_volume(ABDOMINAL_CT)[1], names={7: "yesterday"})
    before = folder_state(work)
    package = Path(napari_medsam.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [package, *sys.path]))}
    process = subprocess.Popen([sys.executable, "-m", "napari_medsam.cli", *args, "-o", str(out)], env=env)
    deadline = time.monotonic() + 300
    while folder_state(work) == before and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    back, _ = read_volume(out)
    assert np.array_equal(back, old) or np.array_equal(back, read_volume(tmp_path / "reference.nii.gz")[0])
    assert main([*args, "-o", str(out)]) == 0  # the rerun
    np.testing.assert_array_equal(read_volume(out)[0], read_volume(tmp_path / "reference.nii.gz")[0])
    assert [o.name for o in load_labels(out)[2]] == ["liver"]
    visible = sorted(p.name for p in work.iterdir() if not p.name.startswith("."))
    assert visible == ["organs.nii.gz", "organs.nii.gz.labels.json"]
