"""The import direction the design depends on, enforced on the source text.

protocol/ must stay usable alone by an auditor: no node, no network, no
database, no event loop. Inside node/, layers only import downwards, no
module imports itself back through others (no import cycle, function-local
and ``if TYPE_CHECKING:`` imports included), and the layers above the ledger
never reach into storage through a ``.store`` attribute.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROTOCOL_FORBIDDEN = {
    "node",
    "aiohttp",
    "sqlite3",
    "sqlite_utils",
    "asyncio",
    "ssl",
    "socket",
    "http",
    "urllib",
    "subprocess",
}

# Lower index = lower layer. A module may import its own layer and lower ones.
NODE_LAYERS = ["storage", "ledger", "sync", "audit", "api", "cli"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def protocol_files() -> list[Path]:
    return sorted((ROOT / "protocol").rglob("*.py"))


def node_layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "node" or len(parts) < 2:
        return None
    name = parts[1]
    return NODE_LAYERS.index(name) if name in NODE_LAYERS else None


def test_protocol_has_modules() -> None:
    assert len(protocol_files()) >= 5


@pytest.mark.parametrize("path", protocol_files(), ids=lambda p: p.name)
def test_protocol_is_pure(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m.split(".")[0] in PROTOCOL_FORBIDDEN}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_node_layers_import_downwards() -> None:
    violations = []
    for path in sorted((ROOT / "node").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        own = node_layer(".".join(rel.parts))
        if own is None:
            continue
        for module in imported_modules(path):
            target = node_layer(module)
            if target is not None and target > own:
                violations.append(f"{'.'.join(rel.parts)} imports {module}")
    assert not violations, violations


def test_checker_detects_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import sqlite3\nfrom node.cli import main\n", encoding="utf-8")
    assert imported_modules(bad) == {"sqlite3", "node.cli"}
    assert node_layer("node.cli") > node_layer("node.storage.schema")  # type: ignore[operator]


# -- storage stays below the ledger ---------------------------------------------
#
# The layers above the ledger read and write through the ledger's own
# queries and the per-concern stores it hands out (ledger.peers,
# ledger.witnessing, ledger.matching), never through its `store` attribute:
# any attribute named `store`, on anything, is refused there.

ABOVE_THE_LEDGER = ("api", "sync", "audit", "cli")


def store_reach_through(path: Path) -> list[int]:
    """Lines of ``path`` where an attribute named ``store`` is read or written."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "store"
    )


def test_no_store_reach_through_above_the_ledger() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for layer in ABOVE_THE_LEDGER
        for path in sorted((ROOT / "node" / layer).rglob("*.py"))
        for line in store_reach_through(path)
    ]
    assert not found, "storage reached through `.store` above the ledger: " + ", ".join(found)


def test_store_checker_detects_a_reach_through(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def read(ledger):\n"
        "    peers = ledger.peers.list_peers()\n"
        "    return ledger.store.list_logs(), (lambda l: l.store)(ledger)\n",
        encoding="utf-8",
    )
    assert store_reach_through(bad) == [3, 3]


# -- import cycles -------------------------------------------------------------
#
# Every import statement counts wherever it stands: at module level, inside a
# function, under ``if TYPE_CHECKING:``. Each is resolved to modules of the
# tree:
# - ``import a.b.c`` and ``from a.b.c import name`` import the module
#   ``a.b.c``; ``from a.b import c`` imports the submodule ``a.b.c`` when there
#   is one, else the package ``a.b`` (its ``__init__``), which defines ``c``.
# - Python runs ``a/__init__`` and ``a/b/__init__`` before ``a.b.c``, but that
#   is NOT counted as importing them: a package ``__init__`` re-exports its
#   submodules (node.ledger re-exports node.ledger.service), so counting it
#   would tie every submodule to its siblings through a facade it never
#   reads. A module that names its own package (``from node.ledger import
#   Ledger`` inside node.ledger.replica) does import the ``__init__``, and that
#   cycle is reported.
# Modules outside node/ and protocol/ (stdlib, packages) are not followed.

CYCLE_ROOTS = ("node", "protocol")


def module_names(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root/<package>``."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    # A package's own ``from . import x`` is relative to the package itself.
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def module_imports(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``module`` (at ``path``) imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif source in modules:
                    found.add(source)
    found.discard(module)
    return found


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports."""
    modules = module_names(root, packages)
    return {name: module_imports(name, path, modules) for name, path in modules.items()}


def knots(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module.

    Tarjan's algorithm, iterative (no recursion limit on deep trees).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            vertex, successors = work[-1]
            if successors:
                nxt = successors.pop(0)
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[vertex] = min(low[vertex], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[vertex])
            if low[vertex] == index[vertex]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == vertex:
                        break
                if len(component) > 1:
                    components.append(set(component))
    return components


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One concrete loop ``a -> b -> ... -> a`` through each knot of ``graph``."""
    return [_loop(graph, knot) for knot in knots(graph)]


def _loop(graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    """One loop through a strongly connected component: breadth-first back to its start."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for vertex in frontier:
            for nxt in sorted(graph[vertex] & component):
                if nxt == start:
                    path = [vertex]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt not in came_from:
                    came_from[nxt] = vertex
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT, CYCLE_ROOTS)
    found = [
        f"{' -> '.join(_loop(graph, knot))} (knot of {len(knot)}: {', '.join(sorted(knot))})"
        for knot in knots(graph)
    ]
    assert not found, "import cycles: " + "; ".join(found)


def plant(root: Path, files: Mapping[str, str]) -> Path:
    """Write ``files`` (relative path -> source) under ``root``; return ``root``."""
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


def test_cycle_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import A\n",
            "pkg/a.py": "from pkg.sub import b\nA = 1\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/b.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg.sub.c import C\n",
            "pkg/sub/c.py": "def f() -> None:\n    from ..a import A  # function-local, relative\n",
            "pkg/d.py": "import os\nimport pkg.a\n",
        },
    )
    graph = import_graph(root, ["pkg"])
    assert graph["pkg.a"] == {"pkg.sub.b"}  # a submodule named in `from pkg.sub import b`
    assert graph["pkg.sub.b"] == {"pkg.sub.c"}  # under TYPE_CHECKING
    assert graph["pkg.sub.c"] == {"pkg.a"}  # function-local and relative
    assert graph["pkg.d"] == {"pkg.a"}  # not pkg/__init__, not os
    assert import_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]]


@pytest.mark.parametrize(
    ("a_imports", "cycles"),
    [
        ("from pkg import B\n", [["pkg", "pkg.a", "pkg"]]),  # its own package's __init__
        ("", []),
    ],
)
def test_cycle_checker_on_a_package_facade(
    tmp_path: Path, a_imports: str, cycles: list[list[str]]
) -> None:
    root = plant(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import A\nfrom pkg.b import B\n",
            "pkg/a.py": a_imports + "A = 1\n",
            "pkg/b.py": "from pkg.a import A\nB = A\n",
        },
    )
    assert import_cycles(import_graph(root, ["pkg"])) == cycles
