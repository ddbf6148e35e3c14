"""``embed`` and ``batch`` on dask.distributed: the real LiteMedSAM on the real CT sample, cut to 7 slices.

One module-scoped local cluster (2 worker processes, one thread each, on 127.0.0.1) serves the
embed, batch, resume and killed-worker tests; one test starts ``dask scheduler`` and ``dask
worker`` as processes of their own. Embeddings go to one store, so the encoder runs once per slice
in the whole module (but in the kill tests' commands, each with a local cluster of one worker,
SIGKILLed with it at several moments; their reruns use the module's cluster).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import napari_medsam
from napari_medsam.cli import main
from napari_medsam.cli.cluster import open_client
from napari_medsam.engine.store import EmbeddingStore
from napari_medsam.io.files import read_image
from napari_medsam.io.label_names import read_sidecar
from realdata import CT_SM as CT

DASK = Path(sys.executable).with_name("dask")
MANIFEST = """image,slice,box,name,label,propagate
a.nii.gz,4,43 25 106 87,liver,,
a.nii.gz,4,9 21 29 56,spleen,7,true
a.nii.gz,4,500 500 600 600,bad box,,
a.nii.gz,9,10 10 50 50,bad slice,,
b.nii.gz,3,37 61 54 81,stomach,,false
b.nii.gz,3,30 20 110 90,,,
bad.nii.gz,2,10 10 50 50,,,
"""
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, lite_checkpoint):
    """Two 7-slice cuts of the CT (SimpleITK keeps their geometry), an unreadable file, a manifest."""
    import SimpleITK as sitk

    folder = tmp_path_factory.mktemp("cohort")
    ct = sitk.ReadImage(str(CT))
    sitk.WriteImage(ct[:, :, 8:15], str(folder / "a.nii.gz"))
    sitk.WriteImage(ct[:, :, 9:16], str(folder / "b.nii.gz"))
    (folder / "bad.nii.gz").write_bytes(b"not a NIfTI file")
    (folder / "manifest.csv").write_text(MANIFEST)
    return SimpleNamespace(folder=folder, manifest=folder / "manifest.csv", store=folder / "store.zarr")


@pytest.fixture(scope="module")
def cluster():
    """The local cluster ``--workers 2`` starts, shared by the module through ``--scheduler``."""
    with open_client(argparse.Namespace(workers=2, scheduler=None)) as client:
        yield client


def run_batch(cohort, address: str, out: Path, manifest: Path | None = None) -> int:
    argv = ["batch", str(manifest or cohort.manifest), "-o", str(out), "--store", str(cohort.store)]
    return main([*argv, "--scheduler", address])


def read_summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def first_batch(cohort, cluster):
    """One batch run of the manifest on the local cluster: (output folder, exit code, summary rows)."""
    out = cohort.folder / "out"
    code = run_batch(cohort, cluster.scheduler.address, out)
    return SimpleNamespace(out=out, code=code, summary=read_summary(out))


def test_embed_fills_the_store_once_per_slice(cohort, cluster, capsys):
    a, b, bad = (str(cohort.folder / name) for name in ("a.nii.gz", "b.nii.gz", "bad.nii.gz"))
    address = cluster.scheduler.address
    assert main(["embed", a, b, bad, "--store", str(cohort.store), "--scheduler", address]) == 1
    captured = capsys.readouterr()
    assert "bad.nii.gz" in captured.err
    store = EmbeddingStore(cohort.store)
    entries = store.entries()
    assert len(entries) == 8  # slices 8..15 of the CT; the 6 that a and b share are stored once
    assert {e.volume for e in entries} <= {a, b}
    assert {e.model.name for e in entries} == {"lite-medsam"}
    assert main(["embed", a, "--slices", "2:5", "--store", str(cohort.store), "--scheduler", address]) == 0
    assert f"{a}: 0 encoded, 3 already in the store" in capsys.readouterr().out


def segment_alone(cohort, row: dict[str, str], out: Path) -> np.ndarray:
    """What ``napari-medsam segment IMAGE --slice S --box ... [--propagate]`` gives for one row."""
    argv = [
        "segment",
        str(cohort.folder / row["image"]),
        "--slice",
        row["slice"],
        "--box",
        *row["box"].split(),
    ]
    propagate = ["--propagate"] if row["propagate"] != "false" else []
    assert main([*argv, *propagate, "-o", str(out), "--store", str(cohort.store)]) == 0
    return read_image(out)[0] > 0


def test_batch_writes_each_object_as_segment_would_and_reports_every_row(cohort, first_batch, tmp_path):
    assert first_batch.code == 1  # some rows failed
    summary = {(r["image"], r["label"]): r for r in first_batch.summary}
    assert [(r["image"], r["label"], r["status"]) for r in first_batch.summary] == [
        ("a.nii.gz", "1", "done"), ("a.nii.gz", "7", "done"), ("a.nii.gz", "3", "failed"),
        ("a.nii.gz", "4", "failed"), ("b.nii.gz", "1", "done"), ("b.nii.gz", "2", "done"),
        ("bad.nii.gz", "1", "failed"),
    ]  # fmt: skip
    assert "lies wholly outside the image" in summary["a.nii.gz", "3"]["error"]
    assert "slice 9 is outside the volume (0..6" in summary["a.nii.gz", "4"]["error"]
    assert "does not hold what its ending .nii.gz says" in summary["bad.nii.gz", "1"]["error"]
    assert all("\n" not in row["error"] for row in first_batch.summary)
    assert not (first_batch.out / "bad.nii.gz").exists()

    rows = list(csv.DictReader(MANIFEST.splitlines()))
    alone = {i: segment_alone(cohort, rows[i], tmp_path / f"row{i}.nii.gz") for i in (0, 1, 4, 5)}
    for image, labels in (("a.nii.gz", {1: 0, 7: 1}), ("b.nii.gz", {1: 4, 2: 5})):
        written, geometry = read_image(first_batch.out / image)
        np.testing.assert_allclose(geometry.affine, read_image(cohort.folder / image)[1].affine)
        expected = np.zeros_like(written)
        for label, row in labels.items():  # in row order: an earlier row keeps a shared voxel
            assert alone[row].any()
            expected[alone[row] & (expected == 0)] = label
            assert int(summary[image, str(label)]["voxels"]) == np.count_nonzero(written == label)
            assert float(summary[image, str(label)]["volume_ml"]) == pytest.approx(
                np.count_nonzero(written == label) * 27 / 1000, abs=1e-3
            )  # 3 mm voxels
        np.testing.assert_array_equal(written, expected)
        assert {o.label: o.name for o in read_sidecar(first_batch.out / image)} == {
            label: summary[image, str(label)]["name"] for label in labels
        }
    assert (alone[4] & alone[5]).any()  # the overlap rule was exercised
    assert np.flatnonzero(alone[4].any(axis=(1, 2))).tolist() == [3]  # propagate false: key slice only


def test_a_rerun_skips_finished_images_and_repeats_their_numbers(cohort, cluster, first_batch, tmp_path):
    out = shutil.copytree(first_batch.out, tmp_path / "out")  # modification times kept
    b_mtime = (out / "b.nii.gz").stat().st_mtime_ns
    assert run_batch(cohort, cluster.scheduler.address, out) == 1
    again = read_summary(out)
    statuses = [(r["image"], r["status"]) for r in again]
    assert statuses[4:6] == [("b.nii.gz", "skipped")] * 2  # done before, nothing failed
    assert statuses[:2] == [("a.nii.gz", "done")] * 2  # a had failed rows: it runs again
    for before, after in zip(first_batch.summary[4:6], again[4:6], strict=True):
        assert (after["voxels"], after["volume_ml"]) == (before["voxels"], before["volume_ml"])
    assert (out / "b.nii.gz").stat().st_mtime_ns == b_mtime
    changed = cohort.folder / "changed.csv"
    changed.write_text(MANIFEST.replace("37 61 54 81", "36 60 54 81"))
    assert run_batch(cohort, cluster.scheduler.address, out, changed) == 1
    assert [r["status"] for r in read_summary(out)[4:6]] == ["done", "done"]  # its rows changed


def executing_batch_tasks(client) -> dict[str, list[str]]:
    def executing(dask_worker):
        return [str(task.key) for task in dask_worker.state.executing if "batch" in str(task.key)]

    return {address: keys for address, keys in client.run(executing).items() if keys}


def test_a_worker_killed_mid_run_has_its_task_retried(cohort, cluster, first_batch, tmp_path):
    manifest = cohort.folder / "good.csv"  # image paths are relative to the manifest
    manifest.write_text("\n".join(MANIFEST.splitlines()[i] for i in (0, 1, 5)) + "\n")
    pids = cluster.run(os.getpid)
    result = {}
    run = threading.Thread(
        target=lambda: result.update(code=run_batch(cohort, cluster.scheduler.address, tmp_path, manifest))
    )
    run.start()
    deadline = time.monotonic() + TIMEOUT_S
    while not (busy := executing_batch_tasks(cluster)) and run.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert busy, "no batch task was seen running"
    victim = next(iter(busy))
    os.kill(pids[victim], signal.SIGKILL)
    run.join(TIMEOUT_S)
    assert result == {"code": 0}
    assert [r["status"] for r in read_summary(tmp_path)] == ["done", "done"]
    assert victim not in cluster.scheduler_info()["workers"]
    for image in ("a.nii.gz", "b.nii.gz"):  # the same objects as the undisturbed run
        np.testing.assert_array_equal(
            read_image(tmp_path / image)[0] == 1, read_image(first_batch.out / image)[0] == 1
        )


@pytest.fixture
def dask_processes(tmp_path):
    """``dask scheduler`` and one ``dask worker`` as processes on 127.0.0.1; killed at teardown."""
    package_root = str(Path(napari_medsam.__file__).parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    scheduler_file = tmp_path / "scheduler.json"
    local = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--no-dashboard"]
    commands = [
        [str(DASK), "scheduler", *local, "--port", "0", "--scheduler-file", str(scheduler_file)],
        [str(DASK), "worker", *local, "--scheduler-file", str(scheduler_file), "--nthreads", "1"],
    ]
    processes = []
    try:
        for command in commands:
            processes.append(
                subprocess.Popen(command, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
            )
            if command[1] == "scheduler":
                deadline = time.monotonic() + TIMEOUT_S
                while not scheduler_file.is_file() and time.monotonic() < deadline:
                    time.sleep(0.1)
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout=TIMEOUT_S) as client:
            client.wait_for_workers(1, timeout=TIMEOUT_S)
        yield json.loads(scheduler_file.read_text())["address"]
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(TIMEOUT_S)


def test_an_existing_cluster_runs_the_same_batch(cohort, first_batch, dask_processes, tmp_path):
    assert dask_processes.startswith("tcp://127.0.0.1:")
    assert run_batch(cohort, dask_processes, tmp_path) == 1
    again = read_summary(tmp_path)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in again] == [
        {k: v for k, v in r.items() if k not in drop} for r in first_batch.summary
    ]
    for image in ("a.nii.gz", "b.nii.gz"):
        np.testing.assert_array_equal(read_image(tmp_path / image)[0], read_image(first_batch.out / image)[0])


# Killed with SIGKILL at several moments (the command and its local cluster, as an out-of-memory kill
# or a pulled plug would), then run again: the rerun gives what the uninterrupted run gave.
KILL_TIMEOUT_S = 300


def killed_run(args: list[str], moment) -> None:
    """``napari-medsam ARGS --workers 1`` in a process group of its own, SIGKILLed as soon as
    ``moment()`` holds (the whole group: the client and its workers)."""
    package_root = str(Path(napari_medsam.__file__).parents[1])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_medsam.cli", *args, "--workers", "1"],
        env={**os.environ, "PYTHONPATH": path}, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while not moment() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        running = process.poll() is None
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(KILL_TIMEOUT_S)
    assert running, "the command ended before the moment came: kill it earlier"


def visible(folder: Path) -> list[Path]:
    """The files of ``folder`` but hidden ones (a killed write may leave its temporary file)."""
    files = (p.relative_to(folder) for p in folder.rglob("*"))
    return sorted(p for p in files if not any(part.startswith(".") for part in p.parts))


def written(out: Path, pattern: str) -> list[Path]:
    """The files of ``out`` matching ``pattern``, but hidden ones (temporary files being written)."""
    return [p for p in out.glob(pattern) if not p.name.startswith(".")]


BATCH_MOMENTS = {
    "started": lambda out: out.exists(),
    "first labels written": lambda out: bool(written(out, "*.nii.gz")),
    "first image recorded": lambda out: bool(written(out, "*.batch.json")),
}


@pytest.mark.parametrize("moment", list(BATCH_MOMENTS))
def test_batch_killed_then_rerun_gives_the_uninterrupted_result(
    cohort, cluster, first_batch, tmp_path, moment
):
    out = tmp_path / "out"
    args = ["batch", str(cohort.manifest), "-o", str(out), "--store", str(cohort.store)]
    killed_run(args, lambda: BATCH_MOMENTS[moment](out))
    for path in written(out, "*.nii.gz"):  # what the kill left is whole: each file is readable
        read_image(path)
    assert run_batch(cohort, cluster.scheduler.address, out) == 1  # the rerun (the bad rows fail again)
    drop = ("seconds", "status")
    assert [{k: v for k, v in r.items() if k not in drop} for r in read_summary(out)] == [
        {k: v for k, v in r.items() if k not in drop} for r in first_batch.summary
    ]
    assert {r["status"] for r in read_summary(out)} <= {"done", "skipped", "failed"}
    assert visible(out) == visible(first_batch.out)
    for image in ("a.nii.gz", "b.nii.gz"):
        np.testing.assert_array_equal(read_image(out / image)[0], read_image(first_batch.out / image)[0])
        assert read_sidecar(out / image) == read_sidecar(first_batch.out / image)


def stored(store: Path) -> int:
    """How many embeddings ``store`` holds (0 before it exists)."""
    return len(EmbeddingStore(store).entries()) if store.exists() else 0


EMBED_MOMENTS = {  # the store folder appears with its first embedding
    "first slice stored": lambda store: stored(store) >= 1,
    "half the slices stored": lambda store: stored(store) >= 4,
}


@pytest.mark.parametrize("moment", list(EMBED_MOMENTS))
def test_embed_killed_then_rerun_gives_the_uninterrupted_store(cohort, cluster, tmp_path, moment):
    import zarr

    volumes = [str(cohort.folder / name) for name in ("a.nii.gz", "b.nii.gz")]
    address = cluster.scheduler.address
    assert main(["embed", *volumes, "--store", str(cohort.store), "--scheduler", address]) == 0  # whole
    store = tmp_path / "store.zarr"
    killed_run(["embed", *volumes, "--store", str(store)], lambda: EMBED_MOMENTS[moment](store))
    assert main(["embed", *volumes, "--store", str(store), "--scheduler", address]) == 0  # the rerun
    entries = [e.path.relative_to(store) for e in EmbeddingStore(store).entries()]
    assert len(entries) == 8  # slices 8..15 of the CT, each once
    for entry in entries:  # each as the uninterrupted run stored it
        again, reference = zarr.open_array(store / entry), zarr.open_array(cohort.store / entry)
        np.testing.assert_array_equal(again[...], reference[...])
