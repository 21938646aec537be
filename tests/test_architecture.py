"""The import direction the design depends on, enforced on the source text.

protocol/ must stay usable alone by an auditor: no node, no network, no
database, no event loop. Inside node/, layers only import downwards.
"""

from __future__ import annotations

import ast
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
