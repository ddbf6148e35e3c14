"""Encoder graphs on disk (ONNX, OpenVINO IR): named by what they depend on, verified before use.

A graph is converted from the weights a model was loaded with, once, and kept in a cache folder.
Its files are named by a hash of :func:`cache_key` (the weights digest, family and dtype of
:attr:`LoadedModel.identity`, the input size, the graph format and whatever else the caller
adds), and a JSON sidecar beside them records that key and each file's SHA-256. A file is used
only when the sidecar records the key asked for and every file's SHA-256 still matches: a damaged
or foreign file is rebuilt, never trusted. Files are written atomically (``base/atomic``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from napari_medsam.base.atomic import write_bytes
from napari_medsam.models.weights import user_cache_dir

if TYPE_CHECKING:
    from napari_medsam.models import LoadedModel

logger = logging.getLogger(__name__)


def cache_folder(env: str, name: str) -> Path:
    """``$env`` when set, else ``name`` in napari-medsam's cache folder
    (:func:`~napari_medsam.models.weights.user_cache_dir`)."""
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    return user_cache_dir() / name


class GraphEncoder(nn.Module):
    """``pixel_values`` (B, 3, S, S) -> image embeddings through a converted graph of batch 1 (a
    batch runs slice by slice, each run using every core). Holds no weights of its own; returns
    float32 CPU tensors. Subclasses run one slice: :meth:`run_one`."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def run_one(self, pixels: np.ndarray) -> np.ndarray:
        """The embedding of one (1, 3, S, S) float32 array."""
        raise NotImplementedError

    def forward(self, pixel_values: Tensor) -> Tensor:
        pixels = np.ascontiguousarray(pixel_values.detach().to("cpu", torch.float32).numpy())
        outputs = [self.run_one(pixels[i : i + 1]) for i in range(len(pixels))]
        return torch.from_numpy(outputs[0] if len(outputs) == 1 else np.concatenate(outputs))

    def extra_repr(self) -> str:
        return self.path.name


def weights_identity(model: LoadedModel) -> str:
    """The model's identity (weights digest, family, dtype); in-memory models: a digest of the encoder's
    tensors instead of their name (two random models of the same name must not share a graph)."""
    if model.weights:
        return model.identity
    digest = hashlib.sha256()
    for name, tensor in model.encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return dataclasses.replace(model, weights=f"tensors:{digest.hexdigest()}").identity


def cache_key(model: LoadedModel, graph_format: int, **extra: object) -> dict[str, object]:
    """Everything a cached graph of ``model`` depends on, plus the caller's ``extra`` entries."""
    return {
        "format": graph_format,
        "identity": weights_identity(model),
        "family": model.family,
        "input_size": model.spec.input_size,
        **extra,
    }


def key_name(key: dict[str, object]) -> str:
    """A short file-name part that differs for every key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def sidecar_path(first: Path) -> Path:
    """The sidecar of a graph whose first file is ``first``."""
    return first.with_suffix(".json")


def read_verified(paths: Sequence[Path], key: dict[str, object]) -> list[bytes] | None:
    """The files' bytes, if their sidecar records ``key`` and each file's SHA-256; else None (rebuild)."""
    sidecar = sidecar_path(paths[0])
    if not sidecar.is_file() or not all(path.is_file() for path in paths):
        return None
    try:
        recorded = json.loads(sidecar.read_text())
        data = [path.read_bytes() for path in paths]
    except (OSError, ValueError) as error:
        logger.warning("cached graph %s unreadable (%s): rebuilding it", paths[0], error)
        return None
    if not isinstance(recorded, dict) or recorded.get("key") != key:
        logger.warning("cached graph %s belongs to another model: rebuilding it", paths[0])
        return None
    digests = [hashlib.sha256(blob).hexdigest() for blob in data]
    if recorded.get("sha256") != {path.name: digest for path, digest in zip(paths, digests, strict=True)}:
        logger.warning("cached graph %s is damaged (its SHA-256 changed): rebuilding it", paths[0])
        return None
    return data


def write_verified(paths: Sequence[Path], data: Sequence[bytes], key: dict[str, object], **note: str) -> None:
    """Write the files, then their sidecar (with ``note`` entries, e.g. library versions), each
    atomically; a reader sees a complete set or rebuilds. Failures are logged, not raised."""
    try:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        digests = {}
        for path, blob in zip(paths, data, strict=True):
            write_bytes(path, blob)
            digests[path.name] = hashlib.sha256(blob).hexdigest()
        record = {"key": key, "sha256": digests, **note}
        write_bytes(sidecar_path(paths[0]), json.dumps(record).encode())
    except OSError as error:
        logger.warning("could not write the graph cache %s: %s (converted again next time)", paths[0], error)
