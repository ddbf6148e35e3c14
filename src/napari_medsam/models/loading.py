"""Resolve a model source (alias, hub id, Hugging Face folder, ``.pth`` file) and load it once."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from napari_medsam.base.errors import ModelLoadError
from napari_medsam.models import LoadedModel
from napari_medsam.models.families import Family, family_spec
from napari_medsam.models.weights import LITE_MEDSAM_SHA256, download_steps, local_checkpoint

if TYPE_CHECKING:
    import torch

    from napari_medsam.base.jobs import Progress

logger = logging.getLogger(__name__)

#: The alias of MedSAM ViT-B (the hub's, or the local copy :data:`MEDSAM_PATH_ENV` names).
MEDSAM_ALIAS = "medsam"
#: Alias -> (Hugging Face hub id, family). "lite-medsam" is the published LiteMedSAM checkpoint
#: (installed, a local copy or downloaded once: :mod:`napari_medsam.models.weights`).
HUB_ALIASES: dict[str, tuple[str, Family]] = {
    MEDSAM_ALIAS: ("flaviagiammarino/medsam-vit-base", "medsam"),
    "sam-vit-base": ("facebook/sam-vit-base", "sam"),
    "sam-vit-large": ("facebook/sam-vit-large", "sam"),
    "sam-vit-huge": ("facebook/sam-vit-huge", "sam"),
}
LITE_ALIAS = "lite-medsam"
#: Environment variable naming a local MedSAM folder or ``.pth`` that the "medsam" alias uses.
MEDSAM_PATH_ENV = "NAPARI_MEDSAM_MEDSAM_PATH"
HUB_TIMEOUT_S = 3.0

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin")
#: Models kept loaded at once (least recently used first out); a ViT-H alone is ~2.5 GB.
MAX_LOADED_MODELS = 2
_loaded: OrderedDict[tuple, LoadedModel] = OrderedDict()
_loaded_lock = threading.Lock()


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is "lite", "hub", "folder" or "checkpoint"."""

    kind: str
    target: str
    family: Family | None = None


def resolve_source(source: str | os.PathLike[str]) -> ModelSource:
    """Classify ``source`` without loading anything; unknown names raise ValueError."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"model source must be a string or path, not {type(source).__name__}")
    text = os.fspath(source).strip()
    if not text:
        raise ValueError("model source is empty")
    alias = text.lower()
    if alias in (LITE_ALIAS, "litemedsam", "lite_medsam"):
        return ModelSource("lite", LITE_ALIAS, "lite-medsam")
    if alias == MEDSAM_ALIAS and os.environ.get(MEDSAM_PATH_ENV):
        local = resolve_source(os.environ[MEDSAM_PATH_ENV])
        return ModelSource(local.kind, local.target, "medsam")
    if alias in HUB_ALIASES:
        repo_id, family = HUB_ALIASES[alias]
        return ModelSource("hub", repo_id, family)
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource("folder", str(path.resolve()))
    if path.is_file():
        return ModelSource("checkpoint", str(path.resolve()))
    if path.suffix in (*_CHECKPOINT_SUFFIXES, ".safetensors") or text.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model file or folder not found: {text}")
    if _HUB_ID.match(text):
        return ModelSource("hub", text)
    names = ", ".join([LITE_ALIAS, *HUB_ALIASES])
    raise ValueError(
        f"unknown model source {text!r}: use one of {names}, a Hugging Face hub id "
        "(owner/name), a local Hugging Face folder or a .pth checkpoint"
    )


def load_model(
    source: str | os.PathLike[str] = LITE_ALIAS,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    family: Family | None = None,
    backend: str = "auto",
) -> LoadedModel:
    """Load a model once per (source, device, dtype, family, backend) and share it afterwards.

    ``backend`` runs the image encoder: ``"torch"``, ``"onnxruntime"`` (the ``[onnx]`` extra),
    ``"openvino"`` (the ``[openvino]`` extra; both float32 on the CPU, converted on first use and
    cached) or ``"auto"`` (the default: the faster of PyTorch and OpenVINO float32 on this CPU,
    measured once and remembered; PyTorch without the extra: :mod:`~napari_medsam.models.backends`).

    At most :data:`MAX_LOADED_MODELS` stay loaded: loading another drops the least recently used
    from the registry (its memory is freed once no predictor holds it). :func:`unload_model`
    drops one or all explicitly.
    """
    from napari_medsam.models.devices import resolve_device, resolve_dtype

    if family is not None:
        family_spec(family)  # ValueError naming the families
    resolved = resolve_source(source)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    from napari_medsam.models.backends import resolve_backend

    backend = resolve_backend(backend, torch_device, torch_dtype)  # "auto" with nothing to choose: "torch"
    with _loaded_lock:
        key = (resolved, family, str(torch_device), torch_dtype, backend)
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
        model = replace(_load(resolved, family, torch_device, torch_dtype), weights=source_digest(resolved))
        model = with_backend(model, backend)  # "auto": measured once on this machine, then remembered
        _loaded[key] = model
        while len(_loaded) > MAX_LOADED_MODELS:
            _, dropped = _loaded.popitem(last=False)
            logger.info("unloading %s to stay within %d loaded models", dropped.name, MAX_LOADED_MODELS)
        return model


def with_backend(model: LoadedModel, backend: str = "auto") -> LoadedModel:
    """``model`` with its encoder run by ``backend`` (see :func:`load_model`; ``"auto"`` measures
    where nothing is remembered yet); the same model for torch."""
    from napari_medsam.models.backends import choose, resolve_backend, with_encoder_backend

    chosen = resolve_backend(backend, model.device, model.dtype)
    if chosen == "auto":
        return choose(model) if model.backend == "torch" else model
    return with_encoder_backend(model, chosen)


def loaded_models() -> list[LoadedModel]:
    """The models the registry holds, least recently used first."""
    with _loaded_lock:
        return list(_loaded.values())


def unload_model(model: LoadedModel | None = None) -> int:
    """Drop ``model`` (None: every model) from the registry; returns how many were dropped.

    The memory is freed once no predictor refers to the model any more; cached CUDA blocks are
    released too.
    """
    with _loaded_lock:
        keys = [key for key, held in _loaded.items() if model is None or held is model]
        for key in keys:
            del _loaded[key]
    if keys:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return len(keys)


def source_digest(source: str | os.PathLike[str] | ModelSource) -> str:
    """The digest of a model's weights (:func:`~napari_medsam.models.identity.weights_digest`).

    LiteMedSAM's is its pinned SHA-256, which every route's file is checked against before it is
    loaded (:mod:`~napari_medsam.models.weights`): nothing is read or downloaded for it here.
    """
    from napari_medsam.models.identity import weights_digest

    resolved = source if isinstance(source, ModelSource) else resolve_source(source)
    if resolved.kind == "lite":
        return LITE_MEDSAM_SHA256
    return weights_digest(resolved.target if resolved.kind != "hub" else _hub_snapshot(resolved.target))


def fetch_steps(source: str | os.PathLike[str]) -> Generator[Progress, None, None]:
    """Download what loading ``source`` needs, yielding ``(done, total, message)`` meanwhile.

    Today that is LiteMedSAM's checkpoint when no local route has it
    (:func:`~napari_medsam.models.weights.download_steps`); nothing for every other source (hub
    models download inside :func:`load_model`). Run it before loading, where progress can be
    shown (the widget's job, the CLI).
    """
    if resolve_source(source).kind == "lite" and local_checkpoint() is None:
        yield from download_steps()


def _load(
    source: ModelSource, family: Family | None, device: torch.device, dtype: torch.dtype
) -> LoadedModel:
    if source.kind == "lite":
        from napari_medsam.models.lite_medsam import load_lite_medsam

        return load_lite_medsam(None, device=device, dtype=dtype)
    if source.kind == "checkpoint":
        return _load_checkpoint(Path(source.target), family, device, dtype)
    if source.kind == "folder":
        return _load_pretrained(source.target, source.target, family or source.family, device, dtype)
    folder = _hub_snapshot(source.target)
    return _load_pretrained(folder, source.target, family or source.family, device, dtype)


def _load_checkpoint(
    path: Path, family: Family | None, device: torch.device, dtype: torch.dtype
) -> LoadedModel:
    from napari_medsam.models.lite_medsam import is_lite_medsam_state_dict, load_lite_medsam
    from napari_medsam.models.sam_checkpoint import load_segment_anything_checkpoint

    encoder = None if family is None else family_spec(family).encoder
    if _peek_is_lite(path, is_lite_medsam_state_dict):
        if encoder not in (None, "TinyViT"):
            raise ValueError(f"{path.name} is a LiteMedSAM checkpoint; it cannot run as family {family!r}")
        logger.info("%s: LiteMedSAM checkpoint (TinyViT encoder)", path.name)
        model = load_lite_medsam(path, device=device, dtype=dtype)
    elif encoder == "TinyViT":
        raise ValueError(f"{path.name} is not a LiteMedSAM checkpoint (no TinyViT encoder keys)")
    else:
        model = load_segment_anything_checkpoint(path, family=family, device=device, dtype=dtype)
    # The full path (not just the file name) names the model in embedding-cache keys.
    return replace(model, name=str(path))


def _peek_is_lite(path: Path, is_lite: object) -> bool:
    """Look at a checkpoint's keys cheaply (memory-mapped); False when it cannot be read that way."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable here: the full loader reports the problem
        return False
    if isinstance(state, dict):
        for nested in ("model", "state_dict"):
            if isinstance(state.get(nested), dict):
                state = state[nested]
    return isinstance(state, dict) and bool(is_lite(state))  # type: ignore[operator]


def _family_of_folder(folder: Path, hidden_size: int) -> Family:
    """MedSAM if the processor skips mean/std normalisation, else SAM (ViT-L/H are always SAM)."""
    config = folder / "preprocessor_config.json"
    if hidden_size > 768:
        return "sam"
    if config.is_file():
        try:
            do_normalize = json.loads(config.read_text()).get("do_normalize", True)
        except (OSError, ValueError):
            do_normalize = True
        return "medsam" if do_normalize is False else "sam"
    return "sam"


def _load_pretrained(
    folder: str, name: str, family: Family | None, device: torch.device, dtype: torch.dtype
) -> LoadedModel:
    from transformers import SamModel

    from napari_medsam.models.fast_vit import SamImageEncoder

    if not (Path(folder) / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        sam = SamModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"could not load a SAM model from {folder}: {err}") from err
    if family is None:
        family = _family_of_folder(Path(folder), sam.config.vision_config.hidden_size)
        logger.info("%s: family %r inferred from its processor config", name, family)
    if family_spec(family).encoder != "ViT":
        raise ValueError(f"a Hugging Face SAM folder cannot run as {family!r} (its encoder is a ViT)")
    sam = sam.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedModel(family, sam, SamImageEncoder(sam), name, device, dtype)


def _hub_snapshot(repo_id: str) -> str:
    """The local folder of a hub model: from the cache first, downloading only if the hub answers."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached (huggingface_hub raises several error types here)
        pass
    _ensure_hub_reachable(repo_id)
    logger.info("downloading %s from the Hugging Face hub", repo_id)
    try:
        files = HfApi().list_repo_files(repo_id)
        # safetensors when the repository has them; otherwise the PyTorch weights (read weights_only)
        weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin"
        return snapshot_download(repo_id, allow_patterns=["*.json", weights])
    except Exception as err:
        raise ModelLoadError(f"could not download {repo_id!r}: {err}. {_OFFLINE_ADVICE}") from err


_OFFLINE_ADVICE = (
    "Use LiteMedSAM (source 'lite-medsam'; offline once its weights are here), or download the "
    "weights where the hub is reachable and pass the local folder (save_pretrained) or an original "
    "MedSAM/SAM .pth file"
)


def _ensure_hub_reachable(repo_id: str) -> None:
    """Fail within seconds, with advice, when the hub is switched off or cannot be reached."""
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    if constants.HF_HUB_OFFLINE or offline.strip().lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(
            f"{repo_id!r} is not on this machine and HF_HUB_OFFLINE is set. {_OFFLINE_ADVICE}"
        )
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as err:
        raise ModelLoadError(
            f"{repo_id!r} is not on this machine and the Hugging Face hub cannot be reached "
            f"({err}). {_OFFLINE_ADVICE}"
        ) from err


def is_available_offline(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` can be loaded without any download."""
    try:
        resolved = resolve_source(source)
    except (ValueError, TypeError, FileNotFoundError):
        return False
    if resolved.kind == "lite":
        try:
            return local_checkpoint() is not None
        except ModelLoadError:
            return False
    if resolved.kind != "hub":
        return True
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(resolved.target, local_files_only=True))
    except Exception:
        return False
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return has_weights and (folder / "config.json").is_file()


def default_source() -> str:
    """MedSAM ViT-B when its weights are already on this machine, else LiteMedSAM."""
    return MEDSAM_ALIAS if is_available_offline(MEDSAM_ALIAS) else LITE_ALIAS
