"""One sync round against a scripted peer: good data lands, bad data changes nothing."""

from __future__ import annotations

import pytest

from node.config import load_config
from node.ledger import Ledger
from node.sync.engine import sync_peer
from protocol.checkpoint import open_checkpoint
from protocol.keys import NoteVerifier
from protocol.wire import decode_entry_bundle, encode_entry_bundle
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


def _upper_case_value(data: bytes) -> bytes:
    # Not canonical: refused when the chunk is parsed, before the writer sees it.
    at = data.index(b'"value":"') + 9
    return data[:at] + data[at:].upper().replace(b'"},"V":2}', b'"},"v":2}')


def _other_value(data: bytes) -> bytes:
    # Canonical, but not the origin's entry: refused by the proof against its checkpoint.
    at = data.index(b'"value":"') + 9
    return data[:at] + (b"0" if data[at : at + 1] != b"0" else b"1") + data[at + 1 :]


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_upper_case_value, "entries[97].signal.value"),
        (_other_value, "do not lead to the checkpoint's root"),
    ],
    ids=["malformed", "unproven"],
)
async def test_a_bad_chunk_fetched_while_the_one_before_is_written_changes_nothing(
    world: World, spoil: object, reason: str
) -> None:
    # The engine fetches and parses chunk k+1 while chunk k is written. A bad
    # k+1 must leave the database as chunk k's commit left it, whether it is
    # refused on the parsing thread or by the writer.
    add_entries(world.author, 0, 60)
    async with world.client() as client:
        assert (await sync_peer(world.db, client, chunk=30)).error is None
    add_entries(world.author, 60, 60)
    db_path = load_config(world.follower).database_path
    after_write: list[dict[str, object]] = []
    write = world.db.write

    async def recording(fn: object) -> object:
        result = await write(fn)  # type: ignore[arg-type]
        after_write.append(snapshot(db_path))
        return result

    pages = {"n": 0}

    def spoil_second_page(path: str, body: bytes) -> bytes:
        if path != "/v1/entries":
            return body
        pages["n"] += 1
        if pages["n"] != 2:
            return body
        datas = decode_entry_bundle(body, max_entries=30)
        datas[7] = spoil(datas[7])  # type: ignore[operator]
        return encode_entry_bundle(datas)

    world.peer.transform = spoil_second_page
    world.db.write = recording  # type: ignore[method-assign]
    try:
        async with world.client() as client:
            report = await sync_peer(world.db, client, chunk=30)
    finally:
        world.db.write = write  # type: ignore[method-assign]
    assert report.error is not None and reason in report.error
    assert pages["n"] == 2
    assert replica_size(world) == 90  # chunk [60, 90) committed, [90, 120) refused
    committed = [s for s in after_write if len(s["entries"]) == 90]  # type: ignore[arg-type]
    assert committed and snapshot(db_path) == committed[0]
    world.peer.transform = None
    async with world.client() as client:
        report = await sync_peer(world.db, client, chunk=30)
    assert report.error is None and replica_size(world) == 120
