"""The layering in docs/ARCHITECTURE.md, checked from each module's own import statements."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_medsam"
QT = ("qtpy", "magicgui", "superqt", "napari.qt", "napari._qt", "PyQt5", "PyQt6", "PySide2", "PySide6")
#: What each Qt-free layer must not import (besides Qt): the layers above it.
FORBIDDEN = {
    "core": ("napari", "napari_medsam.layers", "napari_medsam._qt", "napari_medsam.io", "napari_medsam.cli"),
    "models": ("napari", "napari_medsam.layers", "napari_medsam._qt", "napari_medsam.io"),
    "io": ("napari", "napari_medsam.layers", "napari_medsam._qt"),
    "layers": ("napari_medsam._qt",),
}


def imports_of(path: Path) -> list[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_qt_is_imported_only_in_qt_package(path):
    relative = path.relative_to(PACKAGE)
    if relative.parts[0] == "_qt":
        return
    assert [n for n in imports_of(path) if matches(n, QT)] == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_qt_free_layers_import_only_downwards(layer):
    found = {
        str(path.relative_to(PACKAGE)): bad
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        if (bad := [n for n in imports_of(path) if matches(n, FORBIDDEN[layer])])
    }
    assert found == {}


def test_the_checks_see_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from qtpy.QtCore import QTimer\n    import magicgui.widgets\n")
    assert [n for n in imports_of(probe) if matches(n, QT)] == [
        "qtpy.QtCore", "qtpy.QtCore.QTimer", "magicgui.widgets",
    ]  # fmt: skip
