"""OpenVINO image encoders: the encoder converted once (through its ONNX graph), cached, run on the CPU.

The encoder's ONNX graph (``onnx_encoder.onnx_graph_bytes``: the graph PyTorch's exporter sees,
TinyViT without its CPU stripes and fused oneDNN calls, the ViT as transformers computes it) is
read by OpenVINO's runtime the first time a model is asked for with ``backend="openvino"``. The
converted model (OpenVINO IR: an ``.xml`` and a ``.bin``) is kept in :func:`default_cache_dir`
under a name and sidecar that record what it depends on (``models/graph_cache``: the weights
digest, family, dtype, and the OpenVINO version), and is verified by SHA-256 before use; the key
is also stored inside the IR and checked. OpenVINO keeps the compiled form of the model beside it
(its own ``CACHE_DIR``, in ``compiled/``), so a later start skips most of the compile.

Runs float32 (``INFERENCE_PRECISION_HINT=f32``): with the ``bf16`` hint OpenVINO runs the whole
graph (norms and residual additions included) in bfloat16, which failed the fidelity guard
(docs/speed.md). One inference at a time per encoder, with as many threads as PyTorch uses
(``torch.get_num_threads()``), threads not pinned to cores (the decoder and the viewer share them).

OpenVINO is the optional ``[openvino]`` extra; asking for ``backend="openvino"`` without it raises
``MissingExtraError`` naming it. The runtime's ONNX reader is used rather than the
``openvino.convert_model`` tool, which sends OpenVINO's usage telemetry unless the user opted out:
nothing here sends anything.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from napari_medsam.base.errors import ModelLoadError, import_extra
from napari_medsam.models import graph_cache

if TYPE_CHECKING:
    import openvino

    from napari_medsam.models import LoadedModel

logger = logging.getLogger(__name__)

_PURPOSE = "the OpenVINO encoder backend"
#: Bump when the converted graph changes for the same weights (old cache files are then rebuilt).
IR_FORMAT = 1
#: Where the OpenVINO cache lives (default: ``openvino`` in napari-medsam's cache folder).
CACHE_ENV = "NAPARI_MEDSAM_OPENVINO_CACHE"
_RT_INFO_KEY = "napari_medsam_key"


def import_openvino() -> openvino:  # type: ignore[valid-type]
    """The ``openvino`` module, or ``MissingExtraError`` naming the ``[openvino]`` extra."""
    return import_extra("openvino", _PURPOSE, "openvino")


def default_cache_dir() -> Path:
    """``$NAPARI_MEDSAM_OPENVINO_CACHE``, else ``openvino`` in napari-medsam's cache folder."""
    return graph_cache.cache_folder(CACHE_ENV, "openvino")


def cache_key(model: LoadedModel) -> dict[str, object]:
    """Everything a converted model depends on, the OpenVINO version included."""
    return graph_cache.cache_key(model, IR_FORMAT, openvino=import_openvino().__version__)


def cache_paths(model: LoadedModel, cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """The ``.xml`` and ``.bin`` of ``model``'s converted encoder: one name per :func:`cache_key`."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = folder / f"{model.family}-float32-{graph_cache.key_name(cache_key(model))}"
    return stem.with_suffix(".xml"), stem.with_suffix(".bin")


class OpenVinoEncoder(graph_cache.GraphEncoder):
    """``pixel_values`` (B, 3, S, S) -> image embeddings (B, 256, 64, 64) through a compiled OpenVINO
    model; thread-safe (one inference at a time)."""

    def __init__(self, compiled: openvino.CompiledModel, path: Path) -> None:  # type: ignore[name-defined]
        super().__init__(path)
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def run_one(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            result = self._request.infer({0: pixels}, share_inputs=True)
            return np.array(result[0])  # a copy: the request reuses its output memory


def openvino_encoder(model: LoadedModel, cache_dir: str | os.PathLike[str] | None = None) -> OpenVinoEncoder:
    """The OpenVINO encoder of ``model`` (float32 CPU): from the cache, else converted and cached."""
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise ValueError("the OpenVINO model is converted from a float32 model on the CPU")
    ov = import_openvino()
    xml, _ = paths = cache_paths(model, cache_dir)
    key = cache_key(model)
    core = ov.Core()
    ir = _read_cached(core, paths, key)
    if ir is None:
        logger.info("converting the %s image encoder to OpenVINO (cached in %s)", model.family, xml)
        ir = _convert(model, json.dumps(key, sort_keys=True))
        _write_cached(paths, key, ir)
        # compiled as read back, as every later start compiles it: one entry in OpenVINO's cache
        ir = _read_cached(core, paths, key) or ir
    compiled_dir = xml.parent / "compiled"
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(torch.get_num_threads()),
        "ENABLE_CPU_PINNING": "NO",
    }
    try:
        compiled_dir.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(compiled_dir)})
    except OSError as error:  # a read-only cache: compile every time
        logger.warning("no OpenVINO compile cache in %s (%s)", compiled_dir, error)
    return OpenVinoEncoder(core.compile_model(ir, "CPU", config), xml)


def _read_cached(
    core: openvino.Core,  # type: ignore[name-defined]
    paths: tuple[Path, Path],
    key: dict[str, object],
) -> openvino.Model | None:  # type: ignore[name-defined]
    """The cached model, if its sidecar, SHA-256 and embedded key say it is ``key``'s; else None."""
    data = graph_cache.read_verified(paths, key)
    if data is None:
        return None
    ov = import_openvino()
    xml, weights = data
    try:
        ir = core.read_model(xml, ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
        embedded = None
        if ir.has_rt_info(_RT_INFO_KEY):
            embedded = json.loads(ir.get_rt_info(_RT_INFO_KEY).astype(str))
    except (RuntimeError, ValueError) as error:
        logger.warning("OpenVINO cache %s unreadable (%s): converting again", paths[0], error)
        return None
    if embedded != key:
        logger.warning("OpenVINO cache %s holds another model: converting again", paths[0])
        return None
    return ir


def _write_cached(paths: tuple[Path, Path], key: dict[str, object], ir: openvino.Model) -> None:  # type: ignore[name-defined]
    ov = import_openvino()
    with tempfile.TemporaryDirectory(prefix="napari-medsam-ov-") as folder:
        xml = Path(folder) / "model.xml"
        ov.save_model(ir, xml, compress_to_fp16=False)
        data = [xml.read_bytes(), xml.with_suffix(".bin").read_bytes()]
    graph_cache.write_verified(paths, data, key, openvino=ov.__version__, torch=torch.__version__)


def _convert(model: LoadedModel, key: str) -> openvino.Model:  # type: ignore[name-defined]
    """The encoder as an OpenVINO model, read by OpenVINO's runtime from the ONNX graph the ONNX backend
    exports and caches (``onnx_encoder.onnx_graph_bytes``): the runtime's own ONNX reader, not the
    ``openvino.convert_model`` tool, which would send OpenVINO's usage telemetry without asking."""
    from napari_medsam.models.onnx_encoder import onnx_graph_bytes

    ov = import_openvino()
    try:
        graph = onnx_graph_bytes(model)
        with tempfile.TemporaryDirectory(prefix="napari-medsam-openvino-") as folder:
            path = Path(folder, "encoder.onnx")
            path.write_bytes(graph)
            ir = ov.Core().read_model(str(path))
    except Exception as error:  # the exporter and the reader raise many error types
        raise ModelLoadError(
            f"could not convert the {model.family} image encoder to OpenVINO ({error}); use backend 'torch'"
        ) from error
    ir.set_rt_info(key, _RT_INFO_KEY)
    return ir
