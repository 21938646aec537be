"""`sync --json` and `evidence list --json` on real nodes (mutual TLS on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from node.cli import main as cli
from tests.sync.conftest import A, B, add_card, add_entries, make_node, serve, shutdown, trusted

pytestmark = pytest.mark.integration


async def test_sync_and_evidence_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_dir, b_dir = make_node(tmp_path, "a", A), make_node(tmp_path, "b", B)
    add_entries(a_dir, 0, 12)
    a = await serve(a_dir, sync=False)
    try:
        add_card(a_dir, b_dir, "https://127.0.0.1:9")
        add_card(b_dir, a_dir, a.url)
        await trusted(a, b_dir)
        capsys.readouterr()
        status = await asyncio.to_thread(cli, ["--dir", str(b_dir), "sync", "--json"])
        out, err = capsys.readouterr()
        assert status == 0, err
        assert err == ""  # stderr is no terminal here: no progress bar
        (report,) = json.loads(out)
        assert report["peer"] == A and report["ok"] is True and report["error"] is None
        assert report["origins"] == [{"origin": A, "verdict": "ahead", "size": 12, "appended": 12}]
    finally:
        await shutdown(a)
    status = await asyncio.to_thread(cli, ["--dir", str(b_dir), "sync", "--json"])
    out, _ = capsys.readouterr()
    (report,) = json.loads(out)
    assert status == 1 and report["ok"] is False
    assert report["error_kind"] == "peer_unavailable" and A in report["error"]
    assert cli(["--dir", str(b_dir), "evidence", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
