"""Shared pytest fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
TLOG_VECTORS = SHARED_DIR / "vectors" / "tlog.json"


def load_tlog_vectors() -> dict[str, Any]:
    """Read the shared conformance vectors, or say plainly where they should be."""
    if not TLOG_VECTORS.is_file():
        raise FileNotFoundError(
            f"conformance vectors not found at {TLOG_VECTORS}: the tests expect the "
            "project's shared/ folder beside the repository checkout"
        )
    data: dict[str, Any] = json.loads(TLOG_VECTORS.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="session")
def tlog_vectors() -> dict[str, Any]:
    """The conformance vectors made with Go's sumdb/tlog and sumdb/note."""
    return load_tlog_vectors()
