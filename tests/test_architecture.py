"""The rules of docs/ARCHITECTURE.md, checked from each module's own source.

Tiers, bottom up: ``base`` (numpy only), ``models`` (torch), ``engine``, ``io``, ``layers`` (napari
layers, no Qt, no viewer), ``_qt`` (the only place for Qt and magicgui) and ``cli``. A module imports
only its own tier and the ones the table below allows; function-level imports count too. Inside a
part no two modules reach each other; a family's facts live in ``models/families.py`` only; no
module of the view grows past :data:`MAX_QT_LINES`; nothing imports the tests' modules.
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
TESTS = Path(__file__).resolve().parent
#: The longest a module of ``_qt/`` may be: a panel or an action group each, not one big widget.
MAX_QT_LINES = 400
#: Where a family's facts live; everywhere else asks ``family_spec`` and never names a family.
SPECS = PACKAGE / "models" / "families.py"
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


def module_name(path: Path) -> str:
    """``napari_medsam.io.volumes`` for ``.../napari_medsam/io/volumes.py`` (a package: its ``__init__``)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {module_name(p): p for p in MODULES}


def modules_imported(path: Path) -> set[str]:
    """The package's modules that ``path`` imports; ``from package import module`` is the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in NAMES}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in NAMES:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(NAMES)
            found |= submodules or {node.module}
            if len(submodules) < len(node.names):  # names of the package itself, too
                found.add(node.module)
    return found - {module_name(path)}


def package_of(name: str) -> str:
    return name if NAMES[name].name == "__init__.py" else name.rpartition(".")[0]


def test_no_cycle_between_modules_of_one_package():
    """A module never reaches itself through the modules of its own package (``io/volumes`` and
    ``io/dicom_series`` each asking the other what a file is, say)."""
    edges = {
        name: {m for m in modules_imported(path) if package_of(m) == package_of(name)}
        for name, path in NAMES.items()
    }
    assert parts_in_cycles(edges) == []


def test_the_module_check_sees_submodules_and_their_packages():
    cli = modules_imported(PACKAGE / "cli" / "__init__.py")
    assert cli >= {"napari_medsam.cli.batch", "napari_medsam.cli.demo"}
    assert "napari_medsam.cli" not in modules_imported(PACKAGE / "cli" / "batch.py")
    assert "napari_medsam.models" in modules_imported(PACKAGE / "models" / "lite_medsam.py")


def family_comparisons(path: Path, root: Path = PACKAGE) -> list[str]:
    """Where ``path`` compares a family (``family ==``, ``model.family in (...)``) or a family's name
    (``x == "lite-medsam"``), other than with None, or looks a fact up by family (``SIZES[model.
    family]``, ``table.get(family)``, a dict keyed by a family's name): ``file:line`` each."""
    from napari_medsam.models.families import FAMILIES

    def is_family(node: ast.expr) -> bool:
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        names = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        named = any(isinstance(n, ast.Constant) and n.value in FAMILIES for n in names)
        return name == "family" or name.endswith("_family") or named

    def branches_on_family(node: ast.AST) -> bool:
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            none = any(isinstance(n, ast.Constant) and n.value is None for n in operands)
            return not none and any(is_family(n) for n in operands)
        if isinstance(node, ast.MatchValue):
            return is_family(node.value)
        if isinstance(node, ast.Subscript):  # SIZES[model.family]
            return is_family(node.slice)
        if isinstance(node, ast.Dict):  # {"sam": 1024}
            return any(key is not None and is_family(key) for key in node.keys)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            return bool(node.args) and is_family(node.args[0])  # SIZES.get(family)
        return False

    tree = ast.parse(path.read_text(), filename=str(path))
    found = [f"{path.relative_to(root)}:{node.lineno}" for node in ast.walk(tree) if branches_on_family(node)]
    return found


def test_no_family_branch_outside_the_specs():
    """Every difference between model families is a ``FamilySpec`` field: adding a family is one spec."""
    assert [hit for path in MODULES if path != SPECS for hit in family_comparisons(path)] == []


def test_the_family_check_finds_branches(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        'if model.family == "sam": pass\nif family in ("medsam", "lite-medsam"): pass\n'
        'if name != "lite-medsam": pass\nif family is None: pass\nif spec.boxes_only: pass\n'
        'size = SIZES[model.family]\nsize = SIZES.get(family, 0)\nSIZES = {"sam": 1024}\n'
        "spec = family_spec(model.family)\n"
    )
    assert family_comparisons(probe, tmp_path) == [f"probe.py:{n}" for n in (1, 2, 3, 6, 7, 8)]


def test_no_module_of_the_view_is_over_its_length():
    lengths = {p.name: len(p.read_text().splitlines()) for p in MODULES if part_of(p) == "_qt"}
    assert {name: n for name, n in lengths.items() if n > MAX_QT_LINES} == {}


#: What only a viewer has: adding layers to it, its dims and key bindings. ``layers/`` takes layers
#: (and the viewer's position, read by the widget) and returns requests and results.
VIEWER_ATTRIBUTES = (
    "add_shapes", "add_points", "add_labels", "add_image", "add_layer", "bind_key", "keymap", "dims",
)  # fmt: skip


def viewer_uses(path: Path) -> list[str]:
    """Names of a viewer in ``path``: a name or argument called ``viewer``, or a viewer's attribute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        name = node.id if isinstance(node, ast.Name) else node.arg if isinstance(node, ast.arg) else None
        attribute = node.attr if isinstance(node, ast.Attribute) else None
        if (name and "viewer" in name.lower()) or attribute in VIEWER_ATTRIBUTES:
            found.append(f"{path.name}:{node.lineno} {name or attribute}")
    return sorted(found)


def test_layers_have_no_viewer_and_no_key_bindings():
    assert [hit for path in MODULES if part_of(path) == "layers" for hit in viewer_uses(path)] == []


def test_the_viewer_check_finds_a_viewer(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def add(viewer, image):\n    return viewer.add_shapes()\n\nlayer.bind_key('t')\n")
    assert viewer_uses(probe) == [
        "probe.py:1 viewer", "probe.py:2 add_shapes", "probe.py:2 viewer", "probe.py:4 bind_key",
    ]  # fmt: skip


def test_the_package_never_imports_the_tests():
    """Stand-ins and helpers live in ``tests/`` (``fakes.py``, ``conftest.py``...): the package never
    imports them, nor anything named after them."""
    names = {p.stem for p in TESTS.glob("*.py")} | {"tests"}
    found = {
        str(path.relative_to(PACKAGE)): bad
        for path in MODULES
        if (bad := [n for n in imports_of(path) if n.split(".")[0] in names])
    }
    assert found == {}


def predictor_probes(path: Path, root: Path = PACKAGE) -> list[str]:
    """Where ``path`` asks what kind of predictor it holds: ``isinstance(x, SomePredictor)``, or
    ``hasattr`` / ``getattr(..., default)`` on a name that holds a predictor: ``file:line`` each."""

    def named(node: ast.expr) -> str:
        return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""

    def probes(node: ast.AST) -> bool:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2):
            return False
        function, (subject, what, *rest) = node.func.id, node.args
        if function == "isinstance":
            kinds = what.elts if isinstance(what, ast.Tuple) else [what]
            return any(named(kind).endswith("Predictor") for kind in kinds)
        asks = function == "hasattr" or (function == "getattr" and bool(rest))
        return asks and "predictor" in named(subject).lower()

    tree = ast.parse(path.read_text(), filename=str(path))
    found = sorted(node.lineno for node in ast.walk(tree) if probes(node))
    return [f"{path.relative_to(root)}:{line}" for line in found]


def test_the_package_never_asks_what_predictor_it_holds():
    """Every predictor, real or the tests' stand-ins, implements ``SlicePredictor``: nothing asks which."""
    assert [hit for path in MODULES for hit in predictor_probes(path)] == []


def test_the_predictor_check_finds_probes(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "if isinstance(p, MedSamPredictor): pass\nif hasattr(self.predictor, 'cells'): pass\n"
        "x = getattr(predictor, 'store', None)\nif isinstance(p, (int, engine.SpyPredictor)): pass\n"
        "if isinstance(p, np.ndarray): pass\ny = getattr(predictor, name)\n"
    )
    assert predictor_probes(probe, tmp_path) == ["probe.py:1", "probe.py:2", "probe.py:3", "probe.py:4"]
