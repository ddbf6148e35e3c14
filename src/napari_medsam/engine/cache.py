"""An LRU cache of image embeddings, bounded in bytes and keyed by what decides the embedding."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_BYTES = 1 << 30
#: The size of every family's embedding as cached: 256 x 64 x 64 float16.
EMBEDDING_BYTES = 256 * 64 * 64 * 2


def embeddings_held(max_bytes: int) -> int:
    """How many embeddings a cache of ``max_bytes`` holds."""
    return max_bytes // EMBEDDING_BYTES


class EmbeddingKey(NamedTuple):
    """Everything an embedding depends on: the model, the slice's data, the window, the procedure."""

    model: str
    data: str
    window: tuple[float, float] | None
    preprocessing: int


def data_signature(image: np.ndarray) -> str:
    """A hash of an array's values, shape and dtype (a stale cache entry is never reused)."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


class EmbeddingCache:
    """Least-recently-used embeddings, at most ``max_bytes`` in all (stored on the CPU)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[EmbeddingKey, tuple[torch.Tensor, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached embeddings."""
        with self._lock:
            return sum(_nbytes(tensor) for tensor, _ in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: EmbeddingKey) -> tuple[torch.Tensor, Any] | None:
        """The (embedding, metadata) stored under ``key``, marked as recently used; None if absent."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: EmbeddingKey, embedding: torch.Tensor, metadata: Any = None) -> None:
        """Store an embedding, evicting the least recently used ones to stay within ``max_bytes``."""
        size = _nbytes(embedding)
        with self._lock:
            self._entries.pop(key, None)
            if size > self.max_bytes:
                return
            self._entries[key] = (embedding, metadata)
            total = sum(_nbytes(tensor) for tensor, _ in self._entries.values())
            while total > self.max_bytes:
                _, (evicted, _) = self._entries.popitem(last=False)
                total -= _nbytes(evicted)

    def clear(self) -> None:
        """Drop every embedding."""
        with self._lock:
            self._entries.clear()


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.element_size() * tensor.nelement()
