"""Synchronous storage of logs, entries, tree nodes and checkpoints.

Layer: node.storage. Performs SQLite I/O on one connection.

:class:`LedgerStore` is deliberately plain: every method is a few SQL
statements, callers group writes with :meth:`LedgerStore.transaction`
(``BEGIN IMMEDIATE``, so two writers never race for a sequence number), and no
method signs or verifies anything. The ledger layer above decides what to
write; this layer only makes it durable.

Federation state (schema version 2) lives here too: peers (looked up by TLS
key fingerprint on every request, so that look-up is one indexed read),
followed origins, fork evidence and per-peer sync status. Their single-purpose
write methods join the caller's transaction when one is open and otherwise
run in one of their own.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy

from node.errors import ConfigError, StorageError, UnknownLogError
from node.storage.schema import TILE_LEVEL, active_key, apply_pragmas, migrate
from protocol.entry import AddEntry, parse_entry
from protocol.errors import MalformedError
from protocol.hashing import hash_children
from protocol.keys import NoteVerifier
from protocol.tree import CompactRange, NodeId, NodeRun, frontier_ids

__all__ = [
    "PEER_ROLES",
    "CheckpointRecord",
    "EvidenceRecord",
    "FollowRecord",
    "KeyPeriodRecord",
    "LedgerStore",
    "LogNodeReader",
    "LogRecord",
    "PeerRecord",
    "PeerStatus",
]

PEER_ROLES = ("peer", "subscriber", "auditor")
"""What a peer may do: ``peer`` (read all, and we sync from it), ``subscriber``
(read logs and entries), ``auditor`` (read checkpoints, proofs, evidence)."""

# SQLite's default limit on bound parameters per statement is 32766; stay
# well below it for IN (...) look-ups.
_IN_CHUNK = 500

# Rows per multi-row INSERT in bulk writes. One statement per chunk runs
# wholly inside SQLite, which releases the GIL for the whole chunk
# (executemany takes it back for every row, so a second Python thread
# convoys with it), and binding is cheaper than per-row steps. A fixed chunk
# size keeps the compiled statement in the connection's statement cache.
_INSERT_CHUNK = 1024


@functools.lru_cache(maxsize=32)
def _values_sql(head: str, width: int, rows: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([row] * rows)}"


def _insert_columns(
    conn: sqlite3.Connection, head: str, columns: Sequence[Sequence[object]]
) -> None:
    """INSERT rows given column by column (equal lengths), in bulk statements."""
    width = len(columns)
    n = len(columns[0])
    full = n - n % _INSERT_CHUNK
    if full:
        sql = _values_sql(head, width, _INSERT_CHUNK)
        params: list[object] = [None] * (width * _INSERT_CHUNK)
        for start in range(0, full, _INSERT_CHUNK):
            for c, column in enumerate(columns):
                params[c::width] = column[start : start + _INSERT_CHUNK]
            conn.execute(sql, params)
    if full < n:
        conn.executemany(
            _values_sql(head, width, 1), zip(*(column[full:] for column in columns), strict=True)
        )


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A log held by this node (its own, or replicated from another origin)."""

    log_id: int
    origin: str
    verifier_key: str
    is_own: bool


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A stored signed checkpoint."""

    size: int
    root_hash: bytes
    note: str
    recorded_at: str


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A node allowed to connect to us (and, for role ``peer``, synced from)."""

    name: str
    url: str
    tls_cert: str
    spki: str
    vkey: str
    role: str
    added_at: str


@dataclass(frozen=True, slots=True)
class KeyPeriodRecord:
    """One stored link of an origin's key chain (see ``protocol.rotation``)."""

    from_size: int
    vkey: str
    rotated_by: int | None


@dataclass(frozen=True, slots=True)
class FollowRecord:
    """An origin we replicate, pinned to its verifier key."""

    origin: str
    vkey: str
    added_at: str


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """Stored fork evidence (``evidence_json`` is :class:`protocol.evidence.ForkEvidence`)."""

    origin: str
    evidence_json: bytes
    source: str
    detected_at: str


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """The sync engine's last word on a peer."""

    name: str
    last_ok_at: str | None
    last_error: str | None
    last_error_at: str | None
    failures: int


_PEER_COLUMNS = "name, url, tls_cert, spki, vkey, role, added_at"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LedgerStore:
    """Tables of one ledger database, on one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False) -> LedgerStore:
        """Open (and migrate) the database at ``path``.

        Raises:
            StorageError: if the file cannot be opened or migrated.
        """
        try:
            if read_only:
                conn = sqlite3.connect(
                    f"file:{path}?mode=ro",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            apply_pragmas(conn, read_only=read_only)
            if not read_only:
                migrate(conn)
        except sqlite3.Error as e:
            raise StorageError(f"cannot open database {path}: {e}") from e
        return cls(conn)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block in one ``BEGIN IMMEDIATE`` transaction.

        Commits when the block ends normally and rolls back on any exception,
        so a failed write leaves the database exactly as it was.

        Raises:
            StorageError: if SQLite fails (the transaction is rolled back).
        """
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StorageError(f"cannot start a write transaction: {e}") from e
        try:
            yield
        except sqlite3.Error as e:
            self.conn.execute("ROLLBACK")
            raise StorageError(f"write failed and was rolled back: {e}") from e
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            self.conn.execute("ROLLBACK")
            raise StorageError(f"commit failed and was rolled back: {e}") from e

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Join the caller's open transaction, or run the block in a new one."""
        if self.conn.in_transaction:
            yield
            return
        with self.transaction():
            yield

    # -- logs -------------------------------------------------------------

    def create_log(self, origin: str, verifier_key: str, *, is_own: bool) -> LogRecord:
        """Register a log (call inside a transaction)."""
        cur = self.conn.execute(
            "INSERT INTO logs (origin, verifier_key, is_own, created_at) VALUES (?, ?, ?, ?)",
            (origin, verifier_key, int(is_own), _now()),
        )
        assert cur.lastrowid is not None
        if not self.key_chain(origin):
            self.add_key_period(origin, 0, verifier_key, None)
        return LogRecord(cur.lastrowid, origin, verifier_key, is_own)

    # -- key chains -------------------------------------------------------

    def key_chain(self, origin: str) -> list[KeyPeriodRecord]:
        """The stored key chain of ``origin``, by size (empty if none is stored)."""
        rows = self.conn.execute(
            "SELECT from_size, vkey, rotated_by FROM origin_keys WHERE origin = ? "
            "ORDER BY from_size",
            (origin,),
        ).fetchall()
        return [KeyPeriodRecord(int(f), str(v), None if r is None else int(r)) for f, v, r in rows]

    def add_key_period(
        self, origin: str, from_size: int, vkey: str, rotated_by: int | None
    ) -> None:
        """Append a link to ``origin``'s key chain (inside the caller's transaction)."""
        with self._writing():
            self.conn.execute(
                "INSERT INTO origin_keys (origin, from_size, vkey, rotated_by, recorded_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (origin, from_size, vkey, rotated_by, _now()),
            )

    def get_log(self, origin: str) -> LogRecord:
        """The log with this origin.

        Raises:
            UnknownLogError: if no such log is held.
        """
        row = self.conn.execute(
            "SELECT log_id, origin, verifier_key, is_own FROM logs WHERE origin = ?",
            (origin,),
        ).fetchone()
        if row is None:
            raise UnknownLogError(f"no log with origin {origin!r} is held by this node")
        return LogRecord(row[0], row[1], row[2], bool(row[3]))

    def own_log(self) -> LogRecord:
        """The node's own log.

        Raises:
            UnknownLogError: if the database has no own log (not initialised).
        """
        row = self.conn.execute(
            "SELECT log_id, origin, verifier_key, is_own FROM logs WHERE is_own = 1"
        ).fetchone()
        if row is None:
            raise UnknownLogError("this database has no own log; run `hashmesh init`")
        return LogRecord(row[0], row[1], row[2], True)

    def list_logs(self) -> list[LogRecord]:
        """Every log held, own log first."""
        rows = self.conn.execute(
            "SELECT log_id, origin, verifier_key, is_own FROM logs ORDER BY is_own DESC, origin"
        ).fetchall()
        return [LogRecord(r[0], r[1], r[2], bool(r[3])) for r in rows]

    # -- tree -------------------------------------------------------------

    def entry_count(self, log_id: int) -> int:
        """Number of entries stored for a log (its tree size)."""
        row = self.conn.execute(
            "SELECT max(idx) FROM entries WHERE log_id = ?", (log_id,)
        ).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def get_node_hashes(self, log_id: int, ids: Sequence[NodeId]) -> list[bytes]:
        """Hashes of perfect subtrees, in the order asked.

        Nodes of level >= :data:`TILE_LEVEL` are stored; lower ones are
        folded from the leaf hashes of their tile (one range read per tile,
        at most ``2**TILE_LEVEL`` leaves), so a proof costs O(log n) reads.

        Raises:
            StorageError: if a node is missing (the database is damaged).
        """
        found: dict[NodeId, bytes] = {}
        tiles = sorted({n.index >> (TILE_LEVEL - n.level) for n in ids if n.level < TILE_LEVEL})
        leaves: dict[int, bytes] = {}
        for tile in tiles:
            first = tile << TILE_LEVEL
            for idx, leaf_hash in self.conn.execute(
                "SELECT idx, leaf_hash FROM entries WHERE log_id = ? AND idx >= ? AND idx < ?",
                (log_id, first, first + (1 << TILE_LEVEL)),
            ):
                leaves[idx] = leaf_hash
        for node_id in ids:
            if node_id.level < TILE_LEVEL and node_id not in found:
                folded = _fold_leaves(leaves, node_id)
                if folded is not None:
                    found[node_id] = folded
        for node_id in sorted({n for n in ids if n.level >= TILE_LEVEL}):
            row = self.conn.execute(
                "SELECT hash FROM nodes WHERE log_id = ? AND level = ? AND idx = ?",
                (log_id, node_id.level, node_id.index),
            ).fetchone()
            if row is not None:
                found[node_id] = row[0]
        missing = [n for n in ids if n not in found]
        if missing:
            raise StorageError(
                f"tree node(s) missing from the database, first {missing[0]}: "
                "the database is damaged; run `hashmesh fsck`"
            )
        return [found[n] for n in ids]

    def reader(self, log_id: int) -> LogNodeReader:
        """A :class:`protocol.tree.NodeReader` over one log's stored nodes."""
        return LogNodeReader(self, log_id)

    def load_compact_range(self, log_id: int, size: int) -> CompactRange:
        """The frontier of a log's tree at ``size``, from stored nodes."""
        ids = frontier_ids(size)
        return CompactRange.from_frontier(size, self.get_node_hashes(log_id, ids))

    def append_entries(
        self,
        log_id: int,
        start: int,
        datas: Sequence[bytes],
        leaf_hashes: Sequence[bytes],
        runs: Iterable[NodeRun],
    ) -> None:
        """Insert entries [start, start + n) and the tree nodes they complete.

        Only nodes of level >= :data:`TILE_LEVEL` are stored (runs of lower
        levels are ignored). Call inside :meth:`transaction`. The primary key
        makes a second write of an index fail instead of overwriting it.
        """
        n = len(datas)
        if len(leaf_hashes) != n:
            raise ValueError(f"{n} entries but {len(leaf_hashes)} leaf hashes")
        _insert_columns(
            self.conn,
            "INSERT INTO entries (log_id, idx, data, leaf_hash)",
            ([log_id] * n, range(start, start + n), datas, leaf_hashes),
        )
        for run in runs:
            if run.level < TILE_LEVEL or not run.hashes:
                continue
            m = len(run.hashes)
            _insert_columns(
                self.conn,
                "INSERT INTO nodes (log_id, level, idx, hash)",
                ([log_id] * m, [run.level] * m, range(run.start, run.start + m), run.hashes),
            )

    def leaf_hashes(self, log_id: int, start: int, end: int) -> list[bytes]:
        """The stored leaf hashes of entries [start, end), in order."""
        return [
            bytes(h)
            for (h,) in self.conn.execute(
                "SELECT leaf_hash FROM entries WHERE log_id = ? AND idx >= ? AND idx < ? "
                "ORDER BY idx",
                (log_id, start, end),
            )
        ]

    def leaf_hash_at(self, log_id: int, index: int) -> bytes | None:
        """The stored leaf hash of one entry, or None if there is none."""
        row = self.conn.execute(
            "SELECT leaf_hash FROM entries WHERE log_id = ? AND idx = ?", (log_id, index)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def iter_entries(
        self, log_id: int, start: int = 0, end: int | None = None
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """Yield ``(index, data, leaf_hash)`` for entries in [start, end)."""
        stop = end if end is not None else 2**63 - 1
        yield from self.conn.execute(
            "SELECT idx, data, leaf_hash FROM entries WHERE log_id = ? AND idx >= ? "
            "AND idx < ? ORDER BY idx",
            (log_id, start, stop),
        )

    def get_entry(self, log_id: int, index: int) -> bytes | None:
        """The exact bytes of one entry, or None if there is none."""
        row = self.conn.execute(
            "SELECT data FROM entries WHERE log_id = ? AND idx = ?", (log_id, index)
        ).fetchone()
        return None if row is None else bytes(row[0])

    # -- active hashes and retractions -------------------------------------

    def find_active(self, log_id: int, signal_type: str, values: Sequence[str]) -> dict[str, int]:
        """Which of ``values`` the log currently lists, mapped to their index.

        The index is looked up by :func:`~node.storage.schema.active_key`;
        every candidate is checked against its stored entry, so a key shared
        by two values never reports the wrong one.
        """
        keys = {(signal_type, v): active_key(signal_type, v) for v in values}
        return {value: idx for (_t, value), idx in self.find_listed(log_id, keys).items()}

    def find_listed(
        self, log_id: int, keys: Mapping[tuple[str, str], int]
    ) -> dict[tuple[str, str], int]:
        """Which identities (signal type, value) the log lists, mapped to their index.

        ``keys`` maps each identity to its :func:`~node.storage.schema.active_key`
        (callers that write the same hashes next compute the keys once).
        Candidates are checked against their stored entries.
        """
        wanted = sorted(set(keys.values()))
        candidates: list[int] = []
        for i in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            candidates.extend(
                idx
                for (idx,) in self.conn.execute(
                    f"SELECT idx FROM active WHERE log_id = ? AND key IN ({marks})",  # noqa: S608 - only placeholders
                    (log_id, *chunk),
                )
            )
        found: dict[tuple[str, str], int] = {}
        for idx, data in self._entries_at(log_id, sorted(candidates)):
            entry = parse_entry(bytes(data))
            if isinstance(entry, AddEntry) and entry.identity in keys:
                found[entry.identity] = idx
        return found

    def _entries_at(self, log_id: int, indexes: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        for i in range(0, len(indexes), _IN_CHUNK):
            chunk = indexes[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            yield from self.conn.execute(
                f"SELECT idx, data FROM entries WHERE log_id = ? AND idx IN ({marks})",  # noqa: S608 - only placeholders
                (log_id, *chunk),
            )

    def add_active(self, log_id: int, keys: Sequence[int], indexes: Sequence[int]) -> None:
        """Record listed hashes: each one's active key and the index of its add.

        ``keys`` are :func:`~node.storage.schema.active_key` values. The
        caller makes sure none of them is listed already.
        """
        if len(keys) != len(indexes):
            raise ValueError(f"{len(keys)} active keys but {len(indexes)} indexes")
        if not keys:
            return
        # Sorted by key, the inserts walk the index B-tree in order: each
        # page is visited once per batch instead of once per row. numpy
        # sorts the 64-bit keys four times faster than sorting tuples.
        key_array = numpy.fromiter(keys, dtype=numpy.int64, count=len(keys))
        order = numpy.argsort(key_array, kind="stable")
        index_array = numpy.fromiter(indexes, dtype=numpy.int64, count=len(indexes))
        _insert_columns(
            self.conn,
            "INSERT INTO active (log_id, key, idx)",
            ([log_id] * len(keys), key_array[order].tolist(), index_array[order].tolist()),
        )

    def add_retraction(
        self, log_id: int, target: int, retracted_by: int, identity: tuple[str, str]
    ) -> None:
        """Record that entry ``target`` was retracted by entry ``retracted_by``."""
        self.conn.execute(
            "INSERT INTO retractions (log_id, target, retracted_by) VALUES (?, ?, ?)",
            (log_id, target, retracted_by),
        )
        self.conn.execute(
            "DELETE FROM active WHERE log_id = ? AND key = ? AND idx = ?",
            (log_id, active_key(*identity), target),
        )

    def retracted_by(self, log_id: int, target: int) -> int | None:
        """Index of the entry that retracted ``target``, or None."""
        row = self.conn.execute(
            "SELECT retracted_by FROM retractions WHERE log_id = ? AND target = ?",
            (log_id, target),
        ).fetchone()
        return None if row is None else int(row[0])

    def retracted_targets(self, log_id: int, start: int, end: int) -> dict[int, int]:
        """Retractions of entries in [start, end): target -> retracting index."""
        return dict(
            self.conn.execute(
                "SELECT target, retracted_by FROM retractions WHERE log_id = ? "
                "AND target >= ? AND target < ?",
                (log_id, start, end),
            ).fetchall()
        )

    def retraction_count(self, log_id: int) -> int:
        """Number of retracted entries of a log."""
        row = self.conn.execute(
            "SELECT count(*) FROM retractions WHERE log_id = ?", (log_id,)
        ).fetchone()
        return int(row[0])

    def active_counts(self, log_id: int) -> tuple[dict[str, int], dict[str, int]]:
        """Listed hashes counted by signal type, and by label."""
        by_type = dict(
            self.conn.execute(
                "SELECT signal_type, count(*) FROM listed WHERE log_id = ? "
                "GROUP BY signal_type ORDER BY signal_type",
                (log_id,),
            ).fetchall()
        )
        by_label = dict(
            self.conn.execute(
                "SELECT j.value, count(*) FROM listed, json_each(listed.labels) AS j "
                "WHERE listed.log_id = ? GROUP BY j.value ORDER BY j.value",
                (log_id,),
            ).fetchall()
        )
        return by_type, by_label

    # -- checkpoints ------------------------------------------------------

    def put_checkpoint(self, log_id: int, size: int, root_hash: bytes, note: str) -> None:
        """Store a signed checkpoint (call inside :meth:`transaction`)."""
        self.conn.execute(
            "INSERT INTO checkpoints (log_id, size, root_hash, note, recorded_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (log_id, size, root_hash, note, _now()),
        )

    def latest_checkpoint(self, log_id: int) -> CheckpointRecord | None:
        """The largest stored checkpoint of a log, or None."""
        row = self.conn.execute(
            "SELECT size, root_hash, note, recorded_at FROM checkpoints "
            "WHERE log_id = ? ORDER BY size DESC LIMIT 1",
            (log_id,),
        ).fetchone()
        return None if row is None else CheckpointRecord(row[0], bytes(row[1]), row[2], row[3])

    def get_checkpoint(self, log_id: int, size: int) -> CheckpointRecord | None:
        """The stored checkpoint of exactly ``size``, or None."""
        row = self.conn.execute(
            "SELECT size, root_hash, note, recorded_at FROM checkpoints "
            "WHERE log_id = ? AND size = ?",
            (log_id, size),
        ).fetchone()
        return None if row is None else CheckpointRecord(row[0], bytes(row[1]), row[2], row[3])

    def iter_checkpoints(self, log_id: int, start: int = 0) -> Iterator[CheckpointRecord]:
        """Every stored checkpoint of a log of size >= ``start``, by increasing size."""
        for row in self.conn.execute(
            "SELECT size, root_hash, note, recorded_at FROM checkpoints "
            "WHERE log_id = ? AND size >= ? ORDER BY size",
            (log_id, start),
        ):
            yield CheckpointRecord(row[0], bytes(row[1]), row[2], row[3])

    # -- peers ------------------------------------------------------------

    def add_peer(self, record: PeerRecord) -> None:
        """Allow a peer to connect (joins an open transaction, if any).

        Raises:
            ConfigError: if the name or the TLS key fingerprint is already
                registered, or the role or fingerprint is invalid.
        """
        if record.role not in PEER_ROLES:
            raise ConfigError(f"peer role {record.role!r} is not one of {', '.join(PEER_ROLES)}")
        if len(record.spki) != 64 or record.spki != record.spki.lower():
            raise ConfigError(f"peer {record.name}: spki must be 64 lowercase hex digits")
        with self._writing():
            if self.conn.execute("SELECT 1 FROM peers WHERE name = ?", (record.name,)).fetchone():
                raise ConfigError(
                    f"a peer named {record.name!r} already exists; "
                    "remove it first with `hashmesh peer remove`"
                )
            row = self.conn.execute(
                "SELECT name FROM peers WHERE spki = ?", (record.spki,)
            ).fetchone()
            if row is not None:
                raise ConfigError(
                    f"peer {row[0]!r} already uses TLS key sha256:{record.spki}; "
                    "two peers cannot share a key"
                )
            self.conn.execute(
                f"INSERT INTO peers ({_PEER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
                (
                    record.name,
                    record.url,
                    record.tls_cert,
                    record.spki,
                    record.vkey,
                    record.role,
                    record.added_at or _now(),
                ),
            )

    def remove_peer(self, name: str) -> bool:
        """Forget a peer and its sync status; True if it existed."""
        with self._writing():
            cur = self.conn.execute("DELETE FROM peers WHERE name = ?", (name,))
            self.conn.execute("DELETE FROM peer_status WHERE name = ?", (name,))
        return cur.rowcount > 0

    def list_peers(self) -> list[PeerRecord]:
        """Every peer, by name."""
        rows = self.conn.execute(
            f"SELECT {_PEER_COLUMNS} FROM peers ORDER BY name"  # noqa: S608 - constant columns
        ).fetchall()
        return [PeerRecord(*row) for row in rows]

    def peer_by_spki(self, spki: str) -> PeerRecord | None:
        """The peer with this TLS key fingerprint (one indexed read), or None."""
        row = self.conn.execute(
            f"SELECT {_PEER_COLUMNS} FROM peers WHERE spki = ?",  # noqa: S608 - constant columns
            (spki,),
        ).fetchone()
        return None if row is None else PeerRecord(*row)

    def record_peer_ok(self, name: str) -> None:
        """Note a successful sync round with a peer (clears the failure count)."""
        with self._writing():
            self.conn.execute(
                "INSERT INTO peer_status (name, last_ok_at, failures) VALUES (?, ?, 0) "
                "ON CONFLICT (name) DO UPDATE SET last_ok_at = excluded.last_ok_at, failures = 0",
                (name, _now()),
            )

    def record_peer_error(self, name: str, reason: str) -> None:
        """Note a failed sync round with a peer, and why."""
        with self._writing():
            self.conn.execute(
                "INSERT INTO peer_status (name, last_error, last_error_at, failures) "
                "VALUES (?, ?, ?, 1) ON CONFLICT (name) DO UPDATE SET "
                "last_error = excluded.last_error, last_error_at = excluded.last_error_at, "
                "failures = peer_status.failures + 1",
                (name, reason, _now()),
            )

    def peer_statuses(self) -> list[PeerStatus]:
        """Sync status of every peer that has one, by name."""
        rows = self.conn.execute(
            "SELECT name, last_ok_at, last_error, last_error_at, failures FROM peer_status "
            "ORDER BY name"
        ).fetchall()
        return [PeerStatus(*row) for row in rows]

    # -- follows ----------------------------------------------------------

    def add_follow(self, origin: str, vkey: str) -> None:
        """Replicate ``origin``, accepting only checkpoints signed by ``vkey``.

        Idempotent for the same key. The log row itself is created by the
        first successful replication, so a followed origin shows up in
        :meth:`list_logs` only once it has a signed checkpoint here.

        Raises:
            ConfigError: if the key is invalid or not named ``origin``, the
                origin is followed with another key, or it is this node's own
                log or a log held under another key.
        """
        try:
            verifier = NoteVerifier.from_text(vkey)
        except MalformedError as e:
            raise ConfigError(f"verifier key for {origin!r} is not valid: {e}") from e
        if verifier.name != origin:
            raise ConfigError(f"verifier key is for {verifier.name!r}, not {origin!r}")
        with self._writing():
            existing = self.get_follow(origin)
            if existing is not None:
                # A card made after a rotation carries the newer key: fine
                # when our chain (protocol.rotation) already holds it.
                if vkey == existing.vkey or vkey in {p.vkey for p in self.key_chain(origin)}:
                    return
                raise ConfigError(
                    f"{origin!r} is already followed with another key ({existing.vkey}); "
                    "a log changes its key only by a rotate entry, which followers read from "
                    "the log itself"
                )
            row = self.conn.execute(
                "SELECT verifier_key, is_own FROM logs WHERE origin = ?", (origin,)
            ).fetchone()
            if row is not None and row[1]:
                raise ConfigError(f"{origin!r} is this node's own log; it cannot be followed")
            if row is not None and row[0] != vkey:
                raise ConfigError(f"{origin!r} is held here under another key ({row[0]})")
            self.conn.execute(
                "INSERT INTO follows (origin, vkey, added_at) VALUES (?, ?, ?)",
                (origin, vkey, _now()),
            )
            if not self.key_chain(origin):
                self.add_key_period(origin, 0, vkey, None)

    def get_follow(self, origin: str) -> FollowRecord | None:
        """The follow record of ``origin``, or None."""
        row = self.conn.execute(
            "SELECT origin, vkey, added_at FROM follows WHERE origin = ?", (origin,)
        ).fetchone()
        return None if row is None else FollowRecord(*row)

    def list_follows(self) -> list[FollowRecord]:
        """Every followed origin, by origin."""
        rows = self.conn.execute(
            "SELECT origin, vkey, added_at FROM follows ORDER BY origin"
        ).fetchall()
        return [FollowRecord(*row) for row in rows]

    # -- evidence ---------------------------------------------------------

    def add_evidence(self, origin: str, evidence_json: bytes, source: str) -> bool:
        """Store fork evidence for ``origin``, which freezes it; False if already held.

        The caller must have verified the evidence: this layer does not.
        """
        with self._writing():
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO evidence (origin, evidence_json, source, detected_at) "
                "VALUES (?, ?, ?, ?)",
                (origin, bytes(evidence_json), source, _now()),
            )
        return cur.rowcount > 0

    def list_evidence(self) -> list[EvidenceRecord]:
        """Every stored evidence, oldest first."""
        rows = self.conn.execute(
            "SELECT origin, evidence_json, source, detected_at FROM evidence ORDER BY evidence_id"
        ).fetchall()
        return [EvidenceRecord(r[0], bytes(r[1]), r[2], r[3]) for r in rows]

    def frozen_origins(self) -> set[str]:
        """Origins with fork evidence: no more of their entries are accepted."""
        return {r[0] for r in self.conn.execute("SELECT DISTINCT origin FROM evidence")}

    def is_frozen(self, origin: str) -> bool:
        """Whether fork evidence is held for ``origin``."""
        row = self.conn.execute(
            "SELECT 1 FROM evidence WHERE origin = ? LIMIT 1", (origin,)
        ).fetchone()
        return row is not None

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection commits."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def integrity_check(self) -> list[str]:
        """SQLite's ``PRAGMA integrity_check`` result lines (["ok"] when sound)."""
        return [r[0] for r in self.conn.execute("PRAGMA integrity_check").fetchall()]


def _fold_leaves(leaves: dict[int, bytes], node_id: NodeId) -> bytes | None:
    """The hash of a perfect node from its leaf hashes, or None if one is missing."""
    first = node_id.index << node_id.level
    level = [leaves.get(i) for i in range(first, first + (1 << node_id.level))]
    if any(h is None for h in level):
        return None
    hashes = [h for h in level if h is not None]
    while len(hashes) > 1:
        it = iter(hashes)
        hashes = [hash_children(a, b) for a, b in zip(it, it, strict=True)]
    return hashes[0]


class LogNodeReader:
    """:class:`protocol.tree.NodeReader` over one log in a :class:`LedgerStore`."""

    def __init__(self, store: LedgerStore, log_id: int) -> None:
        self._store = store
        self._log_id = log_id

    def get_node_hashes(self, ids: Sequence[NodeId]) -> Sequence[bytes]:
        """Stored hashes of perfect subtrees, in the order asked."""
        return self._store.get_node_hashes(self._log_id, ids)
