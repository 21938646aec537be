"""Shared pytest fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
TLOG_VECTORS = SHARED_DIR / "vectors" / "tlog.json"


@pytest.fixture(scope="session")
def tlog_vectors() -> dict[str, Any]:
    """The conformance vectors made with Go's sumdb/tlog and sumdb/note."""
    data: dict[str, Any] = json.loads(TLOG_VECTORS.read_text(encoding="utf-8"))
    return data
