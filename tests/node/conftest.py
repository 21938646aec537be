"""Fixtures for node tests: real node directories on tmp_path."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.ledger import Ledger
from node.ledger.provision import init_node

ORIGIN = "hotline-test.example/hashmesh"


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    path = tmp_path / "node"
    init_node(path, ORIGIN)
    return path


@pytest.fixture
def ledger(node_dir: Path) -> Iterator[Ledger]:
    with Ledger.open(node_dir) as opened:
        yield opened


def snapshot(db_path: Path) -> dict[str, object]:
    """Everything a rejected write must leave unchanged."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        state: dict[str, object] = {}
        for table in (
            "logs",
            "entries",
            "nodes",
            "checkpoints",
            "retractions",
            "active",
            "active_base",
        ):
            state[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
        return state
    finally:
        conn.close()
