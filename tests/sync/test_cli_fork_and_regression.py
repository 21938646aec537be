"""Sync outcomes an operator must not miss (issue 14 item 6), over real mTLS.

* ``hashmesh sync`` exits 3 when it stores fork evidence, and ``status``
  (text and ``--json``) lists the frozen origin;
* an author that serves its own log smaller than we verified (restored from
  an old backup) is marked with the regression, not reported "behind";
* ``peer remove`` says what happens to the peer's origin, and ``--unfollow``
  stops following it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from node.cli import main as cli
from node.cli.federation import SYNC_FORK_EXIT
from node.ledger import Ledger
from tests.adversary.malicious_peer import serve_at, snapshot, split
from tests.sync.conftest import A, B, add_card, add_entries, make_node, serve, shutdown, trusted
from tests.sync.test_cli_federation import run

pytestmark = pytest.mark.integration


async def sync_cli(capsys: pytest.CaptureFixture[str], node: Path) -> tuple[int, str, str]:
    capsys.readouterr()
    # sync runs its own event loop: run it off this test's loop.
    status = await asyncio.to_thread(cli, ["--dir", str(node), "sync", "--once"])
    out, err = capsys.readouterr()
    return status, out, err


def _size(node: Path, origin: str) -> int:
    with Ledger.open(node, read_only=True) as ledger:
        return ledger.replica(origin).state().size


async def test_fork_makes_sync_exit_3_and_status_lists_the_frozen_origin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_dir, b_dir = make_node(tmp_path, "a", A), make_node(tmp_path, "b", B)
    add_card(a_dir, b_dir, "https://127.0.0.1:9", follow=False)  # A trusts B
    add_entries(a_dir, 0, 5)
    # A second history under A's key: same first 5 entries, then others.
    fork_dir = split(a_dir, tmp_path / "a-fork")
    add_entries(a_dir, 100, 3)
    add_entries(fork_dir, 200, 3)
    a = await serve(a_dir, sync=False)
    try:
        add_card(b_dir, a_dir, a.url)
        await trusted(a, b_dir)
        status, out, err = await sync_cli(capsys, b_dir)
        assert status == 0, err
        assert f"{A} ahead size 8 (+8)" in out
        port = a.server.port
    finally:
        await shutdown(a)
    fork = await serve_at(fork_dir, port)
    try:
        status, out, err = await sync_cli(capsys, b_dir)
    finally:
        await fork.close()
    assert status == SYNC_FORK_EXIT, out + err
    assert "FORK" in err and "evidence stored" in err and A in err
    assert _size(b_dir, A) == 8  # nothing of the other history was taken
    status, out, _ = run(capsys, "--dir", str(b_dir), "status")
    assert status == 0 and f"FROZEN origins:   {A}" in out
    status, out, _ = run(capsys, "--dir", str(b_dir), "status", "--json")
    assert json.loads(out)["frozen_origins"] == [A]
    # Exit status 3 is for new evidence: with the peer gone, the next round
    # is an ordinary failure (1).
    status, _, err = await sync_cli(capsys, b_dir)
    assert status == 1 and "FAILED" in err


async def test_an_author_serving_its_own_log_smaller_is_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_dir, b_dir = make_node(tmp_path, "a", A), make_node(tmp_path, "b", B)
    add_card(a_dir, b_dir, "https://127.0.0.1:9", follow=False)
    add_entries(a_dir, 0, 10)
    old_backup = snapshot(a_dir, tmp_path / "a-backup")  # size 10
    add_entries(a_dir, 10, 20)  # size 30
    a = await serve(a_dir, sync=False)
    try:
        add_card(b_dir, a_dir, a.url)
        await trusted(a, b_dir)
        status, out, err = await sync_cli(capsys, b_dir)
        assert status == 0 and f"{A} ahead size 30" in out, err
        port = a.server.port
    finally:
        await shutdown(a)
    # A is restored from the old backup: it now serves size 10 of its own log.
    restored = await serve_at(old_backup, port)
    try:
        status, out, err = await sync_cli(capsys, b_dir)
    finally:
        await restored.close()
    assert status == 1, out + err
    assert f"its own log {A} went backwards: it serves size 10 after we verified size 30" in err
    assert _size(b_dir, A) == 30
    status, out, _ = run(capsys, "--dir", str(b_dir), "peer", "list", "--json")
    row = json.loads(out)[0]
    assert "went backwards" in row["last_error"]


def test_peer_remove_says_what_happens_to_its_origin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_dir, b_dir = make_node(tmp_path, "a", A), make_node(tmp_path, "b", B)
    add_card(b_dir, a_dir, "https://127.0.0.1:9")
    status, out, _ = run(capsys, "--dir", str(b_dir), "peer", "remove", A)
    assert status == 0
    assert f"its origin {A} is still followed (no peer left to relay it)" in out
    assert "--unfollow" in out
    with Ledger.open(b_dir, read_only=True) as ledger:
        assert [f.origin for f in ledger.peers.list_follows()] == [A]
    add_card(b_dir, a_dir, "https://127.0.0.1:9")
    status, out, _ = run(capsys, "--dir", str(b_dir), "peer", "remove", A, "--unfollow")
    assert status == 0 and f"stopped following its origin {A}" in out
    with Ledger.open(b_dir, read_only=True) as ledger:
        assert ledger.peers.list_follows() == []
        assert ledger.peers.list_peers() == []
