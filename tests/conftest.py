"""Shared pytest fixtures."""

from __future__ import annotations

import json
import sys
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


# The 10M-entry node of tests/node/test_restart_10m.py (issue 18) is built
# once per run in a child process that starts as soon as collection shows a
# test needing it, so the build runs on the core the suite leaves idle; the
# tests that need it run last (tests/node/ten_million.py).
_TEN_MILLION = "ten_million"


def _needs_ten_million(item: pytest.Item) -> bool:
    return _TEN_MILLION in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_needs_ten_million)  # stable: every other test keeps its place


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or not any(map(_needs_ten_million, session.items)):
        return
    from tests.node.ten_million import BUILD, Build

    session.config.stash[BUILD] = Build.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    module = sys.modules.get("tests.node.ten_million")
    build = None if module is None else session.config.stash.get(module.BUILD, None)
    if build is not None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(build.summary())
        build.discard()  # gigabytes of disk; a child still building is stopped
