"""Errors a user can fix, and the one message for a missing optional dependency."""

from __future__ import annotations

from types import ModuleType


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says how to fix it."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


#: The extra that installs dask.distributed and zarr (embedding store, cohorts, clusters).
CLUSTER_EXTRA = "pip install 'napari-medsam[cluster]'"


def import_extra(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency of the ``cluster`` extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(f"{purpose} needs {module.split('.')[0]}: {CLUSTER_EXTRA}") from error
