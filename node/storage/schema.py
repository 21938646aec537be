"""SQLite schema, pragmas and migrations of the ledger database.

Layer: node.storage. Performs database I/O on the connection it is given.

The schema version lives in ``PRAGMA user_version``; each migration moves the
database up by one version inside the caller's transaction. Append-only is
enforced by the schema as well as by the code: triggers abort any UPDATE or
DELETE on entries, tree nodes, checkpoints and retractions. The ``active``
table is a derived index (hashes currently listed, per log) and is the only
table rows are deleted from, when a retraction is committed.

Version 2 adds federation: ``peers`` (who may connect, by TLS key, and in
which role), ``follows`` (origins we replicate, pinned to their verifier key),
``evidence`` (append-only fork evidence; an origin with evidence is frozen:
the frozen marker is derived, so it can never be cleared by accident) and
``peer_status`` (the last success and failure of syncing from each peer).
``peers``, ``follows`` and ``peer_status`` are configuration and state, not
ledger data, so rows may be deleted from them.

Version 3 makes the write path cheaper (one bulk import of 1,000,000 hashes
spent most of its time in SQLite B-trees):

* ``nodes`` holds only perfect subtrees of level >= :data:`TILE_LEVEL`. The
  hashes below are folded on demand from at most ``2**TILE_LEVEL`` stored
  leaf hashes (one tile), so proofs still take O(log n) reads and the table
  gets 1/8 of a row per entry instead of one. The migration deletes the
  lower rows: they are derived data, recomputable from ``entries`` (which is
  untouched), and nothing reads them any more. ``nodes`` is append-only by
  trigger, so the migration drops ``nodes_no_delete``, deletes and creates
  the trigger again in the same transaction: a crash rolls all of it back,
  and no other connection can write in between (the migration holds the
  write lock from ``BEGIN IMMEDIATE`` to ``COMMIT``).
* ``active`` (the duplicate index) is keyed by a 64-bit integer derived from
  (signal type, value) (:func:`active_key`) instead of the value text, with
  the entry index as the rest of the key. Two values may share a key, so a
  look-up returns candidates that the caller checks against the stored
  entry. The signal type, value and labels are read from the entry itself;
  the ``listed`` view shows them, so they stay queryable in SQL.

Version 4 adds matching, witnessing and key rotation:

* ``pdq`` (derived, like ``active``): the 32 bytes of every listed PDQ hash
  of every held log, which the near-match index is loaded from; a
  retraction deletes the row.
* ``opinions`` (derived): one row per opinion entry of any held log, indexed
  by the entry it is about.
* ``witness_state``: per origin witnessed, the last checkpoint this node
  cosigned; moved only forward, by a check-and-save in one transaction.
* ``cosignatures`` (append-only): witness cosignature lines collected for
  checkpoints of held logs, served with the checkpoint.
* ``origin_keys`` (append-only): each origin's key chain; a key signs the
  checkpoints of sizes ``>= from_size`` up to the next row's. The migration
  seeds one row per held log with its current key.

Version 5 adds ``witness_waits``: per followed origin whose witness policy
a newer checkpoint does not meet yet, that checkpoint with every verified
cosignature collected for it from any peer, and since when this node waits.
It is state, not ledger data: the row goes when a checkpoint that large is
held, and is replaced by a larger waiting checkpoint.

Version 6 adds certificate renewal (``hashmesh tls renew``): ``peer_cards``
(per peer, the latest signed card accepted: its serial, which only grows,
and the note as received) and ``peer_certs`` (the fingerprint of every
certificate that card lists, so a peer is recognised by any of them). Both
are state, not ledger data.

Version 7 splits ``active`` into two levels, because a bulk import into a
large node spent its commit rewriting ``active`` (a B-tree with a random key:
at 10M entries a 200,000-line import dirtied nearly every one of its pages).
The existing table is renamed ``active_base`` (the large, merged level) and a
new, empty ``active`` with the same layout takes every new row. A merge
(:meth:`~node.storage.ledger_store.LedgerStore.merge_active_rows`, called by
:mod:`node.ledger.active_levels`) moves rows from ``active`` into
``active_base`` in key order, a chunk per transaction, so each base page is
written once per merge instead of once per import. A row lives in exactly
one of the two; every reader reads both (the ``listed`` view does). The
migration renames and creates: it moves no row, so a node of any size opens
at once.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy
import sqlite_utils

from node.errors import SchemaVersionError

__all__ = [
    "SCHEMA_VERSION",
    "TILE_LEVEL",
    "active_key",
    "active_keys",
    "apply_pragmas",
    "migrate",
    "missing_guards",
    "rebuilt_tables",
    "restore_guards",
    "suspended_triggers",
]

SCHEMA_VERSION = 7

TILE_LEVEL = 4
"""Lowest level of the tree nodes stored (schema version 3 and later)."""

PAGE_SIZE = 8192
"""SQLite page size of a new ledger database (existing ones keep theirs)."""


_ACTIVE_KEY_HASH = hashlib.blake2b(digest_size=8, person=b"hashmesh-active")


def active_key(signal_type: str, value: str) -> int:
    """The 64-bit key of a listed hash in the ``active`` index.

    A keyed hash would stop nobody who can read the code; the first 8 bytes
    of BLAKE2b make collisions rare for honest data and make crafting many of
    them expensive, and a collision only costs one extra entry read.
    """
    # Copying a prepared state is a quarter cheaper than a new personalised
    # hash object, and this runs once per imported or replicated add.
    h = _ACTIVE_KEY_HASH.copy()
    h.update(f"{signal_type}:{value}".encode("ascii"))
    return int.from_bytes(h.digest(), "big", signed=True)


def active_keys(identities: Iterable[tuple[str, str]]) -> list[int]:
    """:func:`active_key` of each ``(signal type, value)``, in order (for bulk writes).

    The hash state is prepared once per signal type (``"type:"`` absorbed)
    and the digests are converted in one numpy call: 0.3 µs a key instead
    of 0.8 µs for :func:`active_key` one by one.
    """
    prepared: dict[str, Callable[[], hashlib.blake2b]] = {}
    digests: list[bytes] = []
    append = digests.append
    for signal_type, value in identities:
        copy = prepared.get(signal_type)
        if copy is None:
            h = _ACTIVE_KEY_HASH.copy()
            h.update(f"{signal_type}:".encode("ascii"))
            copy = prepared[signal_type] = h.copy
        h = copy()
        h.update(value.encode("ascii"))
        append(h.digest())
    keys: list[int] = numpy.frombuffer(b"".join(digests), dtype=">i8").tolist()
    return keys


# The tables whose rows are never updated or deleted (triggers enforce it):
# entries, nodes, checkpoints, retractions (v1) and evidence (v2).

_V1 = """
CREATE TABLE logs (
    log_id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL UNIQUE,
    verifier_key TEXT NOT NULL,
    is_own INTEGER NOT NULL CHECK (is_own IN (0, 1)),
    created_at TEXT NOT NULL
);
-- One row per leaf. data is the exact entry encoding (the RFC 6962 leaf data).
CREATE TABLE entries (
    log_id INTEGER NOT NULL REFERENCES logs(log_id),
    idx INTEGER NOT NULL CHECK (idx >= 0),
    data BLOB NOT NULL,
    leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32),
    PRIMARY KEY (log_id, idx)
) WITHOUT ROWID;
-- Hashes of perfect subtrees of level >= 1 (level 0 is entries.leaf_hash), so
-- any proof is served with O(log n) reads.
CREATE TABLE nodes (
    log_id INTEGER NOT NULL REFERENCES logs(log_id),
    level INTEGER NOT NULL CHECK (level >= 1),
    idx INTEGER NOT NULL CHECK (idx >= 0),
    hash BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (log_id, level, idx)
) WITHOUT ROWID;
-- Every signed checkpoint, in order of size. note is the exact signed note.
CREATE TABLE checkpoints (
    log_id INTEGER NOT NULL REFERENCES logs(log_id),
    size INTEGER NOT NULL CHECK (size >= 0),
    root_hash BLOB NOT NULL CHECK (length(root_hash) = 32),
    note TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (log_id, size)
) WITHOUT ROWID;
CREATE TABLE retractions (
    log_id INTEGER NOT NULL REFERENCES logs(log_id),
    target INTEGER NOT NULL,
    retracted_by INTEGER NOT NULL,
    PRIMARY KEY (log_id, target)
) WITHOUT ROWID;
-- Derived: the hashes each log currently lists (added, not retracted).
CREATE TABLE active (
    log_id INTEGER NOT NULL REFERENCES logs(log_id),
    signal_type TEXT NOT NULL,
    value TEXT NOT NULL,
    idx INTEGER NOT NULL,
    labels TEXT NOT NULL,
    PRIMARY KEY (log_id, signal_type, value)
) WITHOUT ROWID;
"""


_V2 = """
CREATE TABLE peers (
    peer_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    tls_cert TEXT NOT NULL,
    spki TEXT NOT NULL UNIQUE CHECK (length(spki) = 64),
    vkey TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('peer', 'subscriber', 'auditor')),
    added_at TEXT NOT NULL
);
-- Origins we replicate; the log row (logs.is_own = 0) is created with it.
CREATE TABLE follows (
    origin TEXT PRIMARY KEY,
    vkey TEXT NOT NULL,
    added_at TEXT NOT NULL
) WITHOUT ROWID;
-- Fork evidence (protocol.evidence JSON); any row freezes its origin.
CREATE TABLE evidence (
    evidence_id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    evidence_json BLOB NOT NULL,
    source TEXT NOT NULL,
    detected_at TEXT NOT NULL,
    UNIQUE (origin, evidence_json)
);
CREATE TABLE peer_status (
    name TEXT PRIMARY KEY,
    last_ok_at TEXT,
    last_error TEXT,
    last_error_at TEXT,
    failures INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0)
) WITHOUT ROWID;
"""

_V3 = """
ALTER TABLE active RENAME TO active_v2;
-- Derived: the hashes each log currently lists, by active_key(type, value);
-- idx is the listing add entry. Several rows may share a key.
CREATE TABLE active (
    log_id INTEGER NOT NULL REFERENCES logs(log_id),
    key INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (log_id, key, idx)
) WITHOUT ROWID;
-- The listed hashes with their type, value and labels, read from the entry.
CREATE VIEW listed AS
SELECT a.log_id AS log_id, a.idx AS idx,
       json_extract(e.data, '$.signal.type') AS signal_type,
       json_extract(e.data, '$.signal.value') AS value,
       json_extract(e.data, '$.labels') AS labels
FROM active AS a JOIN entries AS e ON e.log_id = a.log_id AND e.idx = a.idx
"""


_V4 = """
-- Derived: every listed PDQ hash (32 bytes) of every held log.
CREATE TABLE pdq (
    log_id INTEGER NOT NULL REFERENCES logs(log_id),
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (log_id, idx)
) WITHOUT ROWID;
-- Derived: one row per opinion entry of any held log.
CREATE TABLE opinions (
    log_id INTEGER NOT NULL REFERENCES logs(log_id),
    idx INTEGER NOT NULL,
    target_origin TEXT NOT NULL,
    target_idx INTEGER NOT NULL,
    target_leaf_hash BLOB NOT NULL CHECK (length(target_leaf_hash) = 32),
    verdict TEXT NOT NULL,
    PRIMARY KEY (log_id, idx)
) WITHOUT ROWID;
CREATE INDEX opinions_target ON opinions (target_origin, target_idx);
-- The last checkpoint this node cosigned as a witness, per origin.
CREATE TABLE witness_state (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL CHECK (size >= 0),
    root_hash BLOB NOT NULL CHECK (length(root_hash) = 32),
    note TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;
-- Witness cosignature lines collected for checkpoints of held logs.
CREATE TABLE cosignatures (
    log_id INTEGER NOT NULL REFERENCES logs(log_id),
    size INTEGER NOT NULL CHECK (size >= 0),
    witness TEXT NOT NULL,
    key_id TEXT NOT NULL,
    line TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (log_id, size, witness, key_id)
) WITHOUT ROWID;
-- Each origin's key chain: vkey signs checkpoints of size >= from_size
-- (until the next row); rotated_by is the index of the rotate entry.
CREATE TABLE origin_keys (
    origin TEXT NOT NULL,
    from_size INTEGER NOT NULL CHECK (from_size >= 0),
    vkey TEXT NOT NULL,
    rotated_by INTEGER,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (origin, from_size)
) WITHOUT ROWID
"""


_V5 = """
-- A followed origin's newest checkpoint still short of its witness policy,
-- with every verified cosignature collected for it so far (from any peer).
CREATE TABLE witness_waits (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL CHECK (size >= 0),
    root_hash BLOB NOT NULL CHECK (length(root_hash) = 32),
    note TEXT NOT NULL,
    since TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID
"""


_V6 = """
-- The latest signed card (protocol.card) accepted from each peer.
CREATE TABLE peer_cards (
    name TEXT PRIMARY KEY,
    serial INTEGER NOT NULL CHECK (serial >= 0),
    note TEXT NOT NULL,
    received_at TEXT NOT NULL
) WITHOUT ROWID;
-- Every certificate that card lists, by key fingerprint.
CREATE TABLE peer_certs (
    spki TEXT PRIMARY KEY CHECK (length(spki) = 64),
    name TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX peer_certs_name ON peer_certs (name)
"""


_V7 = """
DROP VIEW IF EXISTS listed;
ALTER TABLE active RENAME TO active_base;
-- Derived, the level new listed hashes are written to (same layout as
-- active_base, which holds the rows merged so far; a row is in one of them).
CREATE TABLE active (
    log_id INTEGER NOT NULL REFERENCES logs(log_id),
    key INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (log_id, key, idx)
) WITHOUT ROWID;
-- The listed hashes of both levels with their type, value and labels.
CREATE VIEW listed AS
SELECT a.log_id AS log_id, a.idx AS idx,
       json_extract(e.data, '$.signal.type') AS signal_type,
       json_extract(e.data, '$.signal.value') AS value,
       json_extract(e.data, '$.labels') AS labels
FROM active AS a JOIN entries AS e ON e.log_id = a.log_id AND e.idx = a.idx
UNION ALL
SELECT b.log_id AS log_id, b.idx AS idx,
       json_extract(e.data, '$.signal.type') AS signal_type,
       json_extract(e.data, '$.signal.value') AS value,
       json_extract(e.data, '$.labels') AS labels
FROM active_base AS b JOIN entries AS e ON e.log_id = b.log_id AND e.idx = b.idx
"""


def _upgrade_v4(conn: sqlite3.Connection) -> None:
    # Opinions and rotations did not exist before v4: only pdq rows and the
    # first link of each key chain are derived from what is held.
    rows = conn.execute(
        "SELECT a.log_id, a.idx, json_extract(e.data, '$.signal.value') FROM active AS a "
        "JOIN entries AS e ON e.log_id = a.log_id AND e.idx = a.idx "
        "WHERE json_extract(e.data, '$.signal.type') = 'pdq'"
    )
    conn.executemany(
        "INSERT INTO pdq (log_id, idx, hash) VALUES (?, ?, ?)",
        ((log_id, idx, bytes.fromhex(value)) for log_id, idx, value in rows),
    )
    conn.execute(
        "INSERT INTO origin_keys (origin, from_size, vkey, rotated_by, recorded_at) "
        "SELECT origin, 0, verifier_key, NULL, created_at FROM logs"
    )
    conn.execute(
        "INSERT OR IGNORE INTO origin_keys (origin, from_size, vkey, rotated_by, recorded_at) "
        "SELECT origin, 0, vkey, NULL, added_at FROM follows"
    )


def _upgrade_v3(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT log_id, signal_type, value, idx FROM active_v2")
    conn.executemany(
        "INSERT INTO active (log_id, key, idx) VALUES (?, ?, ?)",
        ((log_id, active_key(t, v), idx) for log_id, t, v, idx in rows),
    )
    conn.execute("DROP TABLE active_v2")
    # See the module docstring: the rows below TILE_LEVEL are derived data;
    # the append-only trigger is back before the transaction commits.
    conn.execute("DROP TRIGGER nodes_no_delete")
    conn.execute("DELETE FROM nodes WHERE level < ?", (TILE_LEVEL,))
    _append_only_trigger(conn, "nodes", "DELETE")


# version -> (DDL, tables made append-only by that version, data step)
_MIGRATIONS: dict[int, tuple[str, tuple[str, ...], Callable[[sqlite3.Connection], None] | None]] = {
    1: (_V1, ("entries", "nodes", "checkpoints", "retractions"), None),
    2: (_V2, ("evidence",), None),
    3: (_V3, (), _upgrade_v3),
    4: (_V4, ("cosignatures", "origin_keys"), _upgrade_v4),
    5: (_V5, (), None),
    6: (_V6, (), None),
    7: (_V7, (), None),
}


# Page cache of a connection that writes, in KiB (see apply_pragmas).
WRITER_CACHE_KIB = 64 * 1024

# Page cache of a read-only connection, in KiB (see apply_pragmas).
READER_CACHE_KIB = 32 * 1024


def apply_pragmas(conn: sqlite3.Connection, *, read_only: bool = False) -> None:
    """Set the pragmas every connection needs.

    WAL lets readers run beside the writer; ``synchronous=FULL`` makes a commit
    durable before it returns, so a signed checkpoint is never shown and then
    lost in a power cut (which would later look like a forked log).

    A new database gets 8 KiB pages (SQLite's default is 4 KiB): a bulk
    import of 1,000,000 entries spent about 0.5 CPU s less in its ``entries``
    and ``active`` inserts and its commit (fewer B-tree pages to split,
    balance and write; docs/benchmarks.md). The page size of an existing
    database cannot change in WAL mode, so older ledgers keep theirs.
    """
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA foreign_keys = ON")
    if read_only:
        conn.execute("PRAGMA query_only = 1")
        # SQLite's default page cache is 2 MiB. ``entries`` is a WITHOUT ROWID
        # table, whose interior cells hold whole rows: its fan-out is about
        # 31, so its interior pages are 3 % of it (85 MB at 10M entries).
        # With 2 MiB a proof re-read its lower interior pages and those of
        # ``nodes`` through the OS every time: 12 read calls a proof at 10M
        # against 6 at 1M, and 5 with 32 MiB (docs/benchmarks.md, "Proofs at
        # size"). The cache fills only as the connection reads; serve holds
        # a few readers and each match worker one, far below the RSS budget.
        conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
        return
    # Only takes effect on a database with no table yet, before WAL mode.
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal" and conn.execute("PRAGMA database_list").fetchone()[2]:
        raise SchemaVersionError(f"cannot switch the database to WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    # SQLite's default page cache is 2 MiB. A bulk import is one transaction,
    # and its inserts into ``active`` land on random pages of a B-tree that
    # grows with the node: with 2 MiB, dirty pages are spilled to the WAL and
    # read back again and again. 200,000 sha256 lines into an 18M-entry node
    # ran at 32,000 entries/s with the default and 54,000 with 64 MiB (57,000
    # with 256 MiB); into an empty node the rate is unchanged, and a 1M import
    # peaks at 213 MiB RSS instead of 151 (docs/benchmarks.md).
    conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")


def _append_only_trigger(conn: sqlite3.Connection, table: str, action: str) -> None:
    conn.execute(
        f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END"
    )


def _append_only_triggers(db: sqlite_utils.Database, tables: tuple[str, ...]) -> None:
    for table in tables:
        for action in ("UPDATE", "DELETE"):
            _append_only_trigger(db.conn, table, action)


def migrate(conn: sqlite3.Connection, *, target: int = SCHEMA_VERSION) -> None:
    """Bring the schema up to ``target`` (default :data:`SCHEMA_VERSION`) in one transaction.

    Each version's step runs in order from the database's current version, so
    a database made by an older hashmesh is upgraded in place.

    Args:
        conn: an open connection in autocommit mode.
        target: the version to stop at (tests use it to build old databases).

    Raises:
        SchemaVersionError: if the database is newer than this code.
    """
    db = sqlite_utils.Database(conn)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"database schema version {version} is newer than this hashmesh "
            f"understands ({SCHEMA_VERSION}); upgrade hashmesh"
        )
    if version >= target:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read inside the write lock: another process may have migrated.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version + 1, target + 1):
            ddl, append_only, upgrade = _MIGRATIONS[step]
            # executescript() would commit our transaction first, so run the
            # DDL statement by statement.
            for statement in ddl.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            _append_only_triggers(db, append_only)
            if upgrade is not None:
                upgrade(conn)
        conn.execute(f"PRAGMA user_version = {max(version, target)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _table_sql(conn: sqlite3.Connection, table: str) -> list[tuple[str, str]]:
    """(type, CREATE statement) of a table and of its indexes and triggers, table first."""
    rows = conn.execute(
        "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
        "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END",
        (table,),
    ).fetchall()
    if not rows or rows[0][0] != "table":
        raise SchemaVersionError(f"the database has no table {table!r}; it is damaged")
    return [(str(kind), str(sql)) for kind, sql in rows]


@contextmanager
def rebuilt_tables(conn: sqlite3.Connection, tables: Sequence[str]) -> Iterator[None]:
    """Drop derived tables and create them again, empty, for the block to refill.

    Runs inside the caller's transaction: a failure anywhere rolls the
    tables back as they were. Dropping (rather than deleting rows) also
    discards a damaged B-tree. The statements are the database's own (from
    ``sqlite_master``), so the tables come back exactly as this schema
    version made them; their triggers (append-only ones included) are made
    again after the block has refilled them.
    """
    saved = {table: _table_sql(conn, table) for table in tables}
    for table in tables:
        conn.execute(f"DROP TABLE {table}")
    for statements in saved.values():
        for kind, sql in statements:
            if kind != "trigger":
                conn.execute(sql)
    yield
    for statements in saved.values():
        for kind, sql in statements:
            if kind == "trigger":
                conn.execute(sql)


@contextmanager
def suspended_triggers(conn: sqlite3.Connection, table: str) -> Iterator[None]:
    """Lift a table's triggers for the block (inside the caller's transaction).

    Only repair uses it: to rewrite a stored leaf hash that no longer matches
    its entry's bytes, on an append-only table.
    """
    triggers = [sql for kind, sql in _table_sql(conn, table) if kind == "trigger"]
    names = [
        str(name)
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (table,)
        )
    ]
    for name in names:
        conn.execute(f"DROP TRIGGER {name}")
    yield
    for sql in triggers:
        conn.execute(sql)


def _guards(version: int) -> list[tuple[str, str]]:
    """(table, action) of every append-only trigger a database of ``version`` has."""
    return [
        (table, action)
        for step in range(1, version + 1)
        for table in _MIGRATIONS[step][1]
        for action in ("UPDATE", "DELETE")
    ]


def missing_guards(conn: sqlite3.Connection) -> list[str]:
    """Names of the append-only triggers this database should have and does not."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    have = {
        str(name)
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    }
    return [
        f"{table}_no_{action.lower()}"
        for table, action in _guards(min(version, SCHEMA_VERSION))
        if f"{table}_no_{action.lower()}" not in have
    ]


def restore_guards(conn: sqlite3.Connection) -> list[str]:
    """Create the missing append-only triggers (inside the caller's transaction); their names."""
    missing = missing_guards(conn)
    for name in missing:
        table, _, action = name.rpartition("_no_")
        _append_only_trigger(conn, table, action.upper())
    return missing
