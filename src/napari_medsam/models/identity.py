"""A model's identity for embedding caches and stores: a digest of its weight files, not their path.

The same checkpoint copied to another folder or machine gives the same digest, so embeddings
computed there are found here; a changed file gives another one.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

_CHUNK = 1 << 20
#: Digests by (path, size, mtime): a file is hashed once per process.
_digests: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def _key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (the bundled LiteMedSAM's equals its published hash)."""
    key = _key(path)
    with _lock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    with _lock:
        _digests[key] = digest.hexdigest()
    return _digests[key]


def record_digest(path: Path, sha256: str) -> None:
    """Remember ``sha256`` as the digest of ``path``, computed while the file was written (so
    :func:`file_digest` does not read it again)."""
    key = _key(path)
    with _lock:
        _digests[key] = sha256


def folder_files(folder: Path) -> list[Path]:
    """What a Hugging Face folder's model is made of: its JSON configs and the weights loaded.

    transformers loads ``*.safetensors`` when there are any, else ``*.bin``.
    """
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return sorted(folder.glob("*.json")) + weights


def weights_digest(location: str | os.PathLike[str]) -> str:
    """The digest of a checkpoint file, or of a Hugging Face folder (file names and contents)."""
    path = Path(location)
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in folder_files(path):
        digest.update(f"{file.name}\0{file_digest(file)}\0".encode())
    return digest.hexdigest()
