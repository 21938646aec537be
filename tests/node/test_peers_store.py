"""The peer store (peers, peer status, follows, evidence) and schema upgrades from v1 and v2."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.errors import ConfigError, SchemaVersionError
from node.ledger import Ledger
from node.ledger.service import CATCH_UP_WAL_BYTES
from node.storage.ledger_store import WAL_KEPT_BYTES, LedgerStore
from node.storage.peer_store import PeerRecord, PeerStore
from node.storage.schema import (
    PAGE_SIZE,
    READER_CACHE_KIB,
    SCHEMA_VERSION,
    TILE_LEVEL,
    WRITER_CACHE_KIB,
    migrate,
)
from protocol.entry import AddEntry
from protocol.keys import NoteSigner
from protocol.merkle import verify_inclusion
from protocol.tree import CompactRange

SPKI_A = "a" * 64
SPKI_B = "b" * 64


def peer(name: str, spki: str, role: str = "peer") -> PeerRecord:
    return PeerRecord(
        name=name,
        url="https://127.0.0.1:8443",
        tls_cert="-----BEGIN CERTIFICATE-----\n...",
        spki=spki,
        vkey=NoteSigner.generate(name).verifier().to_text(),
        role=role,
        added_at="2025-01-01T00:00:00Z",
    )


def test_peers_add_lookup_remove(ledger: Ledger) -> None:
    peers = ledger.peers
    a, b = peer("a.example/log", SPKI_A), peer("b.example/log", SPKI_B, "auditor")
    peers.add_peer(a)
    peers.add_peer(b)
    assert peers.list_peers() == [a, b]
    assert peers.peer_by_spki(SPKI_B) == b
    assert peers.peer_by_spki("c" * 64) is None
    with pytest.raises(ConfigError, match="already exists"):
        peers.add_peer(peer("a.example/log", "c" * 64))
    with pytest.raises(ConfigError, match="already uses TLS key"):
        peers.add_peer(peer("c.example/log", SPKI_A))
    with pytest.raises(ConfigError, match="role"):
        peers.add_peer(peer("c.example/log", "c" * 64, "admin"))
    peers.record_peer_error("a.example/log", "boom")
    assert peers.remove_peer("a.example/log") is True
    assert peers.remove_peer("a.example/log") is False
    assert peers.peer_by_spki(SPKI_A) is None
    assert peers.peer_statuses() == []


def test_the_ledger_store_hands_out_one_peer_store_on_its_connection(tmp_path: Path) -> None:
    store = LedgerStore.open(tmp_path / "x.db")
    try:
        assert isinstance(store.peers, PeerStore) and store.peers.conn is store.conn
        assert store.peers is store.peers
        with store.transaction():
            store.peers.add_peer(peer("a.example/log", SPKI_A))
            assert store.conn.in_transaction  # joined, not committed on its own
        assert [p.name for p in store.peers.list_peers()] == ["a.example/log"]
    finally:
        store.close()


def test_spki_lookup_uses_an_index(ledger: Ledger) -> None:
    plan = ledger.store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM peers WHERE spki = ?", (SPKI_A,)
    ).fetchall()
    assert "USING INDEX" in " ".join(str(r[-1]) for r in plan)


def test_add_peer_joins_the_callers_transaction(ledger: Ledger) -> None:
    store = ledger.store

    def attempt() -> None:
        with store.transaction():
            store.peers.add_peer(peer("a.example/log", SPKI_A))
            ledger.follow("a.example/log", store.peers.list_peers()[0].vkey)
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        attempt()
    assert store.peers.list_peers() == [] and store.peers.list_follows() == []


def test_peer_status(ledger: Ledger) -> None:
    peers = ledger.peers
    peers.record_peer_error("p", "timed out")
    peers.record_peer_error("p", "refused")
    (s,) = peers.peer_statuses()
    assert (s.last_error, s.failures, s.last_ok_at) == ("refused", 2, None)
    peers.record_peer_ok("p")
    (s,) = peers.peer_statuses()
    assert s.failures == 0 and s.last_ok_at is not None and s.last_error == "refused"


def test_follows(ledger: Ledger) -> None:
    store = ledger.store
    vkey = NoteSigner.generate("a.example/log").verifier().to_text()
    ledger.follow("a.example/log", vkey)
    ledger.follow("a.example/log", vkey)  # idempotent
    assert [(f.origin, f.vkey) for f in store.peers.list_follows()] == [("a.example/log", vkey)]
    other = NoteSigner.generate("a.example/log").verifier().to_text()
    with pytest.raises(ConfigError, match="another key"):
        ledger.follow("a.example/log", other)
    with pytest.raises(ConfigError, match=r"not 'b\.example/log'"):
        ledger.follow("b.example/log", vkey)
    with pytest.raises(ConfigError, match="not valid"):
        ledger.follow("b.example/log", "garbage")
    own = ledger.own_log
    with pytest.raises(ConfigError, match="own log"):
        ledger.follow(own.origin, own.verifier_key)


def test_evidence_is_append_only_and_freezes(ledger: Ledger) -> None:
    store = ledger.store
    assert store.peers.add_evidence("a.example/log", b'{"x":1}', "peer-1") is True
    assert store.peers.add_evidence("a.example/log", b'{"x":1}', "peer-2") is False
    assert store.peers.frozen_origins() == {"a.example/log"}
    assert store.peers.is_frozen("a.example/log") and not store.peers.is_frozen("b.example/log")
    (record,) = store.peers.list_evidence()
    assert (record.origin, record.evidence_json, record.source) == (
        "a.example/log",
        b'{"x":1}',
        "peer-1",
    )
    for sql in ("DELETE FROM evidence", "UPDATE evidence SET source = 'x'"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store.conn.execute(sql)


def _as_old_database(node_dir: Path, version: int) -> None:
    """Rewrite the node's database as schema ``version`` (1 or 2), same ledger.

    Old versions store every tree node of level >= 1 and keep the value and
    labels in ``active``; both are rebuilt here from the entries.
    """
    db = node_dir / "ledger.db"
    old = node_dir / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    migrate(conn, target=version)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == version
    conn.execute("ATTACH DATABASE ? AS cur", (str(db),))
    for table in ("logs", "entries", "checkpoints", "retractions"):
        conn.execute(f"INSERT INTO {table} SELECT * FROM cur.{table}")
    conn.execute(
        "INSERT INTO active (log_id, signal_type, value, idx, labels) "
        "SELECT log_id, signal_type, value, idx, labels FROM cur.listed"
    )
    for (log_id,) in conn.execute("SELECT log_id FROM logs").fetchall():
        leaves = [
            bytes(r[0])
            for r in conn.execute(
                "SELECT leaf_hash FROM entries WHERE log_id = ? ORDER BY idx", (log_id,)
            )
        ]
        for run in CompactRange.empty().extend(leaves, collect=True):
            conn.executemany(
                "INSERT INTO nodes (log_id, level, idx, hash) VALUES (?, ?, ?, ?)",
                ((log_id, run.level, run.start + i, h) for i, h in enumerate(run.hashes)),
            )
    conn.execute("DETACH DATABASE cur")
    conn.close()
    db.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    old.rename(db)


@pytest.mark.parametrize("version", [1, 2])
def test_old_database_is_migrated_in_place(node_dir: Path, version: int) -> None:
    values = [f"{i:032x}" for i in range(40)]
    with Ledger.open(node_dir) as ledger:
        ledger.append([AddEntry.create(signal_type="md5", value=v, labels=["h:x"]) for v in values])
        ledger.retract(7, "reviewed")
        root = ledger.latest_checkpoint().root_hash
        status = ledger.status()
    _as_old_database(node_dir, version)
    conn = sqlite3.connect(node_dir / "ledger.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert ("peers" in tables) == (version == 2)
    assert (
        conn.execute("SELECT count(*) FROM nodes WHERE level < ?", (TILE_LEVEL,)).fetchone()[0]
        == 40 // 2 + 40 // 4 + 40 // 8
    )
    conn.close()
    with Ledger.open(node_dir) as ledger:
        conn = ledger.store.conn
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        # An old database keeps its page size (it cannot change in WAL mode).
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        # The tree rows below the tile level are gone, the others kept.
        levels = [r[0] for r in conn.execute("SELECT level FROM nodes ORDER BY level")]
        assert levels == [4, 4, 5]
        assert ledger.latest_checkpoint().root_hash == root
        assert ledger.recompute_root() == (41, root)
        for i in range(41):
            proof = ledger.prove_inclusion(i)
            verify_inclusion(i, 41, proof.leaf_hash or b"", proof.hashes, root)
        assert ledger.status() == status
        assert ledger.peers.list_peers() == []
        ledger.peers.add_evidence("x.example/y", b"{}", "t")
        for table in ("evidence", "entries", "nodes"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(f"DELETE FROM {table}")
        # The migrated duplicate index still knows every listed hash, and
        # the retracted one is listable again.
        again = ledger.append(
            [AddEntry.create(signal_type="md5", value=v, labels=["h:x"]) for v in values]
        )
        assert (again.count, len(again.duplicates)) == (1, 39)
        assert again.duplicates[0].existing_index == 0
        assert ledger.append([AddEntry.create(signal_type="md5", value="b" * 32)]).count == 1


def test_new_database_has_8_kib_pages(ledger: Ledger) -> None:
    conn = ledger.store.conn
    assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 8192
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_writer_and_readers_have_their_page_caches(ledger: Ledger, node_dir: Path) -> None:
    # A negative cache_size is in KiB: the writer's bulk transactions keep
    # the random pages of ``active`` in memory instead of spilling them.
    assert ledger.store.conn.execute("PRAGMA cache_size").fetchone()[0] == -WRITER_CACHE_KIB
    assert WRITER_CACHE_KIB >= 32 * 1024
    # Readers keep the interior pages proofs walk (READER_CACHE_KIB), bounded
    # below the writer's: serve holds several of them.
    reader = LedgerStore.open(node_dir / "ledger.db", read_only=True)
    assert reader.conn.execute("PRAGMA cache_size").fetchone()[0] == -READER_CACHE_KIB
    assert 2000 < READER_CACHE_KIB <= WRITER_CACHE_KIB
    reader.conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaVersionError, match="newer"):
        LedgerStore.open(tmp_path / "x.db")


def test_deferred_checkpoints_nest_and_end_with_a_checkpoint(
    ledger: Ledger, node_dir: Path
) -> None:
    conn = ledger.store.conn

    def add(i: int) -> AddEntry:
        return AddEntry.create(signal_type="sha256", value=f"{i:064x}", labels=[])

    def pragma(name: str) -> int:
        return int(conn.execute(f"PRAGMA {name}").fetchone()[0])

    deferred = CATCH_UP_WAL_BYTES // pragma("page_size")
    ledger.defer_checkpoints()
    ledger.defer_checkpoints()  # a second catch-up at the same time
    assert pragma("wal_autocheckpoint") == deferred
    # Commits of more than SQLite's 1,000 pages stay in the WAL meanwhile.
    for start in range(0, 30_000, 10_000):
        ledger.append([add(i) for i in range(start, start + 10_000)])
    wal = node_dir / "ledger.db-wal"
    assert wal.stat().st_size > 1000 * pragma("page_size")
    ledger.resume_checkpoints()
    assert pragma("wal_autocheckpoint") == deferred
    ledger.resume_checkpoints()
    assert pragma("wal_autocheckpoint") == 1000
    assert pragma("journal_size_limit") == WAL_KEPT_BYTES
    # Everything was copied into the database; the next write cuts the WAL back.
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and frames == copied
    ledger.append([add(40_000)])
    assert wal.stat().st_size <= WAL_KEPT_BYTES
    ledger.resume_checkpoints()  # one too many: nothing happens
    assert pragma("wal_autocheckpoint") == 1000
