"""The npe2 manifest is valid, discoverable, and every command it names can be imported."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest
from npe2 import PluginManifest

PLUGIN = "napari-medsam"


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_distribution(PLUGIN)


def resolve(python_name: str):
    module, _, attr = python_name.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_manifest_is_found_and_valid(manifest):
    assert manifest.name == PLUGIN
    PluginManifest.model_validate(manifest.model_dump())  # round-trips through validation
    ids = {c.id for c in manifest.contributions.commands}
    for contribution in (
        *manifest.contributions.widgets,
        *manifest.contributions.sample_data,
        *(manifest.contributions.readers or []),
        *(manifest.contributions.writers or []),
    ):
        assert contribution.command in ids


def test_every_python_name_imports(manifest):
    for command in manifest.contributions.commands:
        assert callable(resolve(command.python_name)), command.python_name


def test_widget_contribution_is_the_medsam_widget(manifest):
    from napari_medsam._qt.widget import MedSamWidget

    (widget,) = manifest.contributions.widgets
    command = next(c for c in manifest.contributions.commands if c.id == widget.command)
    assert resolve(command.python_name) is MedSamWidget


@pytest.mark.parametrize("key", ["abdominal_ct", "ct_phantom", "ct_slice"])
def test_sample_data_gives_ct_images_in_hu(manifest, key):
    from napari.layers import Layer

    sample = next(s for s in manifest.contributions.sample_data if s.key == key)
    command = next(c for c in manifest.contributions.commands if c.id == sample.command)
    (layer_data,) = resolve(command.python_name)()
    data, meta, kind = layer_data
    assert kind == "image"
    assert np.issubdtype(data.dtype, np.integer)
    assert data.min() < -500 < 100 < data.max()  # air and enhancing tissue, in Hounsfield units
    layer = Layer.create(data, meta, kind)
    assert layer.ndim == data.ndim
    assert tuple(layer.contrast_limits) == (-160.0, 240.0)


def test_plugin_modules_do_not_import_torch(manifest):
    modules = sorted({c.python_name.partition(":")[0] for c in manifest.contributions.commands})
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        + "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_manifest_suffixes_follow_the_format_table(manifest):
    from napari_medsam.io.formats import READ_SUFFIXES, WRITE_SUFFIXES

    (reader,) = manifest.contributions.readers
    assert reader.filename_patterns == [f"*{suffix}" for suffix in READ_SUFFIXES]
    assert reader.accepts_directories  # DICOM series folders
    (writer,) = manifest.contributions.writers
    assert tuple(writer.filename_extensions) == WRITE_SUFFIXES
