"""ONNX Runtime image encoders: the loaded encoder exported to ONNX once, cached on disk, run on the CPU.

The graph is exported (``torch.onnx.export``, the dynamo exporter) from the weights the model was
loaded with, the first time a model is asked for with ``backend="onnxruntime"``; later loads read
it from :func:`default_cache_dir`. A cache file is named by a hash of everything the graph depends
on (:func:`cache_key`: the weights digest, family and dtype of :attr:`LoadedModel.identity`, the
format version) and is used only when its sidecar says so and the file's SHA-256
matches the one recorded when it was written; a damaged or foreign file is rebuilt, never trusted.

ONNX Runtime, onnx and onnxscript (what torch's exporter needs) are the optional ``[onnx]`` extra
(``pip install 'napari-medsam[onnx]'``): asking for ``backend="onnxruntime"`` without them raises
``MissingExtraError`` naming it. ``"auto"`` chooses ONNX Runtime only for the families in
:data:`AUTO_ONNX_FAMILIES` (none yet: :data:`AUTO_DECISIONS` has the measurements), on the CPU, in
float32, when it is installed; so ``"auto"`` never needs the extra. The graph runs float32 only: the
dynamic int8 variant was removed because it failed the fidelity guard (mask IoU mean 0.89, worst
0.36 on real CT). The prompt encoder and mask decoder stay in PyTorch (``models/fast_decoder.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor, nn

from napari_medsam.base.atomic import write_bytes
from napari_medsam.base.errors import ModelLoadError, import_extra
from napari_medsam.models import BACKENDS
from napari_medsam.models.preprocessing import INPUT_SIZE
from napari_medsam.models.weights import user_cache_dir

if TYPE_CHECKING:
    import onnxruntime

    from napari_medsam.models import Family, LoadedModel

logger = logging.getLogger(__name__)

Backend = Literal["torch", "onnxruntime"]
#: What the ONNX Runtime backend needs (the ``[onnx]`` extra): the runtime, and torch's exporter's.
ONNX_MODULES = ("onnxruntime", "onnx", "onnxscript")
_PURPOSE = "the ONNX Runtime encoder backend"

#: Families for which ``backend="auto"`` runs the float32 ONNX Runtime encoder on the CPU: those
#: whose masks passed the fidelity guard against PyTorch float32 (mask IoU mean >= 0.99, worst
#: >= 0.97, a box from the label on every organ slice of the shared real CT) AND whose encoder
#: ran faster than PyTorch's, measured with ``benchmarks/bench_inference.py`` (not at run time).
#: None qualifies yet: see :data:`AUTO_DECISIONS`.
AUTO_ONNX_FAMILIES: frozenset[str] = frozenset()
#: The measured decision per family (2-core AMD EPYC with AVX-512, torch 2.13, onnxruntime 1.32).
AUTO_DECISIONS: dict[str, str] = {
    "lite-medsam": "torch. ONNX Runtime float32 passes the guard (IoU mean 1.0000, worst 1.0000 over "
    "162 organ slices, real weights) but is no faster: both run TinyViT's ~35 GMAC near the float32 "
    "limit of two cores (embedding 0.80-0.97 s vs torch 0.86-0.95 s interleaved on a quiet machine, "
    "1.8 s vs 1.4 s on a busy one), it shares the cores worse with the pipelined decoder, and a first "
    "start pays the export (~7 s)",
    "medsam": "torch: no real MedSAM weights offline to measure the guard on; on a random ViT-B, ONNX "
    "Runtime float32 took 0.59x of transformers' time against 0.62x for torch's fast ViT (one run)",
    "sam": "torch: no real SAM weights offline to measure the guard on",
}
#: Bump when the exported graph changes for the same weights (old cache files are then rebuilt).
ONNX_FORMAT = 1
OPSET = 18
#: Where the ONNX cache lives (default: ``onnx`` in :func:`~napari_medsam.models.weights.user_cache_dir`).
CACHE_ENV = "NAPARI_MEDSAM_ONNX_CACHE"
#: The largest graph kept in one file (protobuf's 2 GiB limit); SAM ViT-H is larger.
MAX_GRAPH_BYTES = 2**31 - 2**24
_INPUT, _OUTPUT = "pixel_values", "image_embeddings"
_METADATA_KEY = "napari-medsam"


def onnx_extra_installed() -> bool:
    """Whether the ``[onnx]`` extra's modules are installed (``"auto"`` keeps torch without them)."""
    return all(importlib.util.find_spec(module) is not None for module in ONNX_MODULES)


def resolve_backend(backend: str, family: Family, device: torch.device, dtype: torch.dtype) -> Backend:
    """Turn ``"auto"``, ``"torch"`` or ``"onnxruntime"`` into the backend to run.

    ``"auto"``: ONNX Runtime for the families of :data:`AUTO_ONNX_FAMILIES` on the CPU in float32
    when the ``[onnx]`` extra is installed, else PyTorch (CUDA and MPS keep PyTorch).
    ``"onnxruntime"`` runs only on the CPU, in float32, and raises ``MissingExtraError`` (naming the
    extra) without it.
    """
    if not isinstance(backend, str) or backend.strip().lower() not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    name = backend.strip().lower()
    if name == "auto":
        if device.type == "cpu" and dtype == torch.float32 and family in AUTO_ONNX_FAMILIES:
            if onnx_extra_installed():
                return "onnxruntime"
            logger.warning("the [onnx] extra is not installed: the %s encoder runs in PyTorch", family)
        return "torch"
    if name != "torch":
        if device.type != "cpu":
            raise ValueError(f"backend {name!r} runs on the CPU only; use device 'cpu' or backend 'torch'")
        if dtype != torch.float32:
            raise ValueError(f"backend {name!r} runs float32 graphs; use dtype 'float32' or backend 'torch'")
        for module in ONNX_MODULES:
            import_extra(module, _PURPOSE, "onnx")
    return name  # type: ignore[return-value]


def default_cache_dir() -> Path:
    """``$NAPARI_MEDSAM_ONNX_CACHE``, else ``onnx`` in napari-medsam's cache
    (:func:`~napari_medsam.models.weights.user_cache_dir`)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return user_cache_dir() / "onnx"


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


def cache_key(model: LoadedModel) -> dict[str, object]:
    """Everything a cached graph depends on (recorded in its sidecar and its ONNX metadata)."""
    return {
        "format": ONNX_FORMAT,
        "identity": weights_identity(model),
        "family": model.family,
        "input_size": INPUT_SIZE[model.family],
    }


def cache_path(model: LoadedModel, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache file of ``model``'s graph: one name per :func:`cache_key`."""
    key = json.dumps(cache_key(model), sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{model.family}-float32-{name}.onnx"


class OnnxEncoder(nn.Module):
    """``pixel_values`` (B, 3, S, S) -> image embeddings (B, 256, 64, 64) through an ONNX Runtime session.

    Holds no weights of its own (the session has them); returns float32 CPU tensors.
    """

    def __init__(self, session: onnxruntime.InferenceSession, path: Path) -> None:
        super().__init__()
        self.session = session
        self.path = path

    def forward(self, pixel_values: Tensor) -> Tensor:
        pixels = pixel_values.detach().to("cpu", torch.float32).numpy()
        # the graph has batch 1: a batch runs slice by slice (each run uses every core)
        outputs = [self.session.run(None, {_INPUT: pixels[i : i + 1]})[0] for i in range(len(pixels))]
        return torch.from_numpy(outputs[0] if len(outputs) == 1 else np.concatenate(outputs))

    def extra_repr(self) -> str:
        return self.path.name


def onnx_encoder(model: LoadedModel, cache_dir: str | os.PathLike[str] | None = None) -> OnnxEncoder:
    """The ONNX Runtime encoder of ``model`` (float32 CPU): from the cache, else exported and cached."""
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise ValueError("the ONNX graph is exported from a float32 model on the CPU")
    return OnnxEncoder(_session(onnx_graph_bytes(model, cache_dir)), cache_path(model, cache_dir))


def session_options() -> onnxruntime.SessionOptions:
    """One intra-op thread per physical core (torch's default thread count), no spinning, all graph
    optimisations: the encoder shares the CPU with the decoder and the viewer."""
    onnxruntime = import_extra("onnxruntime", _PURPOSE, "onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle worker threads sleep instead of spinning: with spinning they hold both cores between
    # encoder runs and slow the PyTorch decoder (and the viewer) beside them
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _session(graph: bytes) -> onnxruntime.InferenceSession:
    onnxruntime = import_extra("onnxruntime", _PURPOSE, "onnx")
    return onnxruntime.InferenceSession(graph, session_options(), providers=["CPUExecutionProvider"])


def _read_cached(path: Path, key: dict[str, object]) -> bytes | None:
    """The cached graph, if its sidecar records ``key`` and the file's SHA-256; else None (rebuild)."""
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        return None
    try:
        recorded = json.loads(sidecar.read_text())
        graph = path.read_bytes()
    except (OSError, ValueError) as error:
        logger.warning("ONNX cache %s unreadable (%s): rebuilding it", path, error)
        return None
    if not isinstance(recorded, dict) or recorded.get("key") != key:
        logger.warning("ONNX cache %s belongs to another model: rebuilding it", path)
        return None
    if recorded.get("sha256") != hashlib.sha256(graph).hexdigest():
        logger.warning("ONNX cache %s is damaged (its SHA-256 changed): rebuilding it", path)
        return None
    if _graph_key(graph) != key:
        logger.warning("ONNX cache %s holds another model's graph: rebuilding it", path)
        return None
    return graph


def _graph_key(graph: bytes) -> dict[str, object] | None:
    """The key recorded in a graph's own metadata (None: none, or not a readable graph)."""
    onnx = import_extra("onnx", _PURPOSE, "onnx")
    try:
        proto = onnx.load_model_from_string(graph)
        text = {p.key: p.value for p in proto.metadata_props}.get(_METADATA_KEY)
        return None if text is None else json.loads(text)
    except Exception:  # a damaged protobuf raises several error types
        return None


def _write_cached(path: Path, key: dict[str, object], graph: bytes) -> None:
    """Write graph and sidecar atomically (a reader sees both or an old pair); failures are logged."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "sha256": hashlib.sha256(graph).hexdigest(), "torch": torch.__version__}
        for target, data in ((path, graph), (path.with_suffix(".json"), json.dumps(record).encode())):
            write_bytes(target, data)
    except OSError as error:
        logger.warning("could not write the ONNX cache %s: %s (exported again next time)", path, error)


def onnx_graph_bytes(model: LoadedModel, cache_dir: str | os.PathLike[str] | None = None) -> bytes:
    """The float32 graph of ``model``'s encoder, from the cache or exported (and cached)."""
    path, key = cache_path(model, cache_dir), cache_key(model)
    graph = _read_cached(path, key)
    if graph is None:
        logger.info("exporting the %s image encoder to ONNX (cached in %s)", model.family, path)
        graph = _export(model, json.dumps(key, sort_keys=True))
        _write_cached(path, key, graph)
    return graph


class _VisionEmbeddings(nn.Module):
    """A ``SamModel``'s ViT as ``get_image_embeddings`` runs it (transformers' graph; ONNX Runtime
    fuses its attention itself)."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.vision = sam.vision_encoder

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.vision(pixel_values)[0]


def export_module(model: LoadedModel) -> nn.Module:
    """The module exported for ``model``'s family: TinyViT itself, or the ``SamModel``'s ViT."""
    return model.encoder if model.family == "lite-medsam" else _VisionEmbeddings(model.sam).eval()


def _export(model: LoadedModel, key: str) -> bytes:
    onnx = import_extra("onnx", _PURPOSE, "onnx")
    import_extra("onnxscript", _PURPOSE, "onnx")  # torch.onnx.export(dynamo=True) imports it itself
    size = INPUT_SIZE[model.family]
    module = export_module(model)
    trainable = [p for p in module.parameters() if p.requires_grad]
    # the exporter's noise (torchvision absent, its own deprecations) is not the user's business
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        for parameter in trainable:  # transformers' attention views export only without autograd
            parameter.requires_grad_(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (torch.zeros(1, 3, size, size),),
                dynamo=True,
                optimize=True,
                opset_version=OPSET,
                input_names=[_INPUT],
                output_names=[_OUTPUT],
                verbose=False,
            )
    except Exception as error:  # the exporter raises many error types
        raise ModelLoadError(
            f"could not export the {model.family} image encoder to ONNX ({error}); use backend 'torch'"
        ) from error
    finally:
        quiet.setLevel(level)
        for parameter in trainable:
            parameter.requires_grad_(True)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {_METADATA_KEY: key})
    if proto.ByteSize() > MAX_GRAPH_BYTES:
        raise ModelLoadError(
            f"the {model.family} image encoder is too large for one ONNX file; use backend 'torch'"
        )
    return proto.SerializeToString()

