"""One sync round against a scripted peer: good data lands, bad data changes nothing."""

from __future__ import annotations

import pytest

from node.config import load_config
from node.ledger import Ledger
from node.sync.engine import sync_peer
from protocol.checkpoint import open_checkpoint
from protocol.keys import NoteVerifier
from tests.node.conftest import snapshot
from tests.sync.conftest import AUTHOR, World, add_entries


def replica_size(world: World) -> int:
    with Ledger.open(world.follower, read_only=True) as ledger:
        return ledger.replica(AUTHOR).state().size


async def test_initial_sync_in_chunks_then_delta(world: World) -> None:
    add_entries(world.author, 0, 1000)
    async with world.client() as client:
        report = await sync_peer(world.db, client, chunk=300)
    assert report.error is None, report.error
    assert [(r.origin, r.verdict, r.appended, r.size) for r in report.origins] == [
        (AUTHOR, "ahead", 1000, 1000)
    ]
    # Chunks of 300 below the checkpoint size are each proven by a consistency proof.
    assert world.peer.requests.count("/v1/proof/consistency") == 3
    with (
        Ledger.open(world.follower, read_only=True) as ledger,
        Ledger.open(world.author, read_only=True) as author,
    ):
        assert ledger.recompute_root(AUTHOR) == author.recompute_root()
        note = ledger.latest_checkpoint(AUTHOR).note
        vkey = NoteVerifier.from_text(author.own_log.verifier_key)
    assert open_checkpoint(note, vkey).checkpoint.size == 1000

    add_entries(world.author, 1000, 5)
    async with world.client() as client:
        report = await sync_peer(world.db, client)
    assert [(r.verdict, r.appended) for r in report.origins] == [("ahead", 5)]
    async with world.client() as client:
        report = await sync_peer(world.db, client)
    assert [(r.verdict, r.appended) for r in report.origins] == [("same", 0)]


async def test_interrupted_sync_resumes_from_last_chunk(world: World) -> None:
    add_entries(world.author, 0, 100)
    calls = {"n": 0}

    def cut_after_two_pages(path: str, body: bytes) -> bytes:
        if path == "/v1/entries":
            calls["n"] += 1
            if calls["n"] > 2:
                return b"{"  # the connection 'breaks' mid-sync
        return body

    world.peer.transform = cut_after_two_pages
    async with world.client() as client:
        report = await sync_peer(world.db, client, chunk=30)
    assert report.error is not None and "entries" in report.error
    assert replica_size(world) == 60  # two verified chunks committed, nothing partial
    world.peer.transform = None
    async with world.client() as client:
        report = await sync_peer(world.db, client, chunk=30)
    assert report.error is None
    assert [(r.appended, r.size) for r in report.origins] == [(40, 100)]


FAULTS = [
    ("bad_signature", "signature"),
    ("wrong_entries", ""),
    ("flip_byte", ""),
    ("html", "expected application/json"),
    ("bad_json", "JSON"),
    ("oversized", "cap"),
    ("gzip_bomb", "cap"),
    ("extra_entry", "more than the"),
    ("trailing_byte", "entries[50]"),
]


@pytest.mark.parametrize(("fault", "reason"), FAULTS, ids=[f for f, _ in FAULTS])
async def test_bad_peer_gets_nothing_in(world: World, fault: str, reason: str) -> None:
    add_entries(world.author, 0, 50)
    async with world.client() as client:
        assert (await sync_peer(world.db, client, chunk=20)).error is None
    add_entries(world.author, 50, 50)
    db_path = load_config(world.follower).database_path
    before = snapshot(db_path)
    world.peer.faults.add(fault)
    async with world.client() as client:
        report = await sync_peer(world.db, client, chunk=1000)
    assert report.error is not None
    assert reason.lower() in report.error.lower()
    assert snapshot(db_path) == before
    with Ledger.open(world.follower, read_only=True) as ledger:
        statuses = {s.name: s for s in ledger.peers.peer_statuses()}
    assert statuses[AUTHOR].last_error == report.error
    # The fault gone, the same peer syncs fine.
    world.peer.faults.clear()
    async with world.client() as client:
        report = await sync_peer(world.db, client)
    assert report.error is None and replica_size(world) == 100


async def test_bad_consistency_proof_rejects_chunk(world: World) -> None:
    add_entries(world.author, 0, 100)
    db_path = load_config(world.follower).database_path
    before = snapshot(db_path)
    world.peer.faults.add("bad_proof")
    async with world.client() as client:
        report = await sync_peer(world.db, client, chunk=40)
    assert report.error is not None
    assert snapshot(db_path) == before


async def test_stalling_peer_times_out(world: World) -> None:
    add_entries(world.author, 0, 10)
    db_path = load_config(world.follower).database_path
    before = snapshot(db_path)
    world.peer.faults.add("stall")
    async with world.client(timeout=1.0) as client:
        report = await sync_peer(world.db, client)
    assert report.error is not None and "timed out" in report.error
    assert snapshot(db_path) == before
