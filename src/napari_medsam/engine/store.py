"""The embedding store: a disk tier under the memory cache, a zarr (v3) hierarchy of slice embeddings.

Layout (the index is the directory structure; nothing is shared between entries)::

    STORE.zarr/                       group, attributes {"napari-medsam-embeddings": 1}
      m-<hash of model identity>/     group: the model's name, family, dtype, weights digest
        <low>_<high> | min-max/       group: the intensity window
          <signature[:2]>/            group: a fan-out level, so no folder holds every slice
            <signature>/              array (1, 256, 64, 64) float16, one compressed chunk,
                                      attributes: the full key, the input geometry, the volume,
                                      the SHA-256 of the array

Each entry is written into a hidden folder beside its place (``.<name>.tmp-<random>``, the names
of :mod:`napari_medsam.base.atomic`) and renamed into place, so a reader sees a whole entry or
none, and processes writing different slices never touch the same file; two writing the same
slice race harmlessly (the first rename wins). Groups are created the same way, once.
An entry is used only when its attributes equal the key asked for and its array has the SHA-256
recorded with it, so a stale or foreign entry (another model, window, preprocessing version or
slice), a missing or damaged chunk, or a chunk copied from another entry is never used: it is
removed, and the caller encodes the slice again and writes it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medsam.base.atomic import TMP_MARK, temp_path
from napari_medsam.base.errors import import_extra
from napari_medsam.engine.cache import EmbeddingKey
from napari_medsam.models.preprocessing import InputGeometry

if TYPE_CHECKING:
    import torch

    from napari_medsam.models import LoadedModel

logger = logging.getLogger(__name__)

#: The root group's attribute that marks a napari-medsam store (and its layout version).
STORE_ATTRIBUTE = "napari-medsam-embeddings"
STORE_FORMAT = 1
_METADATA = "zarr.json"
#: Where zarr keeps an entry's one chunk (the default chunk key encoding of a 4D array).
_CHUNK = Path("c", "0", "0", "0", "0")
#: Unfinished writes older than this are left-overs of a crashed process (removed by ``prune``).
_STALE_PARTIAL_S = 3600.0
_volume: ContextVar[str | None] = ContextVar("napari_medsam_store_volume", default=None)


@contextlib.contextmanager
def store_volume(name: str | None) -> Iterator[None]:
    """Entries written inside (in this thread or task) are reported under volume ``name``."""
    token = _volume.set(name)
    try:
        yield
    finally:
        _volume.reset(token)


@dataclass(frozen=True)
class StoredModel:
    """The model a part of the store belongs to, as its group's attributes say."""

    name: str
    family: str
    dtype: str
    weights: str
    preprocessing: int

    @classmethod
    def of(cls, model: LoadedModel, preprocessing: int) -> StoredModel:
        """How ``model`` is described in the store."""
        dtype = str(model.dtype).removeprefix("torch.")
        return cls(model.name, model.family, dtype, model.weights, preprocessing)

    @classmethod
    def from_attributes(cls, attributes: dict[str, Any]) -> StoredModel:
        """Inverse of ``dataclasses.asdict``; KeyError for a group that is not a model's."""
        return cls(**{field.name: attributes[field.name] for field in fields(cls)})

    def describe(self) -> str:
        """One line: ``name (family, dtype, preprocessing N, weights 1c4f0a2e9b3d)``."""
        return (
            f"{self.name} ({self.family}, {self.dtype}, preprocessing {self.preprocessing}, "
            f"weights {self.weights[:12] or '-'})"
        )

    def matches(self, wanted: str) -> bool:
        """Whether ``wanted`` names this model: its name as loaded (``lite-medsam``, a hub id, a
        checkpoint path) or at least 6 leading characters of its weights digest."""
        return wanted == self.name or (len(wanted) >= 6 and self.weights.startswith(wanted))


@dataclass(frozen=True)
class StoredEntry:
    """One embedding on disk: where, which model and volume, how large, when last used."""

    path: Path
    model: StoredModel
    volume: str | None
    nbytes: int
    used: float


@dataclass(frozen=True)
class StoreUsage:
    """Entries and bytes of one model and volume."""

    model: StoredModel
    volume: str | None
    entries: int
    nbytes: int


class EmbeddingStore:
    """Slice embeddings on disk, keyed as :class:`~napari_medsam.engine.cache.EmbeddingCache` is.

    Safe to share between processes and machines (a shared file system). The folder is created
    with the first embedding written; an existing folder that is not empty and not a store raises
    ValueError.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._zarr = import_extra("zarr", "the embedding store")
        self.path = Path(path).expanduser().absolute()  # the same folder for every worker
        self._groups: set[Path] = set()
        empty = self.path.is_dir() and not any(self.path.iterdir())
        if self.path.exists() and not empty and not self._is_store():
            raise ValueError(f"{self.path} exists and is not a napari-medsam embedding store")

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r})"

    def entry_path(self, key: EmbeddingKey) -> Path:
        """Where the embedding of ``key`` lives."""
        return self._model_path(key) / _window_name(key.window) / key.data[:2] / key.data

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has an entry with its metadata and chunk (:meth:`get` also checks the data)."""
        if not isinstance(key, EmbeddingKey):
            return False
        path = self.entry_path(key)
        return (path / _METADATA).is_file() and (path / _CHUNK).is_file()

    def get(self, key: EmbeddingKey) -> tuple[torch.Tensor, InputGeometry] | None:
        """The (float16 embedding, input geometry) stored under ``key``; None if absent, foreign or
        damaged (a damaged or foreign entry is removed, so the next :meth:`put` writes it again)."""
        import torch

        path = self.entry_path(key)
        if not (path / _METADATA).is_file():
            return None
        try:
            array = self._zarr.open_array(path, mode="r")
            attributes = array.attrs.asdict()
            if attributes.get("key") != _key_attributes(key):
                raise ValueError(f"it holds the embedding of {attributes.get('key')}")
            if not (path / _CHUNK).is_file():
                raise ValueError("its chunk is missing")
            data = array[...]
            if attributes.get("sha256") != _checksum(data):
                raise ValueError("its data does not have the checksum recorded with it")
            embedding = torch.from_numpy(data)
            geometry = _geometry(attributes["geometry"])
        except Exception as error:  # foreign, damaged (truncated chunk, bad JSON) or swapped: re-encode
            logger.warning("%s is not usable (%s); removing it", path, error)
            shutil.rmtree(path, ignore_errors=True)
            return None
        with contextlib.suppress(OSError):  # last use, for pruning; a read-only store still reads
            os.utime(path / _METADATA)
        return embedding, geometry

    def put(
        self, key: EmbeddingKey, embedding: torch.Tensor, geometry: InputGeometry, model: LoadedModel
    ) -> bool:
        """Store an embedding (atomically); False when the slice was already stored."""
        path = self.entry_path(key)
        if key in self:
            return False
        shutil.rmtree(path, ignore_errors=True)  # a chunkless left-over; get() removes other damage
        model_path = self._model_path(key)
        self._ensure_group(self.path, {STORE_ATTRIBUTE: STORE_FORMAT})
        self._ensure_group(model_path, asdict(StoredModel.of(model, key.preprocessing)))
        self._ensure_group(path.parent.parent, {"window": _key_attributes(key)["window"]})
        self._ensure_group(path.parent, {})
        data = embedding.detach().to("cpu").contiguous().numpy()
        attributes = {
            "key": _key_attributes(key),
            "geometry": asdict(geometry),
            "volume": _volume.get(),
            "sha256": _checksum(data),
        }
        tmp = _beside(path)
        codecs = import_extra("zarr.codecs", "the embedding store")
        self._zarr.create_array(
            store=str(tmp),
            data=data,
            chunks=data.shape,
            compressors=codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
            attributes=attributes,
        )
        return self._publish(tmp, path)

    def entries(self) -> list[StoredEntry]:
        """Every embedding in the store (reads each entry's metadata: slow on very large stores)."""
        found = []
        for model_dir in _subfolders(self.path):
            try:
                model = StoredModel.from_attributes(_attributes(model_dir))
            except (OSError, ValueError, KeyError, TypeError):  # being created, or not ours
                continue
            for entry in (e for w in _subfolders(model_dir) for f in _subfolders(w) for e in _subfolders(f)):
                try:
                    metadata = entry / _METADATA
                    volume = json.loads(metadata.read_text()).get("attributes", {}).get("volume")
                    used = metadata.stat().st_mtime
                    nbytes = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                except (OSError, ValueError):  # removed meanwhile, or being written
                    continue
                found.append(StoredEntry(entry, model, volume, nbytes, used))
        return found

    def usage(self) -> list[StoreUsage]:
        """Entries and bytes per model and volume, largest first; an entry without its chunk is not
        counted (it is encoded again when used, and :meth:`prune` removes it)."""
        totals: dict[tuple[StoredModel, str | None], list[int]] = {}
        for entry in self.entries():
            if not (entry.path / _CHUNK).is_file():
                continue
            total = totals.setdefault((entry.model, entry.volume), [0, 0])
            total[0] += 1
            total[1] += entry.nbytes
        rows = [StoreUsage(model, volume, n, size) for (model, volume), (n, size) in totals.items()]
        return sorted(rows, key=lambda row: (-row.nbytes, row.model.name, row.volume or ""))

    def prune(self, max_bytes: int | None = None, model: str | None = None) -> tuple[int, int]:
        """Remove least recently used entries until at most ``max_bytes`` remain; returns (entries, bytes).

        With ``model`` (a name, or the start of a weights digest; :meth:`StoredModel.matches`)
        only that model's entries are considered, and without ``max_bytes`` all of them go.
        """
        self._remove_stale_partials()
        entries = [e for e in self.entries() if model is None or e.model.matches(model)]
        entries.sort(key=lambda entry: entry.used)
        total = sum(entry.nbytes for entry in entries)
        limit = 0 if max_bytes is None else max_bytes
        removed = freed = 0
        for entry in entries:
            if total - freed <= limit:
                break
            shutil.rmtree(entry.path, ignore_errors=True)
            removed, freed = removed + 1, freed + entry.nbytes
        return removed, freed

    # ------------------------------------------------------------------ layout

    def _is_store(self) -> bool:
        try:
            return _attributes(self.path).get(STORE_ATTRIBUTE) == STORE_FORMAT
        except (OSError, ValueError):
            return False

    def _model_path(self, key: EmbeddingKey) -> Path:
        digest = hashlib.sha256(f"{key.model}|{key.preprocessing}".encode()).hexdigest()[:24]
        return self.path / f"m-{digest}"

    def _ensure_group(self, path: Path, attributes: dict[str, Any]) -> None:
        if path in self._groups or (path / _METADATA).is_file():
            self._groups.add(path)
            return
        path.parent.mkdir(parents=True, exist_ok=True)  # the store's own parent, for the root
        tmp = _beside(path)
        self._zarr.open_group(str(tmp), mode="w", attributes=attributes)
        self._publish(tmp, path)
        self._groups.add(path)

    @staticmethod
    def _publish(tmp: Path, path: Path) -> bool:
        """Rename a finished ``tmp`` folder to ``path``; False (and ``tmp`` removed) if one is there."""
        try:
            os.rename(tmp, path)
            return True
        except OSError:
            if not (path / _METADATA).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return False

    def _remove_stale_partials(self) -> None:
        for partial in self.path.rglob(f".*{TMP_MARK}*"):
            with contextlib.suppress(OSError):
                if time.time() - partial.stat().st_mtime > _STALE_PARTIAL_S:
                    shutil.rmtree(partial, ignore_errors=True)


def _key_attributes(key: EmbeddingKey) -> dict[str, Any]:
    return {
        "model": key.model,
        "data": key.data,
        "window": None if key.window is None else [float(v) for v in key.window],
        "preprocessing": key.preprocessing,
    }


def _window_name(window: tuple[float, float] | None) -> str:
    return "min-max" if window is None else f"{float(window[0])!r}_{float(window[1])!r}"


def _geometry(stored: dict[str, Any]) -> InputGeometry:
    return InputGeometry(
        family=stored["family"],
        original=tuple(stored["original"]),
        resized=tuple(stored["resized"]),
        input_size=int(stored["input_size"]),
    )


def _attributes(folder: Path) -> dict[str, Any]:
    return json.loads((folder / _METADATA).read_text()).get("attributes", {})


def _beside(path: Path) -> Path:
    """A hidden folder next to ``path`` to write into before the rename (same file system)."""
    return temp_path(path)


def _checksum(data: Any) -> str:
    """SHA-256 of an embedding's bytes (float16, C order), as recorded with each entry."""
    return hashlib.sha256(np.ascontiguousarray(data, dtype=np.float16).tobytes()).hexdigest()


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []
