"""deploykit's layering: a module imports only from its own layer or the layers below it.

The layers are data (``LAYERS``, lowest first), and the import graph is the one ``test_import_graph`` reads
with ``ast`` (imports inside functions included: a lazy import upward is still a dependency upward). The rule
makes the architecture readable from the tree: ``core`` knows nothing of Keras 3 files, data sets or ONNX
files; the steps know nothing of the pipeline; the server and the CLI sit on top and nothing imports them.
A new module goes in the lowest layer its imports allow; a violation is a helper in the wrong place, not an
entry in an allow-list.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_import_graph import import_graph, import_statements, parsed

#: The folders whose imports of deploykit are checked.
ROOTS = ("deploykit", "tests", "benchmarks", "examples")
PROJECT = Path(__file__).resolve().parents[1]

#: Top-level modules of ``deploykit/``: small utilities every layer may use.
BASE = "_lazy _version atomic backend configs errors files limits log progress records shipped stats".split()

#: The layers, lowest first: each entry's packages may import their own layer and every layer before it.
LAYERS: tuple[tuple[str, ...], ...] = (
    tuple(f"deploykit.{m}" for m in BASE),
    ("deploykit.core",),
    ("deploykit.keras3", "deploykit.onnx", "deploykit.data"),
    ("deploykit.io",),
    ("deploykit.fold", "deploykit.sparsity", "deploykit.training"),
    ("deploykit.export",),
    ("deploykit.uncertainty",),
    ("deploykit.pipeline",),
    ("deploykit.cli", "deploykit.serve"),
)

#: The root package: it only names the public API lazily; importing it (for ``__file__``) is no dependency.
ROOT = "deploykit"


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of the package (or top-level module) that holds ``module``."""
    for index, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return index
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS in tests/test_layering.py")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module in a higher layer, as ``a -> b`` lines."""
    return sorted(
        f"{module} (layer {layer_of(module)}) -> {target} (layer {layer_of(target)})"
        for module, targets in graph.items()
        if module != ROOT
        for target in targets
        if target != ROOT and layer_of(target) > layer_of(module)
    )


def test_every_module_is_in_a_layer():
    for module in import_graph():
        if module != ROOT:
            layer_of(module)


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_the_rule_catches_an_upward_import():
    graph = {"deploykit.core.task": {"deploykit.pipeline.run"}, "deploykit.cli.main": {"deploykit.core.task"}}
    assert upward_imports(graph) == ["deploykit.core.task (layer 1) -> deploykit.pipeline.run (layer 7)"]


def test_a_module_outside_every_layer_is_named():
    try:
        layer_of("deploykit.newpackage.thing")
    except AssertionError as error:
        assert "deploykit.newpackage.thing is in no layer" in str(error)
    else:
        raise AssertionError("a module outside every layer was accepted")


def _package_modules() -> set[str]:
    """Every module and package of ``deploykit/`` as a dotted name, read from the tree (nothing imported)."""
    names = set()
    for path in (PROJECT / "deploykit").rglob("*.py"):
        parts = list(path.relative_to(PROJECT).with_suffix("").parts)
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _public_root_names() -> set[str]:
    """What ``from deploykit import X`` may name besides a module: the lazily exported API and the version."""
    tree = ast.parse((PROJECT / "deploykit" / "__init__.py").read_text(encoding="utf-8"))
    api = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.targets[0].id == "_API")
    return {key.value for key in api.keys} | {"__version__"}


def unresolved_imports(sources: dict[str, ast.Module], modules: set[str], root_names: set[str]) -> list[str]:
    """Imports of a deploykit module that does not exist (``file: name``).

    Checked from the source because an editable install of another checkout would still import an old path
    (its finder serves the modules this tree no longer has), so a missed rename passes every test there.
    """
    missing = []
    for where, tree in sources.items():
        for node in import_statements(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "deploykit"]
                missing += [f"{where}: {n}" for n in names if n not in modules]
            elif (
                isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "deploykit"
            ):
                if node.module not in modules:
                    missing.append(f"{where}: {node.module}")
                elif node.module == "deploykit":
                    missing += [
                        f"{where}: deploykit.{a.name}"
                        for a in node.names
                        if f"deploykit.{a.name}" not in modules and a.name not in root_names
                    ]
    return sorted(missing)


def test_every_import_of_deploykit_names_a_module_that_exists():
    sources = {
        str(path.relative_to(PROJECT)): parsed(path) for folder in ROOTS for path in (PROJECT / folder).rglob("*.py")
    }
    assert unresolved_imports(sources, _package_modules(), _public_root_names()) == []


def test_an_import_of_a_moved_module_is_caught():
    modules = {"deploykit", "deploykit.keras3", "deploykit.keras3.activations"}
    source = "from deploykit import keras3_activations, optimize\nimport deploykit.graph\nfrom deploykit.io import x\n"
    assert unresolved_imports({"t.py": ast.parse(source)}, modules, {"optimize"}) == [
        "t.py: deploykit.graph",
        "t.py: deploykit.io",
        "t.py: deploykit.keras3_activations",
    ]
