"""Shared pytest fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
TLOG_VECTORS = SHARED_DIR / "vectors" / "tlog.json"


def load_shared_vectors(path: Path) -> dict[str, Any]:
    """Read a file of shared conformance vectors, or say plainly where it should be."""
    if not path.is_file():
        raise FileNotFoundError(
            f"conformance vectors not found at {path}: the tests expect the "
            "project's shared/ folder beside the repository checkout"
        )
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def load_tlog_vectors() -> dict[str, Any]:
    """Read the shared RFC 6962 and signed-note conformance vectors."""
    return load_shared_vectors(TLOG_VECTORS)


@pytest.fixture(scope="session")
def tlog_vectors() -> dict[str, Any]:
    """The conformance vectors made with Go's sumdb/tlog and sumdb/note."""
    return load_tlog_vectors()
