"""The federation commands as an operator types them: cards, peers, follow, sync, evidence."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from node.cli import main as cli
from node.ledger import Ledger
from protocol.entry import AddEntry
from tests.sync.conftest import A, B, make_node, serve, sha, shutdown, trusted

pytestmark = pytest.mark.integration


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_card_add_list_remove_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = make_node(tmp_path, "a", A), make_node(tmp_path, "b", B)
    status, card, _ = run(capsys, "--dir", str(a), "peer", "card", "--url", "https://127.0.0.1:9")
    assert status == 0
    doc = json.loads(card)
    assert doc["name"] == A and doc["url"] == "https://127.0.0.1:9" and doc["card"] == 1
    card_file = tmp_path / "a.card.json"
    card_file.write_text(card, encoding="utf-8")

    status, _, err = run(capsys, "--dir", str(a), "peer", "add", str(card_file), "--role", "peer")
    assert status == 1 and "own card" in err
    status, out, _ = run(capsys, "--dir", str(b), "peer", "add", str(card_file), "--role", "peer")
    assert status == 0 and "added hotline-a.example/hashmesh as peer" in out
    status, _, err = run(
        capsys, "--dir", str(b), "peer", "add", str(card_file), "--role", "auditor"
    )
    assert status == 1 and "already" in err
    status, out, _ = run(capsys, "--dir", str(b), "peer", "list", "--json")
    rows = json.loads(out)
    assert [(r["name"], r["role"], r["last_error"]) for r in rows] == [(A, "peer", None)]
    with Ledger.open(b, read_only=True) as ledger:
        assert [f.origin for f in ledger.peers.list_follows()] == [A]

    tampered = dict(doc, vkey=doc["vkey"].replace(A, B))
    bad_card = tmp_path / "bad.json"
    bad_card.write_text(json.dumps(tampered), encoding="utf-8")
    status, _, err = run(capsys, "--dir", str(b), "peer", "add", str(bad_card), "--role", "peer")
    assert status == 1 and "vkey" in err
    bad_card.write_text(json.dumps(dict(doc, extra=1)), encoding="utf-8")
    status, _, err = run(capsys, "--dir", str(b), "peer", "add", str(bad_card), "--role", "peer")
    assert status == 1 and "unknown field 'extra'" in err

    status, out, _ = run(capsys, "--dir", str(b), "peer", "remove", A)
    assert status == 0 and "403" in out
    status, _, err = run(capsys, "--dir", str(b), "peer", "remove", A)
    assert status == 1 and "no peer named" in err


def test_follow_checks_the_key_matches_the_origin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = make_node(tmp_path, "a", A), make_node(tmp_path, "b", B)
    with Ledger.open(a, read_only=True) as ledger:
        vkey = ledger.own_log.verifier_key
    status, _, err = run(capsys, "--dir", str(b), "follow", "other.example/log", vkey)
    assert status == 1 and "not 'other.example/log'" in err
    status, _, err = run(capsys, "--dir", str(b), "follow", A, vkey[:-4])
    assert status == 1 and "vkey" in err
    status, out, _ = run(capsys, "--dir", str(b), "follow", A, vkey)
    assert status == 0 and "following hotline-a.example/hashmesh" in out


async def test_sync_once_status_fsck_and_failure_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_dir, b_dir = make_node(tmp_path, "a", A), make_node(tmp_path, "b", B)
    with Ledger.open(a_dir) as ledger:
        ledger.append([AddEntry.create(signal_type="sha256", value=sha(i)) for i in range(7)])
    a = await serve(a_dir, sync=False)
    try:
        for src, dst in ((a_dir, b_dir), (b_dir, a_dir)):
            card = tmp_path / f"{src.name}.card"
            url = a.url if src == a_dir else "https://127.0.0.1:9"
            capsys.readouterr()
            assert cli(["--dir", str(src), "peer", "card", "--url", url]) == 0
            card.write_text(capsys.readouterr().out, encoding="utf-8")
            assert cli(["--dir", str(dst), "peer", "add", str(card), "--role", "peer"]) == 0
        await trusted(a, b_dir)
        # sync --once runs its own event loop: run it off this test's loop.
        status = await asyncio.to_thread(cli, ["--dir", str(b_dir), "sync", "--once"])
        out, err = capsys.readouterr()
        assert status == 0, err
        assert f"{A}: {A} ahead size 7 (+7)" in out
        status, out, _ = run(capsys, "--dir", str(b_dir), "status", "--origin", A, "--json")
        assert status == 0 and json.loads(out)["size"] == 7
        status, out, err = run(capsys, "--dir", str(b_dir), "fsck")
        assert status == 0, out + err
    finally:
        await shutdown(a)
    # The peer is gone now: the failure is reported, named, and recorded.
    status = await asyncio.to_thread(cli, ["--dir", str(b_dir), "sync", "--once"])
    _, err = capsys.readouterr()
    assert status == 1 and f"{A}: FAILED" in err
    status, out, _ = run(capsys, "--dir", str(b_dir), "peer", "list")
    assert "FAILING since" in out
    with Ledger.open(b_dir, read_only=True) as ledger:
        assert ledger.replica(A).state().size == 7
