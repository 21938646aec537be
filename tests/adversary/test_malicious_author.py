"""A compromised author key claims a huge log (TESTPLAN 9, fast-forward).

The author's own key signs checkpoints of sizes it never had (10^9 and
2^63 - 1) with a made-up root, served by a relay (the in-memory peer of the
harness). Without entries that hash to that root nothing can be verified, so
the follower's database must not change at all: its latest checkpoint is
not moved, no entry is stored, the peer is marked with the reason; once the
relay serves the real head again, the follower syncs normally.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.config import load_config
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.key_files import load_signer
from node.sync.engine import sync_peer
from protocol.checkpoint import Checkpoint, sign_checkpoint
from tests.adversary.malicious_peer import InMemoryPeerClient
from tests.node.conftest import snapshot
from tests.sync.conftest import AUTHOR, FOLLOWER, add_entries, make_node

RELAY = "relay.example/hashmesh"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Path, Path, Database, InMemoryPeerClient]]:
    author = make_node(tmp_path, "a", AUTHOR)
    follower = make_node(tmp_path, "b", FOLLOWER)
    add_entries(author, 0, 20)
    with Ledger.open(author, read_only=True) as ledger:
        vkey = ledger.own_log.verifier_key
    with Ledger.open(follower) as ledger:
        ledger.follow(AUTHOR, vkey)
    db = await Database.open(follower)
    peer = InMemoryPeerClient(RELAY, author)
    try:
        yield author, follower, db, peer
    finally:
        await peer.close()
        await db.close()


@pytest.mark.parametrize("size", [10**9, 2**63 - 1])
async def test_a_signed_huge_size_moves_nothing(
    world: tuple[Path, Path, Database, InMemoryPeerClient], size: int
) -> None:
    author, follower, db, peer = world
    assert (await sync_peer(db, peer)).error is None
    add_entries(author, 20, 5)
    signer = load_signer(load_config(author))
    forged = sign_checkpoint(
        Checkpoint(origin=AUTHOR, size=size, root_hash=hashlib.sha256(b"made up").digest()),
        signer,
    )
    before = snapshot(load_config(follower).database_path)
    peer.faults.note = lambda _note: forged
    report = await sync_peer(db, peer)
    assert report.error is not None
    assert snapshot(load_config(follower).database_path) == before
    with Ledger.open(follower, read_only=True) as ledger:
        assert ledger.replica(AUTHOR).state().size == 20
        status = {s.name: s for s in ledger.peers.peer_statuses()}[RELAY]
        assert status.last_error == report.error
    peer.faults.note = None
    report = await sync_peer(db, peer)
    assert report.error is None, report.error
    assert [(r.verdict, r.size) for r in report.origins] == [("ahead", 25)]
