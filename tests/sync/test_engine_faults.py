"""The sync engine against an in-memory peer that misbehaves: nothing bad gets in.

The peer is :class:`~tests.sync.memory_peer.InMemoryPeerClient` (no server,
no TLS): each test switches one fault on, checks that the round fails (or
detects the fork) without changing the follower's database, then switches it
off and checks that the same peer syncs.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.config import load_config
from node.errors import PeerProtocolError, PeerUnavailableError
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.service import CATCH_UP_WAL_BYTES
from node.sync.engine import sync_peer
from tests.node.conftest import snapshot
from tests.sync.conftest import AUTHOR, FOLLOWER, add_entries, make_node
from tests.sync.memory_peer import InMemoryPeerClient

PEER = "relay.example/hashmesh"


@dataclass
class Setup:
    author: Path
    follower: Path
    db: Database
    peer: InMemoryPeerClient

    def size(self) -> int:
        with Ledger.open(self.follower, read_only=True) as ledger:
            return ledger.replica(AUTHOR).state().size

    def snapshot(self) -> dict[str, object]:
        return snapshot(load_config(self.follower).database_path)

    def last_error(self) -> str | None:
        with Ledger.open(self.follower, read_only=True) as ledger:
            return {s.name: s for s in ledger.peers.peer_statuses()}[PEER].last_error


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    author = make_node(tmp_path, "a", AUTHOR)
    follower = make_node(tmp_path, "b", FOLLOWER)
    add_entries(author, 0, 40)
    with Ledger.open(author, read_only=True) as ledger:
        vkey = ledger.own_log.verifier_key
    with Ledger.open(follower) as ledger:
        ledger.follow(AUTHOR, vkey)
    db = await Database.open(follower)
    peer = InMemoryPeerClient(PEER, author)
    try:
        yield Setup(author, follower, db, peer)
    finally:
        await peer.close()
        await db.close()


async def test_an_honest_peer_is_synced_in_chunks(setup: Setup) -> None:
    report = await sync_peer(setup.db, setup.peer, chunk=15)
    assert report.error is None, report.error
    assert [(r.verdict, r.appended, r.size) for r in report.origins] == [("ahead", 40, 40)]
    assert setup.peer.calls.count("consistency") == 2  # chunks ending at 15 and 30
    with (
        Ledger.open(setup.follower, read_only=True) as ledger,
        Ledger.open(setup.author, read_only=True) as author,
    ):
        assert ledger.recompute_root(AUTHOR) == author.recompute_root()


def _drop_last(_start: int, page: list[bytes]) -> list[bytes]:
    return page[:-1]


def _swap_first_two(_start: int, page: list[bytes]) -> list[bytes]:
    return [page[1], page[0], *page[2:]]


def _flip_proof(hashes: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return (bytes(32), *hashes[1:])


def _bump_size(note: str) -> str:
    lines = note.split("\n")
    lines[1] = str(int(lines[1]) + 1)  # the body no longer matches its signature
    return "\n".join(lines)


FAULTS = {
    "truncated page": ("page", _drop_last),
    "reordered page": ("page", _swap_first_two),
    "bad consistency proof": ("proof", _flip_proof),
    "checkpoint not signed by the origin": ("note", _bump_size),
    "rate limited": ("errors", {"entries": PeerUnavailableError(PEER, "/v1/entries answered 429")}),
    "broken body": ("errors", {"consistency": PeerProtocolError(PEER, "broken response body")}),
    "unreachable": ("errors", {"logs": PeerUnavailableError(PEER, "cannot reach the peer")}),
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_faulty_peer_changes_nothing(setup: Setup, fault: str) -> None:
    assert (await sync_peer(setup.db, setup.peer, chunk=15)).error is None
    add_entries(setup.author, 40, 40)
    before = setup.snapshot()
    what, value = FAULTS[fault]
    setattr(setup.peer.faults, what, value)
    # Two chunks: the first is proven a prefix of the checkpoint by a proof.
    report = await sync_peer(setup.db, setup.peer, chunk=20)
    assert report.error is not None, fault
    assert setup.snapshot() == before
    assert setup.last_error() == report.error
    setattr(setup.peer.faults, what, {} if what == "errors" else None)
    report = await sync_peer(setup.db, setup.peer)
    assert report.error is None, report.error
    assert setup.size() == 80


async def test_a_fault_in_a_later_chunk_keeps_the_chunks_before_it(setup: Setup) -> None:
    def cut_from_20(start: int, page: list[bytes]) -> list[bytes]:
        return page if start < 20 else page[:-1]

    setup.peer.faults.page = cut_from_20
    report = await sync_peer(setup.db, setup.peer, chunk=10)
    assert report.error is not None
    assert setup.size() == 20  # two verified chunks committed, nothing partial
    setup.peer.faults.page = None
    report = await sync_peer(setup.db, setup.peer, chunk=10)
    assert [(r.appended, r.size) for r in report.origins] == [(20, 40)]


def _wal_interval(ledger: Ledger) -> int:
    return int(ledger.store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])


@pytest.mark.parametrize("faulty", [False, True])
async def test_a_catch_up_defers_checkpoints_and_always_resumes_them(
    setup: Setup, faulty: bool
) -> None:
    if faulty:
        setup.peer.faults.page = lambda start, page: page if start < 20 else page[:-1]
    during: list[asyncio.Future[int]] = []

    def progress(_origin: str, _held: int, _target: int) -> None:
        # Queued on the writer before the next chunk's write.
        during.append(asyncio.ensure_future(setup.db.write(_wal_interval)))

    report = await sync_peer(setup.db, setup.peer, chunk=10, progress=progress)
    assert (report.error is not None) == faulty
    page_size = await setup.db.write(
        lambda ledger: ledger.store.conn.execute("PRAGMA page_size").fetchone()[0]
    )
    deferred = CATCH_UP_WAL_BYTES // page_size
    seen = [await f for f in during]
    assert seen[:-1] == [deferred] * (len(seen) - 1) and len(seen) >= 2
    # Ended with the catch-up, failed or not: the default again, WAL copied.
    assert await setup.db.write(_wal_interval) == 1000
    assert setup.size() == (20 if faulty else 40)


async def test_one_chunk_leaves_the_checkpoints_alone(setup: Setup) -> None:
    seen: list[asyncio.Future[int]] = []

    def progress(_origin: str, _held: int, _target: int) -> None:
        seen.append(asyncio.ensure_future(setup.db.write(_wal_interval)))

    assert (await sync_peer(setup.db, setup.peer, chunk=40, progress=progress)).error is None
    assert [await f for f in seen] == [1000]


async def test_a_forked_checkpoint_freezes_the_origin(setup: Setup, tmp_path: Path) -> None:
    assert (await sync_peer(setup.db, setup.peer)).error is None
    # A twin of the author with the same key, diverging from size 40.
    await setup.peer.close()
    twin = tmp_path / "twin"
    shutil.copytree(setup.author, twin)
    add_entries(setup.author, 40, 5)
    add_entries(twin, 1000, 5)
    with Ledger.open(twin, read_only=True) as ledger:
        forked = ledger.latest_checkpoint().note
    setup.peer = InMemoryPeerClient(PEER, setup.author)
    assert (await sync_peer(setup.db, setup.peer)).error is None
    assert setup.size() == 45

    setup.peer.faults.note = lambda _note: forked
    report = await sync_peer(setup.db, setup.peer)
    assert [r.verdict for r in report.origins] == ["fork"]
    with Ledger.open(setup.follower, read_only=True) as ledger:
        assert ledger.replica(AUTHOR).state().frozen
        assert [e.origin for e in ledger.peers.list_evidence()] == [AUTHOR]
    # Frozen: the honest checkpoint is not taken either.
    setup.peer.faults.note = None
    report = await sync_peer(setup.db, setup.peer)
    assert [r.verdict for r in report.origins] == ["frozen"]
