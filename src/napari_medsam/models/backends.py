"""What runs a model's image encoder: PyTorch, ONNX Runtime or OpenVINO, and what ``"auto"`` chooses.

``"torch"`` runs everywhere. ``"onnxruntime"`` (the ``[onnx]`` extra) and ``"openvino"`` (the
``[openvino]`` extra) run float32 graphs on the CPU, converted once from the loaded weights and
cached (``models/onnx_encoder``, ``models/openvino_encoder``).

``"auto"`` chooses the faster of the faithful backends, by measurement: on the CPU in float32,
where the ``[openvino]`` extra is installed, it times PyTorch's and OpenVINO's float32 encoders of
the model on this machine once (:func:`measure`: interleaved runs, the fastest of each) and
remembers the winner (:func:`choice_path`) under a key of the model (its weights, family and
dtype), the CPU and the library versions (:func:`machine_key`), so a later
start reads the choice instead of timing again; processes that measure at the same time (a
cluster's workers) all run what the first of them kept. Both compute the model's
float32 mathematics (embeddings equal to float rounding; masks pass the fidelity guard on real CT
and MR, ``benchmarks/bench_fidelity.py``). Without the extra, on CUDA or MPS, and in bfloat16 or
float16, ``"auto"`` is PyTorch. Never chosen by ``"auto"``: ONNX Runtime (faithful, but never the
faster one measured: docs/performance.md) and reduced precision (no bfloat16 part of LiteMedSAM
passed the guard on every real slice: docs/speed.md).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

from napari_medsam.base.atomic import temp_path
from napari_medsam.base.errors import import_extra
from napari_medsam.models import BACKENDS

if TYPE_CHECKING:
    import torch

    from napari_medsam.models import LoadedModel

logger = logging.getLogger(__name__)

#: The backends ``"auto"`` measures against each other (on the CPU, in float32, when installed);
#: PyTorch first.
AUTO_CANDIDATES = ("torch", "openvino")
#: Timed runs of each candidate (after one warm-up each), interleaved; the fastest run counts.
MEASURE_RUNS = 2


def openvino_installed() -> bool:
    """Whether the ``[openvino]`` extra is installed."""
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Turn ``"auto"``, ``"torch"``, ``"onnxruntime"`` or ``"openvino"`` into the backend to run.

    ``"auto"`` stays ``"auto"`` where there is a choice to make (:func:`choose` makes it once the
    model is loaded) and is ``"torch"`` where there is none. The graph backends run only on the
    CPU, in float32, and raise ``MissingExtraError`` (naming the extra) when it is not installed.
    """
    import torch

    if not isinstance(backend, str) or backend.strip().lower() not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    name = backend.strip().lower()
    if name == "auto":
        choice = device.type == "cpu" and dtype == torch.float32 and openvino_installed()
        return "auto" if choice else "torch"
    if name != "torch":
        if device.type != "cpu":
            raise ValueError(f"backend {name!r} runs on the CPU only; use device 'cpu' or backend 'torch'")
        if dtype != torch.float32:
            raise ValueError(f"backend {name!r} runs float32 graphs; use dtype 'float32' or backend 'torch'")
        _require_extra(name)
    return name


def _require_extra(backend: str) -> None:
    if backend == "onnxruntime":
        from napari_medsam.models.onnx_encoder import ONNX_MODULES, PURPOSE

        for module in ONNX_MODULES:
            import_extra(module, PURPOSE, "onnx")
    elif backend == "openvino":
        from napari_medsam.models.openvino_encoder import import_openvino

        import_openvino()


def with_encoder_backend(model: LoadedModel, backend: str) -> LoadedModel:
    """``model`` (a PyTorch one) with its encoder run by ``backend`` (as :func:`resolve_backend` gives it)."""
    from dataclasses import replace

    if backend == model.backend:
        return model
    if model.backend != "torch":
        raise ValueError(f"{model.name} already runs on {model.backend}; load it again for {backend}")
    if backend == "onnxruntime":
        from napari_medsam.models.onnx_encoder import onnx_encoder

        encoder = onnx_encoder(model)
    elif backend == "openvino":
        from napari_medsam.models.openvino_encoder import openvino_encoder

        encoder = openvino_encoder(model)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    logger.info("%s: image encoder on %s (%s)", model.name, backend, encoder.path)
    return replace(model, encoder=encoder, backend=backend)


# ------------------------------------------------------------------------------ auto's measurement


def choices_dir() -> Path:
    """Where the measured choices are kept: ``auto-choices`` in the OpenVINO cache folder, one JSON
    file per :func:`machine_key` (the key, the backend, the seconds measured, when)."""
    from napari_medsam.models.openvino_encoder import default_cache_dir

    return default_cache_dir() / "auto-choices"


def choice_path(model: LoadedModel) -> Path:
    """The file of ``model``'s choice on this machine."""
    return _choice_file(model.family, machine_key(model))


def _choice_file(family: str, key: str) -> Path:
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return choices_dir() / f"{family}-{digest}.json"


def machine_key(model: LoadedModel) -> str:
    """What a measured choice holds for: the model (:func:`~napari_medsam.models.graph_cache.
    weights_identity`), the CPU (model and vector flags) and the versions of PyTorch and OpenVINO.

    Not PyTorch's thread count: a cluster's one-thread workers and a two-thread CLI or viewer on
    the same machine must run one backend, or their embeddings would not share a store's entries.
    """
    from importlib.metadata import version

    import torch

    from napari_medsam.models.graph_cache import weights_identity

    # the installed version, not openvino.__version__: importing OpenVINO costs a start that
    # remembered PyTorch a second or so
    versions = f"torch {torch.__version__}, openvino {version('openvino')}"
    return "|".join((weights_identity(model), cpu_name(), versions))


@functools.cache
def cpu_name() -> str:
    """The CPU's model name and its vector and matrix flags (what decides its GEMM rates)."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    wanted = (f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx")))
                    flags = " ".join(sorted(wanted))
                if name and flags:
                    break
    except OSError:
        pass
    return f"{name} [{flags}]" if flags else name


def remembered_choice(model: LoadedModel) -> str | None:
    """The backend measured faster for ``model`` on this machine (None: not measured yet)."""
    return _remembered(model.family, machine_key(model))


def _remembered(family: str, key: str) -> str | None:
    try:
        record = json.loads(_choice_file(family, key).read_text())
    except (OSError, ValueError):  # none yet, or one being written this moment
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    backend = record.get("backend")
    return backend if backend in AUTO_CANDIDATES else None


def measure(models: dict[str, LoadedModel], runs: int = MEASURE_RUNS) -> dict[str, float]:
    """Seconds of the fastest of ``runs`` encoder runs of each model on one input (after a warm-up
    each), the models interleaved so that other work on the machine slows them alike."""
    import torch

    size = next(iter(models.values())).spec.input_size
    pixels = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    best = dict.fromkeys(models, float("inf"))
    with torch.inference_mode():
        for run in range(runs + 1):
            for name, model in models.items():
                start = time.perf_counter()
                model.encoder(pixels.to(model.device, model.dtype))
                if run:  # the first run of each is the warm-up
                    best[name] = min(best[name], time.perf_counter() - start)
    return best


def choose(model: LoadedModel) -> LoadedModel:
    """``model`` (a PyTorch one) with the faster of the :data:`AUTO_CANDIDATES` encoders: the one
    remembered for this machine, else measured now and remembered. A candidate that cannot be
    built (e.g. the conversion fails) is left out, with a warning, and PyTorch runs."""
    from napari_medsam.base.errors import ModelLoadError

    key = machine_key(model)  # the weights' identity, the CPU, the versions: worked out once
    remembered = _remembered(model.family, key)
    if remembered is not None:
        try:
            return with_encoder_backend(model, remembered)
        except ModelLoadError as error:
            logger.warning("%s: the %s encoder failed (%s); measuring again", model.name, remembered, error)
    candidates = {"torch": model}
    for backend in AUTO_CANDIDATES[1:]:
        try:
            candidates[backend] = with_encoder_backend(model, backend)
        except ModelLoadError as error:
            logger.warning("%s: %s left out of auto's choice: %s", model.name, backend, error)
    if len(candidates) == 1:
        return model
    logger.info("%s: timing the %s encoders once on this machine", model.name, " and ".join(candidates))
    seconds = measure(candidates)
    backend = min(seconds, key=seconds.__getitem__)
    logger.info("%s: %s encodes fastest here (%s)", model.name, backend,
                ", ".join(f"{n} {1e3 * s:.0f} ms" for n, s in seconds.items()))  # fmt: skip
    record = {"key": key, "backend": backend, "seconds": seconds,
              "measured": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    return candidates[_remember(model, record)]


def _remember(model: LoadedModel, record: dict[str, object]) -> str:
    """Keep ``record`` unless another process kept one first (processes that measured at the same
    time, e.g. a cluster's workers, then all run what the first kept); returns the backend kept."""
    key = str(record["key"])
    path = _choice_file(model.family, key)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record, indent=1))
        os.link(tmp, path)  # whole or not at all, and never over a file already there
    except FileExistsError:
        for _ in range(20):  # the first one's file may be a moment from complete
            kept = _remembered(model.family, key)
            if kept is not None:
                return kept
            time.sleep(0.05)
    except OSError as error:
        logger.warning("could not remember the backend choice in %s: %s", path, error)
    finally:
        tmp.unlink(missing_ok=True)
    return str(record["backend"])
