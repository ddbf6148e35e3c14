"""ONNX Runtime image encoders: the loaded encoder exported to ONNX once, cached on disk, run on the CPU.

The graph is exported (``torch.onnx.export``, the dynamo exporter) from the weights the model was
loaded with, the first time a model is asked for with ``backend="onnxruntime"``; later loads read
it from :func:`default_cache_dir`, verified as ``models/graph_cache`` says (named by the weights
digest, family and dtype of :attr:`LoadedModel.identity` and the format version; SHA-256 in a
sidecar), and the key is also stored in the graph's own metadata and checked: a damaged or
foreign file is rebuilt, never trusted.

ONNX Runtime, onnx and onnxscript (what torch's exporter needs) are the optional ``[onnx]`` extra
(``pip install 'napari-medsam[onnx]'``). ``"auto"`` never chooses it (``models/backends``): it
passes the fidelity guard but was never the faster backend measured. The graph runs float32 only:
the dynamic int8 variant was removed because it failed the fidelity guard (mask IoU mean 0.89,
worst 0.36 on real CT). The prompt encoder and mask decoder stay in PyTorch (``models/fast_decoder.py``).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from napari_medsam.base.errors import ModelLoadError, import_extra
from napari_medsam.models import graph_cache

if TYPE_CHECKING:
    import onnxruntime

    from napari_medsam.models import LoadedModel

logger = logging.getLogger(__name__)

#: What the ONNX Runtime backend needs (the ``[onnx]`` extra): the runtime, and torch's exporter's.
ONNX_MODULES = ("onnxruntime", "onnx", "onnxscript")
PURPOSE = "the ONNX Runtime encoder backend"
#: Bump when the exported graph changes for the same weights (old cache files are then rebuilt).
ONNX_FORMAT = 2
OPSET = 18
#: Where the ONNX cache lives (default: ``onnx`` in :func:`~napari_medsam.models.weights.user_cache_dir`).
CACHE_ENV = "NAPARI_MEDSAM_ONNX_CACHE"
#: The largest graph kept in one file (protobuf's 2 GiB limit); SAM ViT-H is larger.
MAX_GRAPH_BYTES = 2**31 - 2**24
_INPUT, _OUTPUT = "pixel_values", "image_embeddings"
_METADATA_KEY = "napari-medsam"


def default_cache_dir() -> Path:
    """``$NAPARI_MEDSAM_ONNX_CACHE``, else ``onnx`` in napari-medsam's cache folder."""
    return graph_cache.cache_folder(CACHE_ENV, "onnx")


def cache_key(model: LoadedModel) -> dict[str, object]:
    """Everything a cached graph depends on (recorded in its sidecar and its ONNX metadata)."""
    return graph_cache.cache_key(model, ONNX_FORMAT)


def cache_path(model: LoadedModel, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache file of ``model``'s graph: one name per :func:`cache_key`."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{model.family}-float32-{graph_cache.key_name(cache_key(model))}.onnx"


class OnnxEncoder(graph_cache.GraphEncoder):
    """``pixel_values`` (B, 3, S, S) -> image embeddings (B, 256, 64, 64) through an ONNX Runtime session."""

    def __init__(self, session: onnxruntime.InferenceSession, path: Path) -> None:
        super().__init__(path)
        self.session = session

    def run_one(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {_INPUT: pixels})[0]


def onnx_encoder(model: LoadedModel, cache_dir: str | os.PathLike[str] | None = None) -> OnnxEncoder:
    """The ONNX Runtime encoder of ``model`` (float32 CPU): from the cache, else exported and cached."""
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise ValueError("the ONNX graph is exported from a float32 model on the CPU")
    return OnnxEncoder(_session(onnx_graph_bytes(model, cache_dir)), cache_path(model, cache_dir))


def session_options() -> onnxruntime.SessionOptions:
    """One intra-op thread per physical core (torch's default thread count), no spinning, all graph
    optimisations: the encoder shares the CPU with the decoder and the viewer."""
    onnxruntime = import_extra("onnxruntime", PURPOSE, "onnx")
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
    onnxruntime = import_extra("onnxruntime", PURPOSE, "onnx")
    return onnxruntime.InferenceSession(graph, session_options(), providers=["CPUExecutionProvider"])


def _read_cached(path: Path, key: dict[str, object]) -> bytes | None:
    """The cached graph, if its sidecar, SHA-256 and embedded key say it is ``key``'s; else None."""
    data = graph_cache.read_verified([path], key)
    if data is None:
        return None
    if _graph_key(data[0]) != key:
        logger.warning("ONNX cache %s holds another model's graph: rebuilding it", path)
        return None
    return data[0]


def _graph_key(graph: bytes) -> dict[str, object] | None:
    """The key recorded in a graph's own metadata (None: none, or not a readable graph)."""
    onnx = import_extra("onnx", PURPOSE, "onnx")
    try:
        proto = onnx.load_model_from_string(graph)
        text = {p.key: p.value for p in proto.metadata_props}.get(_METADATA_KEY)
        return None if text is None else json.loads(text)
    except Exception:  # a damaged protobuf raises several error types
        return None


def onnx_graph_bytes(model: LoadedModel, cache_dir: str | os.PathLike[str] | None = None) -> bytes:
    """The float32 graph of ``model``'s encoder, from the cache or exported (and cached)."""
    path, key = cache_path(model, cache_dir), cache_key(model)
    graph = _read_cached(path, key)
    if graph is None:
        logger.info("exporting the %s image encoder to ONNX (cached in %s)", model.family, path)
        graph = _export(model, json.dumps(key, sort_keys=True))
        graph_cache.write_verified([path], [graph], key, torch=torch.__version__)
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
    """The module exported for ``model``'s family (its spec's ``encoder``): TinyViT itself, or the
    ``SamModel``'s ViT."""
    return model.encoder if model.spec.encoder == "TinyViT" else _VisionEmbeddings(model.sam).eval()


def _export(model: LoadedModel, key: str) -> bytes:
    onnx = import_extra("onnx", PURPOSE, "onnx")
    import_extra("onnxscript", PURPOSE, "onnx")  # torch.onnx.export(dynamo=True) imports it itself
    size = model.spec.input_size
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

