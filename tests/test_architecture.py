"""The tiers in docs/ARCHITECTURE.md, checked from each module's own import statements.

Tiers, bottom up: ``base`` (numpy only), ``models`` (torch), ``engine``, ``io``, ``layers`` (napari
layers, no Qt), ``_qt`` (the only place for Qt and magicgui) and ``cli``. A module imports only its
own tier and the ones the table below allows; function-level imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_medsam"
QT = ("qtpy", "magicgui", "superqt", "napari.qt", "napari._qt", "PyQt5", "PyQt6", "PySide2", "PySide6")
OURS = "napari_medsam"
#: What each part of the package may import of the package itself (besides its own part).
ALLOWED = {
    "base": (),
    "models": ("base",),
    "engine": ("base", "models"),
    "io": ("base",),
    "layers": ("base", "models", "engine", "io"),
    "_qt": ("base", "models", "engine", "io", "layers", "_reader", "_writer"),
    "cli": ("base", "models", "engine", "io"),
    "_reader": ("base", "io", "_writer"),
    "_writer": ("base", "io"),
    "_sample_data": ("base", "io", "_reader"),
    "__init__": ("base", "engine"),
}
#: Third-party packages a part must never import.
FOREIGN = {
    "base": ("torch", "transformers", "napari", "SimpleITK", "pydicom", "dask", "zarr"),
    "models": ("napari", "SimpleITK", "pydicom"),
    "engine": ("napari", "SimpleITK", "pydicom"),
    "io": ("napari", "torch", "transformers"),
    "layers": ("napari.viewer", "dask"),
    "cli": ("napari",),
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


def part_of(path: Path) -> str:
    """The tier a module belongs to: its top folder, or its own name for a top-level module."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def parts_imported(path: Path) -> set[str]:
    """The package's parts that ``path`` imports; a name taken from the package itself (``from
    napari_medsam import MedSamPredictor``) counts as ``__init__``, its ``__version__`` as nothing."""
    found = set()
    for name in imports_of(path):
        if name.startswith(OURS + "."):
            part = name.split(".")[1]
            if part != "__version__":
                found.add(part if part in ALLOWED else "__init__")
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))
PARTS = sorted({part_of(p) for p in MODULES})


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_qt_is_imported_only_in_qt_package(path):
    if part_of(path) == "_qt":
        return
    assert [n for n in imports_of(path) if matches(n, QT)] == []


def test_every_part_has_a_rule():
    assert set(PARTS) <= set(ALLOWED)


@pytest.mark.parametrize("part", PARTS)
def test_parts_import_only_downwards(part):
    found = {
        str(path.relative_to(PACKAGE)): sorted(bad)
        for path in MODULES
        if part_of(path) == part
        if (bad := {p for p in parts_imported(path) - {part} if p not in ALLOWED[part] and p in ALLOWED})
    }
    assert found == {}


@pytest.mark.parametrize("part", sorted(FOREIGN))
def test_parts_keep_out_foreign_libraries(part):
    found = {
        str(path.relative_to(PACKAGE)): bad
        for path in MODULES
        if part_of(path) == part
        if (bad := [n for n in imports_of(path) if matches(n, FOREIGN[part])])
    }
    assert found == {}


def parts_in_cycles(edges: dict[str, set[str]]) -> list[str]:
    """The parts that reach themselves through ``edges`` (part -> the parts it imports)."""
    reach = {part: set(targets) for part, targets in edges.items()}
    for _ in edges:  # transitive closure; the graph has a dozen nodes
        for targets in reach.values():
            for t in list(targets):
                targets |= reach.get(t, set())
    return sorted(p for p in reach if p in reach[p])


def test_no_cycle_between_parts():
    edges = {part: set() for part in PARTS}
    for path in MODULES:
        edges[part_of(path)] |= parts_imported(path) - {part_of(path)}
    assert parts_in_cycles(edges) == []


def test_the_cycle_check_finds_a_cycle():
    assert parts_in_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]


def test_the_checks_see_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from qtpy.QtCore import QTimer\n    import magicgui.widgets\n")
    assert [n for n in imports_of(probe) if matches(n, QT)] == [
        "qtpy.QtCore", "qtpy.QtCore.QTimer", "magicgui.widgets",
    ]  # fmt: skip


