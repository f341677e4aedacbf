"""deploykit's import graph has no cycle.

The graph is read with ``ast`` from ``deploykit/**/*.py`` without importing anything. It holds every
import of a deploykit module, at module level AND inside functions: deploykit imports TensorFlow and
its own heavy modules inside functions on purpose (so ``--help`` and the server stay light), and a
cycle through such an import is still two modules that cannot be understood or changed apart, and
becomes an import-time failure the day someone hoists the import. An import of ``a.b.c`` is an edge
to the deepest module that exists (``from a.b import c`` is an edge to ``a.b.c`` when ``c`` is a
module); parent packages are not edges (Python runs them first, and a package's ``__init__`` only
names its API lazily).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deploykit"

#: Cycles tolerated for now: none. A new one is a design error (a helper in the wrong module), not an entry here.
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


#: The statement lists of a node: an import is a statement, so it is found in these without visiting expressions.
_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


@functools.cache
def parsed(path: Path) -> ast.Module:
    """The file's syntax tree, parsed once per process (two test files read the package's)."""
    return ast.parse(path.read_text(encoding="utf-8"))


def import_statements(tree: ast.AST):
    """Every ``import`` / ``from ... import`` in ``tree``, nested in functions, classes and blocks included.

    Walks the statement lists only (``ast.walk`` visits every expression too: a third of the parse's cost)."""
    for node in getattr(tree, "body", ()) if isinstance(tree, ast.Module) else (tree,):
        yield from _statements(node)


def _statements(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    for field in _BODIES:
        for child in getattr(node, field, None) or ():
            yield from _statements(child)


def _imported(module: str, tree: ast.Module, is_package: bool, modules) -> set[str]:
    """The deploykit modules (names in ``modules``) that ``module`` imports anywhere in ``tree``."""

    def deepest(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in import_statements(tree):
        if isinstance(node, ast.Import):
            found |= {deepest(alias.name) for alias in node.names if alias.name.startswith("deploykit")}
        elif isinstance(node, ast.ImportFrom):
            base = (
                ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".")
                if node.level
                else node.module
            )
            if base and base.startswith("deploykit"):
                found |= {deepest(f"{base}.{alias.name}") for alias in node.names}
    return found - {module, ""}


def import_graph() -> dict[str, set[str]]:
    """module -> the deploykit modules it imports; a fresh copy of one parse per process (three tests read it)."""
    return {name: set(targets) for name, targets in _parsed_graph().items()}


@functools.cache
def _parsed_graph() -> dict[str, frozenset[str]]:
    modules = _modules()
    return {
        name: frozenset(_imported(name, parsed(path), path.name == "__init__.py", modules))
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def test_the_graph_reader_sees_every_kind_of_import():
    modules = {"deploykit", "deploykit.a", "deploykit.a.b", "deploykit.a.e", "deploykit.c", "deploykit.d"}
    modules |= {"deploykit.f", "deploykit.g", "deploykit.h", "deploykit.i"}
    source = (
        "import numpy\nimport deploykit.a.b.attr\nfrom deploykit import c\n"
        "def f():\n    from deploykit.d import thing\n    from . import e\n"
        "class K:\n    def m(self):\n        try:\n            import deploykit.f\n"
        "        except ImportError:\n            import deploykit.g\n        finally:\n            pass\n"
        "if x:\n    pass\nelse:\n    with y:\n        import deploykit.h\n"
        "match z:\n    case 1:\n        import deploykit.i\n"
    )
    expected = {"deploykit.a.b", "deploykit.c", "deploykit.d", "deploykit.a.e"}
    expected |= {"deploykit.f", "deploykit.g", "deploykit.h", "deploykit.i"}  # in methods, handlers, blocks, cases
    tree = ast.parse(source)
    assert _imported("deploykit.a.x", tree, False, modules) == expected  # a module of package a
    assert _imported("deploykit.a", tree, True, modules) == expected  # package a's __init__
    assert len(list(import_statements(tree))) == sum(
        isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)
    )
    graph = import_graph()
    assert "deploykit.io.models" in graph["deploykit.cli.common"]  # an import inside a function of the real package


def test_cycle_finder_finds_a_cycle_and_only_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}
    assert cycles({"a": {"b"}, "b": set()}) == set()


def test_no_import_cycle_in_deploykit():
    found = cycles(import_graph())
    new = found - KNOWN_CYCLES
    assert not new, f"import cycles: {[sorted(c) for c in new]}"
    fixed = KNOWN_CYCLES - found
    assert not fixed, f"these cycles are gone: remove them from KNOWN_CYCLES: {[sorted(c) for c in fixed]}"
