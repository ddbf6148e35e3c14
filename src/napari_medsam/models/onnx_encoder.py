"""ONNX Runtime image encoders: the loaded encoder exported to ONNX once, cached on disk, run on the CPU.

The graph is exported (``torch.onnx.export``, the dynamo exporter) from the weights the model was
loaded with, the first time a model is asked for with ``backend="onnxruntime"``; later loads read
it from :func:`default_cache_dir`. A cache file is named by a hash of everything the graph depends
on (:func:`cache_key`: the weights digest, family and dtype of :attr:`LoadedModel.identity`, the
variant, the format version) and is used only when its sidecar says so and the file's SHA-256
matches the one recorded when it was written; a damaged or foreign file is rebuilt, never trusted.

Variants: ``"float32"`` (the exported graph) and ``"int8"`` (``onnxruntime.quantization``'s dynamic
int8 weights, from the float32 graph). ``"auto"`` chooses ONNX Runtime only for the families in
:data:`AUTO_ONNX_FAMILIES` (none yet: :data:`AUTO_DECISIONS` has the measurements), on the
CPU, in float32; int8 is never chosen by ``"auto"``.
The prompt encoder and mask decoder stay in PyTorch (``models/fast_decoder.py``).
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

from napari_medsam.core.atomic import write_bytes
from napari_medsam.core.errors import ModelLoadError
from napari_medsam.core.preprocessing import INPUT_SIZE
from napari_medsam.models import BACKENDS

if TYPE_CHECKING:
    import onnxruntime

    from napari_medsam.models import Family, LoadedModel

logger = logging.getLogger(__name__)

Backend = Literal["torch", "onnxruntime", "onnxruntime-int8"]
#: The ONNX variant each ONNX Runtime backend runs.
VARIANTS: dict[str, str] = {"onnxruntime": "float32", "onnxruntime-int8": "int8"}

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
    "start pays the export (~7 s). int8 fails the guard and is slower",
    "medsam": "torch: no real MedSAM weights offline to measure the guard on; on a random ViT-B, ONNX "
    "Runtime float32 took 0.59x of transformers' time against 0.62x for torch's fast ViT (one run)",
    "sam": "torch: no real SAM weights offline to measure the guard on",
}
#: Bump when the exported graph changes for the same weights (old cache files are then rebuilt).
ONNX_FORMAT = 1
#: How each variant is made from the exported graph (part of the cache key).
VARIANT_RECIPES: dict[str, str] = {"float32": "export", "int8": "quantize_dynamic QInt8 per-channel"}
OPSET = 18
#: Where the ONNX cache lives (default: ``$XDG_CACHE_HOME/napari-medsam/onnx``).
CACHE_ENV = "NAPARI_MEDSAM_ONNX_CACHE"
#: The largest graph kept in one file (protobuf's 2 GiB limit); SAM ViT-H is larger.
MAX_GRAPH_BYTES = 2**31 - 2**24
_INPUT, _OUTPUT = "pixel_values", "image_embeddings"
_METADATA_KEY = "napari-medsam"


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime is installed (it is a dependency; a broken install falls back to torch)."""
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_backend(backend: str, family: Family, device: torch.device, dtype: torch.dtype) -> Backend:
    """Turn ``"auto"``, ``"torch"``, ``"onnxruntime"`` or ``"onnxruntime-int8"`` into the backend to run.

    ``"auto"``: ONNX Runtime for the families of :data:`AUTO_ONNX_FAMILIES` on the CPU in float32,
    else PyTorch (CUDA and MPS keep PyTorch). ONNX Runtime runs only on the CPU, in float32 (or int8).
    """
    if not isinstance(backend, str) or backend.strip().lower() not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    name = backend.strip().lower()
    if name == "auto":
        if device.type == "cpu" and dtype == torch.float32 and family in AUTO_ONNX_FAMILIES:
            if onnxruntime_available():
                return "onnxruntime"
            logger.warning("onnxruntime is not installed: the %s encoder runs in PyTorch", family)
        return "torch"
    if name != "torch":
        if device.type != "cpu":
            raise ValueError(f"backend {name!r} runs on the CPU only; use device 'cpu' or backend 'torch'")
        if dtype != torch.float32:
            raise ValueError(
                f"backend {name!r} runs float32 (or int8) graphs; use dtype 'float32' or backend 'torch'"
            )
        if not onnxruntime_available():
            raise ModelLoadError(f"backend {name!r} needs onnxruntime: pip install onnxruntime")
    return name  # type: ignore[return-value]


def default_cache_dir() -> Path:
    """``$NAPARI_MEDSAM_ONNX_CACHE``, else ``$XDG_CACHE_HOME/napari-medsam/onnx`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-medsam" / "onnx"


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


def cache_key(model: LoadedModel, variant: str) -> dict[str, object]:
    """Everything a cached graph depends on (recorded in its sidecar and its ONNX metadata)."""
    return {
        "format": ONNX_FORMAT,
        "identity": weights_identity(model),
        "family": model.family,
        "variant": variant,
        "recipe": VARIANT_RECIPES[variant],
        "input_size": INPUT_SIZE[model.family],
    }


def cache_path(model: LoadedModel, variant: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache file of ``model``'s graph in ``variant``: one name per :func:`cache_key`."""
    key = json.dumps(cache_key(model, variant), sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{model.family}-{variant}-{name}.onnx"


class OnnxEncoder(nn.Module):
    """``pixel_values`` (B, 3, S, S) -> image embeddings (B, 256, 64, 64) through an ONNX Runtime session.

    Holds no weights of its own (the session has them); returns float32 CPU tensors.
    """

    def __init__(self, session: onnxruntime.InferenceSession, path: Path, variant: str) -> None:
        super().__init__()
        self.session = session
        self.path = path
        self.variant = variant

    def forward(self, pixel_values: Tensor) -> Tensor:
        pixels = pixel_values.detach().to("cpu", torch.float32).numpy()
        # the graph has batch 1: a batch runs slice by slice (each run uses every core)
        outputs = [self.session.run(None, {_INPUT: pixels[i : i + 1]})[0] for i in range(len(pixels))]
        return torch.from_numpy(outputs[0] if len(outputs) == 1 else np.concatenate(outputs))

    def extra_repr(self) -> str:
        return f"{self.variant}, {self.path.name}"


def onnx_encoder(
    model: LoadedModel, variant: str = "float32", cache_dir: str | os.PathLike[str] | None = None
) -> OnnxEncoder:
    """The ONNX Runtime encoder of ``model`` (float32 CPU): from the cache, else exported and cached."""
    if variant not in VARIANT_RECIPES:
        raise ValueError(f"unknown ONNX variant {variant!r}: use float32 or int8")
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise ValueError("the ONNX graph is exported from a float32 model on the CPU")
    if variant == "float32":
        graph = onnx_graph_bytes(model, cache_dir)
    else:
        path, key = cache_path(model, variant, cache_dir), cache_key(model, variant)
        graph = _read_cached(path, key)
        if graph is None:
            graph = _quantize(onnx_graph_bytes(model, cache_dir), json.dumps(key, sort_keys=True))
            _write_cached(path, key, graph)
    return OnnxEncoder(_session(graph), cache_path(model, variant, cache_dir), variant)


def session_options() -> onnxruntime.SessionOptions:
    """One intra-op thread per physical core (torch's default thread count), no spinning, all graph
    optimisations: the encoder shares the CPU with the decoder and the viewer."""
    import onnxruntime

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
    import onnxruntime

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
    import onnx

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
    path, key = cache_path(model, "float32", cache_dir), cache_key(model, "float32")
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
    import onnx

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


def _quantize(graph: bytes, key: str) -> bytes:
    """Dynamic int8 quantization (per-channel weights: closer to float32 than per-tensor on real CT)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="napari-medsam-int8-") as folder:
        source, target = Path(folder) / "float32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
        proto = onnx.load(target)
    onnx.helper.set_model_props(proto, {_METADATA_KEY: key})
    return proto.SerializeToString()
