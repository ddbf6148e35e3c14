"""Errors a user can fix, and the one message for a missing optional dependency."""

from __future__ import annotations

from types import ModuleType


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says how to fix it."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def import_extra(module: str, purpose: str, extra: str = "cluster") -> ModuleType:
    """Import an optional dependency, or say which extra installs it.

    ``extra``: ``"cluster"`` (dask.distributed and zarr: embedding store, cohorts, clusters) or
    ``"onnx"`` (ONNX Runtime, onnx and onnxscript: the ONNX Runtime encoder backend).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]}: pip install 'napari-medsam[{extra}]'"
        ) from error
