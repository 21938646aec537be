"""Backup while serving, restore an old backup, recover, write on: no fork anywhere.

Real nodes (``run_server``, real mutual TLS on 127.0.0.1, real SQLite files):
A writes, B follows A, W witnesses A. A is backed up while serving and
writes more; B and W see it. A is then replaced by its old backup, which
must fetch back what B holds (and check what W cosigned) before it signs
again, so that neither B nor W ever sees two histories of A.
"""

from __future__ import annotations

import functools
import stat
from pathlib import Path

import pytest

from node.config import WitnessAsk, append_witness_setting, load_config
from node.errors import RecoveringError
from node.ledger import Ledger
from node.ledger.backup import make_backup, restore_backup
from node.ledger.database import Database
from node.ledger.provision import init_node
from node.sync.recovery import recover_own_log
from protocol.entry import AddEntry
from tests.ops.conftest import add, cli, evidence, held, witnessed
from tests.sync.conftest import Serving, serve, shutdown, trusted
from tests.waiting import eventually
from tests.witness.conftest import ORIGIN, WITNESS, add_card, ask_witnesses, witness_vkey

pytestmark = pytest.mark.integration

FOLLOWER = "hotline-b.example/hashmesh"


async def test_restored_node_recovers_then_writes_without_forking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_dir, b_dir, w_dir = tmp_path / "a", tmp_path / "b", tmp_path / "w"
    init_node(a_dir, ORIGIN)
    init_node(b_dir, FOLLOWER)
    init_node(w_dir, WITNESS)
    with Ledger.open(a_dir, read_only=True) as ledger:
        a_vkey = ledger.own_log.verifier_key
    for node in (b_dir, w_dir):
        with Ledger.open(node) as ledger:
            ledger.follow(ORIGIN, a_vkey)
    append_witness_setting(a_dir, WitnessAsk(peer=WITNESS, key=witness_vkey(w_dir).to_text()))

    a = await serve(a_dir, sync=True, poll=1.0)
    b = await serve(b_dir, sync=True, poll=1.0)
    w = await serve(w_dir, sync=False)
    a_listen = f"127.0.0.1:{a.server.port}"
    restored: Serving | None = None
    try:
        add_card(a_dir, b_dir, b.url)
        add_card(a_dir, w_dir, w.url)
        add_card(b_dir, a_dir, a.url)
        add_card(w_dir, a_dir, a.url)
        await trusted(a, b_dir)
        await trusted(b, a_dir)
        await trusted(w, a_dir)

        assert add(a_dir, 0, 3) == 3
        await eventually(
            functools.partial(held, b_dir, ORIGIN),
            until=lambda n: n == 3,
            what="B to follow A to size 3",
        )
        await eventually(
            functools.partial(witnessed, w_dir, ORIGIN),
            until=lambda n: n == 3,
            what="W to cosign size 3",
        )

        # An online backup of the serving node.
        backup = tmp_path / "private" / "a.backup"
        backup.parent.mkdir(mode=0o700)
        status, out, _err = await cli(capsys, "--dir", str(a_dir), "backup", "--out", str(backup))
        assert status == 0, out
        assert "size 3" in out
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        assert stat.S_IMODE(backup.with_name("a.backup.sha256").stat().st_mode) == 0o600

        # A writes on after the backup; B follows, W cosigns.
        assert add(a_dir, 3, 4) == 7
        await eventually(
            functools.partial(held, b_dir, ORIGIN),
            until=lambda n: n == 7,
            what="B to follow A to size 7",
        )
        await eventually(
            functools.partial(witnessed, w_dir, ORIGIN),
            until=lambda n: n == 7,
            what="W to cosign size 7",
        )
        await shutdown(a)

        # A's disk is lost; the old backup is restored.
        a2_dir = tmp_path / "a-restored"
        status, out, err = await cli(capsys, "restore", str(backup), "--dir", str(a2_dir))
        assert status == 0, err
        assert "RECOVERING" in out
        assert held(a2_dir, ORIGIN) == 3
        for name in ("signing.key", "tls/node.key", "ledger.db", "config.toml"):
            assert stat.S_IMODE((a2_dir / name).stat().st_mode) == 0o600, name

        # Recovering: it signs nothing, through the ledger or the CLI.
        with Ledger.open(a2_dir) as ledger, pytest.raises(RecoveringError, match="recovering"):
            ledger.append([AddEntry.create(signal_type="md5", value="f" * 32)])
        status, _out, err = await cli(
            capsys, "--dir", str(a2_dir), "add", "--type", "md5", "--value", "e" * 32
        )
        assert status == 1
        assert "restored from a backup" in err and "hashmesh recover" in err
        with Ledger.open(a2_dir) as ledger, pytest.raises(RecoveringError):
            ledger.rotate_key("not while recovering")

        # A peer that cannot be reached is named, and the node stays recovering,
        # though it already fetched (verified) what B holds.
        unreachable = tmp_path / "c"
        init_node(unreachable, "hotline-c.example/hashmesh")
        add_card(a2_dir, unreachable, "https://127.0.0.1:1")
        status, _out, err = await cli(capsys, "--dir", str(a2_dir), "recover")
        assert status == 1
        assert "hotline-c.example/hashmesh" in err and "NOT REACHED" in err
        assert "--accept-fork-risk" in err
        assert f"peer {FOLLOWER}: size 7" in err
        assert held(a2_dir, ORIGIN) == 7
        with Ledger.open(a2_dir) as ledger:
            assert ledger.recovering is not None
        status, _out, _err = await cli(
            capsys, "--dir", str(a2_dir), "peer", "remove", "hotline-c.example/hashmesh"
        )
        assert status == 0

        # Served at A's address, it finishes recovering by itself (asking B
        # and W again), then signs on from the true head.
        restored = await serve(a2_dir, sync=True, poll=1.0, listen=a_listen)

        def recovering() -> bool:
            with Ledger.open(a2_dir, read_only=True) as ledger:
                return ledger.recovering is not None

        await eventually(recovering, until=lambda r: not r, what="A to finish recovering")
        assert add(a2_dir, 7, 2) == 9
        await eventually(
            functools.partial(held, b_dir, ORIGIN),
            until=lambda n: n == 9,
            what="B to follow the restored A to size 9",
        )
        await eventually(
            functools.partial(witnessed, w_dir, ORIGIN),
            until=lambda n: n == 9,
            what="W to cosign the restored A's size 9",
        )
        assert evidence(b_dir) == []
        assert evidence(a2_dir) == []
        with Ledger.open(b_dir, read_only=True) as ledger:
            assert not ledger.peers.is_frozen(ORIGIN)
        # B holds exactly the restored A's log, entry for entry.
        with Ledger.open(a2_dir, read_only=True) as mine, Ledger.open(b_dir, read_only=True) as b_l:
            assert list(mine.entries(mine.own_log)) == list(b_l.entries(b_l.log_for(ORIGIN)))
        assert load_config(a2_dir).recovery_mark_path.exists() is False
    finally:
        await shutdown(*(n for n in (a, b, w, restored) if n is not None and not n.task.done()))


async def test_a_witness_that_cosigned_more_is_never_overridden(tmp_path: Path) -> None:
    """No peer holds what W cosigned after the backup: the restored node must not sign."""
    a_dir, w_dir = tmp_path / "a", tmp_path / "w"
    init_node(a_dir, ORIGIN)
    init_node(w_dir, WITNESS)
    with Ledger.open(a_dir, read_only=True) as ledger:
        a_vkey = ledger.own_log.verifier_key
    with Ledger.open(w_dir) as ledger:
        ledger.follow(ORIGIN, a_vkey)
    append_witness_setting(a_dir, WitnessAsk(peer=WITNESS, key=witness_vkey(w_dir).to_text()))
    w = await serve(w_dir, sync=False)
    try:
        add_card(a_dir, w_dir, w.url)
        add_card(w_dir, a_dir, "https://127.0.0.1:1")  # W only answers A
        await trusted(w, a_dir)
        add(a_dir, 0, 2)
        backup = tmp_path / "a.backup"
        make_backup(a_dir, backup)
        add(a_dir, 2, 2)
        (outcome,) = await ask_witnesses(a_dir)
        assert outcome.error is None and witnessed(w_dir, ORIGIN) == 4

        a2_dir = tmp_path / "a2"
        restore_backup(backup, a2_dir)
        config = load_config(a2_dir)
        db = await Database.open(a2_dir)
        try:
            report = await recover_own_log(
                db,
                cert_path=config.tls_cert_path,
                key_path=config.tls_key_path,
                accept_fork_risk=True,
            )
        finally:
            await db.close()
        assert not report.recovered
        assert report.size == 2
        assert report.reason is not None
        assert f"{WITNESS} (witness, size 4)" in report.reason and "would fork" in report.reason
        with Ledger.open(a2_dir) as ledger, pytest.raises(RecoveringError):
            ledger.append([AddEntry.create(signal_type="md5", value="f" * 32)])
        assert witnessed(w_dir, ORIGIN) == 4  # W was asked, and cosigned nothing new
    finally:
        await shutdown(w)
