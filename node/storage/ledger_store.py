"""Synchronous storage of logs, entries, tree nodes and checkpoints.

Layer: node.storage. Performs SQLite I/O on one connection.

:class:`LedgerStore` is deliberately plain: every method is a few SQL
statements, callers group writes with :meth:`LedgerStore.transaction`
(``BEGIN IMMEDIATE``, so two writers never race for a sequence number), and no
method signs or verifies anything. The ledger layer above decides what to
write; this layer only makes it durable.

The store owns the connection and hands out the stores of the other
concerns on it: federation state (:mod:`node.storage.peer_store`), matching
(:mod:`node.storage.match_store`) and witnessing
(:mod:`node.storage.witness_store`).
"""

from __future__ import annotations

import functools
import sqlite3
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from node.errors import StorageError, UnknownLogError
from node.storage.connection import (
    describe_sqlite_error,
    joined_transaction,
    now_text,
    read_snapshot,
    write_transaction,
)
from node.storage.match_store import MatchStore
from node.storage.peer_store import PeerStore
from node.storage.schema import (
    SCHEMA_VERSION,
    TILE_LEVEL,
    active_key,
    apply_pragmas,
    migrate,
    missing_guards,
    rebuilt_tables,
    restore_guards,
    suspended_triggers,
)
from node.storage.witness_store import WitnessStore
from protocol.entry import AddEntry, parse_entry
from protocol.hashing import hash_children
from protocol.tiles import TILE_HEIGHT, TileId
from protocol.tree import CompactRange, NodeId, NodeRun, frontier_ids

__all__ = [
    "WAL_KEPT_BYTES",
    "CheckpointRecord",
    "KeyPeriodRecord",
    "LedgerStore",
    "LogNodeReader",
    "LogRecord",
]

# SQLite's default limit on bound parameters per statement is 32766; stay
# well below it for IN (...) look-ups.
_IN_CHUNK = 500

# Rows per multi-row INSERT in bulk writes. One statement per chunk runs
# wholly inside SQLite, which releases the GIL for the whole chunk
# (executemany takes it back for every row, so a second Python thread
# convoys with it), and binding is cheaper than per-row steps. A fixed chunk
# size keeps the compiled statement in the connection's statement cache.
_INSERT_CHUNK = 1024

# One log's `active` rows of both levels (schema version 7): (index, key).
_BOTH_LEVELS = (
    "SELECT idx, key FROM active WHERE log_id = ?1 "
    "UNION ALL SELECT idx, key FROM active_base WHERE log_id = ?1"
)

_SQLITE_AUTOCHECKPOINT = 1000
"""SQLite's default ``wal_autocheckpoint``, in pages."""

WAL_KEPT_BYTES = 64 * 1024 * 1024
"""Size the WAL file is cut back to after a checkpoint (``journal_size_limit``)."""

_BACKUP_STEP_PAGES = 1024
"""Pages copied per step of a backup that reports progress (8 MiB at 8 KiB pages)."""


# Stored tree nodes (or tiles) per statement of get_node_hashes: a proof
# needs fewer than 64, a batch of hash tiles a few hundred; 2 parameters each.
_NODES_PER_QUERY = 256


@functools.lru_cache(maxsize=64)
def _node_query(tiles: int, nodes: int) -> str:
    """One statement reading ``tiles`` leaf ranges and ``nodes`` stored nodes.

    Rows are ``(level, index, hash)``; leaves come as level 0. The nodes
    wanted are a VALUES list joined to ``nodes`` by its primary key; CROSS
    JOIN keeps the list as the outer loop, so each is one B-tree seek.
    Parameters: ``(log_id, first, end)`` per tile, then ``(level, index)``
    per node and the log id.
    """
    parts = [
        "SELECT 0, idx, leaf_hash FROM entries WHERE log_id = ? AND idx >= ? AND idx < ?"
    ] * tiles
    if nodes:
        wanted = ", ".join(["(?, ?)"] * nodes)
        parts.append(
            f"SELECT n.level, n.idx, n.hash FROM (VALUES {wanted}) AS w "  # noqa: S608 - only placeholders
            "CROSS JOIN nodes AS n "
            "ON n.log_id = ? AND n.level = w.column1 AND n.idx = w.column2"
        )
    return " UNION ALL ".join(parts)


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
class KeyPeriodRecord:
    """One stored link of an origin's key chain (see ``protocol.rotation``)."""

    from_size: int
    vkey: str
    rotated_by: int | None


class LedgerStore:
    """Tables of one ledger database, on one SQLite connection.

    It owns the connection and hands out the stores of the other concerns on
    it, each made once here: :attr:`peers` (peers, follows, evidence),
    :attr:`matching` (PDQ and opinion tables) and :attr:`witnessing`
    (witness state and cosignatures).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.peers = PeerStore(conn)
        self.matching = MatchStore(conn)
        self.witnessing = WitnessStore(conn)
        # `active` rows this connection wrote, and that count when a merge
        # was last considered (node.ledger.active_levels, in this process).
        self.active_rows_written = 0
        self.active_rows_checked = 0

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False) -> LedgerStore:
        """Open (and migrate) the database at ``path``.

        Raises:
            StorageError: if the file cannot be opened or migrated.
        """
        if path.is_file() and path.stat().st_size == 0:
            raise StorageError(
                f"database {path} is empty (0 bytes): it was truncated or overwritten; "
                "restore it from a backup"
            )
        conn: sqlite3.Connection | None = None
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
            else:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    raise StorageError(
                        f"database {path} has no hashmesh tables: it is damaged or not a "
                        "hashmesh database; run `hashmesh fsck`"
                    )
                if version < SCHEMA_VERSION:
                    # The older schema lacks tables this code reads (version 7
                    # moved most listed hashes to active_base) and a read-only
                    # connection cannot migrate: a short writable one does
                    # (version 7's step renames and creates, it moves no row).
                    conn.close()
                    conn = None
                    _upgrade(path, version)
                    return cls.open(path, read_only=True)
        except (sqlite3.Error, StorageError) as e:
            if conn is not None:
                conn.close()
            if isinstance(e, StorageError):
                raise
            written = "" if read_only else "; nothing was written"
            raise StorageError(
                f"cannot open database {path}: {describe_sqlite_error(e, path)}{written}"
            ) from e
        return cls(conn)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def backup_to(self, path: Path, progress: Callable[[int, int], None] | None = None) -> None:
        """Copy the whole database, as of one read snapshot, into a new file at ``path``.

        SQLite's online backup API: writers on other connections go on
        (WAL), and the copy is one consistent state. With ``progress`` the
        copy goes in steps of a few MiB, each followed by ``progress(bytes
        copied, bytes in all)`` (whole pages); the steps run inside one read transaction
        opened first, so they all read the same snapshot (a step that opened
        its own would see other connections' commits and start over). The
        copy is left in rollback-journal mode, so it is one self-contained
        file (opening it as a node switches it back to WAL).

        Raises:
            StorageError: if the copy fails (``path`` is then incomplete).
        """
        try:
            target = sqlite3.connect(path, isolation_level=None)
            try:
                if progress is None:
                    self.conn.backup(target)
                else:
                    page = int(self.conn.execute("PRAGMA page_size").fetchone()[0])
                    with self.read_snapshot():
                        # The read lock is taken now, not at the first step.
                        self.conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
                        self.conn.backup(
                            target,
                            pages=_BACKUP_STEP_PAGES,
                            progress=lambda _s, left, n: progress((n - left) * page, n * page),
                        )
                target.execute("PRAGMA journal_mode = DELETE")
            finally:
                target.close()
        except sqlite3.Error as e:
            raise StorageError(f"cannot copy the database to {path}: {e}") from e

    def transaction(self) -> AbstractContextManager[None]:
        """Run the block in one ``BEGIN IMMEDIATE`` transaction.

        Commits when the block ends normally and rolls back on any exception,
        so a failed write leaves the database exactly as it was. The stores
        handed out (:attr:`peers`, :attr:`matching`, :attr:`witnessing`)
        write inside it too.

        Raises:
            StorageError: if SQLite fails (the transaction is rolled back).
        """
        return write_transaction(self.conn)

    def read_snapshot(self) -> AbstractContextManager[None]:
        """Read one committed state for the whole block (joins an open transaction)."""
        return read_snapshot(self.conn)

    def set_verifier_key(self, origin: str, vkey: str) -> None:
        """Make ``vkey`` the current key of the log of ``origin`` (after a rotation)."""
        self.conn.execute("UPDATE logs SET verifier_key = ? WHERE origin = ?", (vkey, origin))

    def joined_transaction(self) -> AbstractContextManager[None]:
        """Join the caller's open transaction, or run the block in a new one."""
        return joined_transaction(self.conn)

    # -- logs -------------------------------------------------------------

    def create_log(self, origin: str, verifier_key: str, *, is_own: bool) -> LogRecord:
        """Register a log (call inside a transaction)."""
        cur = self.conn.execute(
            "INSERT INTO logs (origin, verifier_key, is_own, created_at) VALUES (?, ?, ?, ?)",
            (origin, verifier_key, int(is_own), now_text()),
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
        with self.joined_transaction():
            self.conn.execute(
                "INSERT INTO origin_keys (origin, from_size, vkey, rotated_by, recorded_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (origin, from_size, vkey, rotated_by, now_text()),
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
        folded from the leaf hashes of their tile (a range of at most
        ``2**TILE_LEVEL`` leaves), so a proof costs O(log n) page reads.
        Every tile and node of one call is read by a single statement
        (:func:`_node_query`): a proof at 10M needs about 27 rows, and one
        statement each cost three times the SQL time and grew with log2 N.

        Raises:
            StorageError: if a node is missing (the database is damaged).
        """
        # (level, index) tuples rather than NodeIds: their hashing and
        # ordering run in C, and this is per proof node on every proof.
        tiles = sorted({n.index >> (TILE_LEVEL - n.level) for n in ids if n.level < TILE_LEVEL})
        stored = sorted({(n.level, n.index) for n in ids if n.level >= TILE_LEVEL})
        found: dict[tuple[int, int], bytes] = {}
        for at in range(0, max(len(tiles), len(stored)), _NODES_PER_QUERY):
            some_tiles = tiles[at : at + _NODES_PER_QUERY]
            some_nodes = stored[at : at + _NODES_PER_QUERY]
            params: list[int] = []
            for tile in some_tiles:
                params += (log_id, tile << TILE_LEVEL, (tile + 1) << TILE_LEVEL)
            for key in some_nodes:
                params += key
            if some_nodes:
                params.append(log_id)
            sql = _node_query(len(some_tiles), len(some_nodes))
            for level, idx, h in self.conn.execute(sql, params):
                found[level, idx] = h
        hashes: list[bytes] = []
        for node_id in ids:
            h = found.get((node_id.level, node_id.index))
            if h is None and node_id.level < TILE_LEVEL:
                h = _fold_leaves(found, node_id)
                if h is not None:
                    found[node_id.level, node_id.index] = h
            if h is None:
                raise StorageError(
                    f"tree node(s) missing from the database, first {node_id}: "
                    "the database is damaged; run `hashmesh fsck`"
                )
            hashes.append(h)
        return hashes

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

    def hash_tile(self, log_id: int, tile: TileId) -> bytes:
        """The bytes of a C2SP hash tile (its hashes concatenated), in one range read.

        A level-0 tile is ``tile.width`` leaf hashes from ``entries``; a
        level-L tile the hashes of ``nodes`` of tree level ``8 * L``, which
        are stored since ``8 * L >= TILE_LEVEL``. The caller checks that the
        tile lies within the tree size it serves (:meth:`TileId.is_within`):
        here every hash must exist.

        Raises:
            StorageError: if a hash of the tile is not stored (the tile lies
                beyond the log, or the database is damaged).
        """
        first = tile.index << TILE_HEIGHT
        end = first + tile.width
        if tile.level == 0:
            rows = self.conn.execute(
                "SELECT leaf_hash FROM entries WHERE log_id = ? AND idx >= ? AND idx < ? "
                "ORDER BY idx",
                (log_id, first, end),
            ).fetchall()
        else:
            rows = self.conn.execute(
                "SELECT hash FROM nodes WHERE log_id = ? AND level = ? AND idx >= ? AND idx < ? "
                "ORDER BY idx",
                (log_id, TILE_HEIGHT * tile.level, first, end),
            ).fetchall()
        if len(rows) != tile.width:
            raise StorageError(
                f"tile {tile.to_path()} needs {tile.width} hashes, {len(rows)} are stored: "
                "it lies beyond the log, or the database is damaged (run `hashmesh fsck`)"
            )
        return b"".join([row[0] for row in rows])

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
        # One snapshot: a merge committed between the look-ups of the two
        # levels could otherwise move a row out of sight.
        with self.read_snapshot():
            return {value: idx for (_t, value), idx in self.find_listed(log_id, keys).items()}

    def find_listed(
        self,
        log_id: int,
        keys: Mapping[tuple[str, str], int],
        *,
        at_most: int | None = None,
    ) -> dict[tuple[str, str], int]:
        """Which identities (signal type, value) the log lists, mapped to their index.

        ``keys`` maps each identity to its :func:`~node.storage.schema.active_key`
        (callers that write the same hashes next compute the keys once).
        Candidates are checked against their stored entries. ``at_most``, if
        known, bounds the ``active`` rows the log has (its size does): when
        they are few against the keys asked about, all of them are read in
        one range scan instead of one look-up per key (each look-up costs
        about 0.6 µs even in an empty index). Call inside a transaction
        (the writers do) or :meth:`read_snapshot`: the two levels of
        ``active`` are read by separate statements.
        """
        candidates: list[int] = []
        # Both levels of `active` (schema version 7); a log none of whose
        # rows were merged yet (every fresh or small node) costs one seek.
        levels = ("active", "active_base") if self._has_base_rows(log_id) else ("active",)
        if at_most is not None and 4 * at_most <= len(keys):
            if not at_most:
                return {}
            asked = set(keys.values())
            for table in levels:
                candidates += [
                    idx
                    for key, idx in self.conn.execute(
                        f"SELECT key, idx FROM {table} WHERE log_id = ?",  # noqa: S608 - table names only
                        (log_id,),
                    )
                    if key in asked
                ]
            wanted: list[int] = []
        else:
            wanted = sorted(set(keys.values()))
        for i in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for table in levels:
                candidates.extend(
                    idx
                    for (idx,) in self.conn.execute(
                        f"SELECT idx FROM {table} WHERE log_id = ? AND key IN ({marks})",  # noqa: S608 - only placeholders
                        (log_id, *chunk),
                    )
                )
        found: dict[tuple[str, str], int] = {}
        for idx, data in self._entries_at(log_id, sorted(candidates)):
            entry = parse_entry(bytes(data))
            if isinstance(entry, AddEntry) and entry.identity in keys:
                found[entry.identity] = idx
        return found

    def _has_base_rows(self, log_id: int) -> bool:
        """Whether any row of the log was merged into ``active_base``."""
        return (
            self.conn.execute(
                "SELECT 1 FROM active_base WHERE log_id = ? LIMIT 1", (log_id,)
            ).fetchone()
            is not None
        )

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
        caller makes sure none of them is listed already (in either level).
        The rows go to ``active``, the small level; :meth:`merge_active_rows`
        moves them into ``active_base`` later.
        """
        if len(keys) != len(indexes):
            raise ValueError(f"{len(keys)} active keys but {len(indexes)} indexes")
        if not keys:
            return
        self.active_rows_written += len(keys)
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
        # The listing row is in one of the two levels (not merged yet, or merged).
        for table in ("active", "active_base"):
            self.conn.execute(
                f"DELETE FROM {table} WHERE log_id = ? AND key = ? AND idx = ?",  # noqa: S608 - table names only
                (log_id, active_key(*identity), target),
            )

    def unmerged_active_rows(self, at_most: int) -> int:
        """Rows in ``active`` (the level not merged yet), counted up to ``at_most``."""
        row = self.conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM active LIMIT ?)", (at_most,)
        ).fetchone()
        return int(row[0])

    def merge_active_rows(self, rows: int) -> int:
        """Move the first ``rows`` rows of ``active`` (in key order) into ``active_base``.

        One transaction of its own (call outside any): the rows leave one
        level and enter the other in the same commit, so every reader (each
        reads both in one snapshot) sees each listed hash exactly once.
        Sorted, the inserts walk ``active_base`` forward and each of its
        pages is written once per chunk. Returns the rows moved (fewer than
        ``rows``: none were left).

        A statement that may fail half way makes SQLite keep a copy of every
        page it changes in a statement journal (a temporary file): one more
        write of each base page, a third of the merge's bytes (measured,
        docs/benchmarks.md). Nothing here can fail half way: the rows come
        from ``active``, whose log ids the foreign key already checked, so
        the check is off for the transaction, and a duplicate key (a row in
        both levels: damage fsck reports) rolls the whole transaction back
        (``OR ROLLBACK``) instead of the statement.
        """
        if self.conn.in_transaction:
            raise StorageError("a merge of the active index runs in a transaction of its own")
        # Only takes effect outside a transaction, hence before BEGIN.
        self.conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with self.transaction():
                last = self.conn.execute(
                    "SELECT log_id, key, idx FROM active ORDER BY log_id, key, idx "
                    "LIMIT 1 OFFSET ?",
                    (max(0, rows - 1),),
                ).fetchone()
                bound = "" if last is None else "WHERE (log_id, key, idx) <= (?, ?, ?)"
                args = () if last is None else tuple(last)
                self.conn.execute(
                    "INSERT OR ROLLBACK INTO active_base (log_id, key, idx) "  # noqa: S608 - fixed text
                    f"SELECT log_id, key, idx FROM active {bound} ORDER BY log_id, key, idx",
                    args,
                )
                moved = int(self.conn.execute(f"DELETE FROM active {bound}", args).rowcount)  # noqa: S608 - fixed text
        finally:
            self.conn.execute("PRAGMA foreign_keys = ON")
        return moved

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
            (log_id, size, root_hash, note, now_text()),
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

    def recent_checkpoints(self, log_id: int, limit: int) -> list[CheckpointRecord]:
        """The ``limit`` largest stored checkpoints of a log, largest first."""
        return [
            CheckpointRecord(row[0], bytes(row[1]), row[2], row[3])
            for row in self.conn.execute(
                "SELECT size, root_hash, note, recorded_at FROM checkpoints "
                "WHERE log_id = ? ORDER BY size DESC LIMIT ?",
                (log_id, limit),
            )
        ]

    def size_by_day(self, log_id: int, since: str) -> list[tuple[str, int]]:
        """``(YYYY-MM-DD, largest size signed that UTC day)`` from day ``since`` on, by day.

        Also the last such pair before ``since`` (the size the period starts
        from), when there is one.
        """
        before = self.conn.execute(
            "SELECT substr(recorded_at, 1, 10), size FROM checkpoints "
            "WHERE log_id = ? AND recorded_at < ? ORDER BY size DESC LIMIT 1",
            (log_id, since),
        ).fetchall()
        days = self.conn.execute(
            "SELECT substr(recorded_at, 1, 10) AS day, max(size) FROM checkpoints "
            "WHERE log_id = ? AND recorded_at >= ? GROUP BY day ORDER BY day",
            (log_id, since),
        ).fetchall()
        return [(str(d), int(n)) for d, n in [*before, *days]]

    def recent_retractions(self, log_id: int, limit: int) -> list[tuple[int, int]]:
        """The ``limit`` latest retractions of a log, latest first: ``(target, retracted by)``."""
        return [
            (int(t), int(r))
            for t, r in self.conn.execute(
                "SELECT target, retracted_by FROM retractions WHERE log_id = ? "
                "ORDER BY retracted_by DESC LIMIT ?",
                (log_id, limit),
            )
        ]

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection commits."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def set_wal_limit(self, max_bytes: int | None) -> None:
        """How much the WAL may hold before a commit copies it into the database.

        ``None`` restores SQLite's default (1,000 pages) and copies what the
        WAL holds now, as far as readers allow (a PASSIVE checkpoint: it
        never waits for them). Every commit stays durable in the WAL
        (``synchronous=FULL``); this only decides how often its pages are
        written a second time, into the database file. After a checkpoint
        the WAL file is cut back to :data:`WAL_KEPT_BYTES`.
        """
        self.conn.execute(f"PRAGMA journal_size_limit = {WAL_KEPT_BYTES}")
        if max_bytes is None:
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {_SQLITE_AUTOCHECKPOINT}")
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            return
        page_size = int(self.conn.execute("PRAGMA page_size").fetchone()[0])
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {max(1, max_bytes // page_size)}")

    # -- checking and rebuilding derived data (node.ledger.fsck) -------------

    def node_hashes(self, log_id: int, level: int, start: int, end: int) -> dict[int, bytes]:
        """Stored tree nodes of one level with index in [start, end): index -> hash."""
        return {
            int(idx): bytes(h)
            for idx, h in self.conn.execute(
                "SELECT idx, hash FROM nodes WHERE log_id = ? AND level = ? AND idx >= ? "
                "AND idx < ?",
                (log_id, level, start, end),
            )
        }

    def active_arrays(self, log_id: int) -> tuple[numpy.ndarray[Any, Any], numpy.ndarray[Any, Any]]:
        """One log's ``active`` rows (both levels) as two int64 arrays: (entry index, key)."""
        parts = list(self.active_chunks(log_id))
        if not parts:
            return numpy.zeros(0, numpy.int64), numpy.zeros(0, numpy.int64)
        return (
            numpy.concatenate([i for i, _k in parts]),
            numpy.concatenate([k for _i, k in parts]),
        )

    def active_chunks(
        self, log_id: int, rows: int = 1 << 16
    ) -> Iterator[tuple[numpy.ndarray[Any, Any], numpy.ndarray[Any, Any]]]:
        """One log's ``active`` rows (both levels), ``rows`` at a time: int64 arrays (index, key).

        In key order within each level. ``fsck`` compares a 100M-entry log
        chunk by chunk: the whole table as arrays would be 16 bytes a row more
        to hold (and a chunk is Python tuples first, about 120 bytes a row: 8
        MB at 65,536).
        """
        cursor = self.conn.execute(_BOTH_LEVELS, (log_id,))
        while batch := cursor.fetchmany(rows):
            idx = array("q")
            keys = array("q")
            for i, k in batch:
                # A damaged row may hold another type: it then shows as wrong.
                if isinstance(i, int):
                    idx.append(i)
                    keys.append(k if isinstance(k, int) else 0)
            yield (
                numpy.frombuffer(idx, dtype=numpy.int64),
                numpy.frombuffer(keys, dtype=numpy.int64),
            )

    def entries_by_index(self, log_id: int, indexes: Sequence[int]) -> dict[int, bytes]:
        """The exact bytes of chosen entries: index -> data (missing ones left out)."""
        return {int(i): bytes(d) for i, d in self._entries_at(log_id, sorted(set(indexes)))}

    def derived_rows(
        self, log_id: int, table: str, start: int | None = None, end: int | None = None
    ) -> list[tuple[int, object]]:
        """One log's rows of a derived table, keyed by entry index.

        ``active``: (index, key), of both levels; ``pdq``: (index, hash); ``opinions``:
        (index, (target origin, target index, leaf hash, verdict));
        ``retractions``: (target, retracting index). With ``start`` and
        ``end``, only the ``pdq`` rows of entries in [start, end), by index.
        """
        if start is not None or end is not None:
            if table != "pdq":
                raise ValueError(f"a range of rows is read only from pdq, not {table!r}")
            return [
                (int(idx), bytes(v) if isinstance(v, bytes) else v)
                for idx, v in self.conn.execute(
                    "SELECT idx, hash FROM pdq WHERE log_id = ? AND idx >= ? AND idx < ? "
                    "ORDER BY idx",
                    (log_id, start or 0, 2**63 - 1 if end is None else end),
                )
            ]
        if table == "active":
            sql = _BOTH_LEVELS
        elif table == "pdq":
            sql = "SELECT idx, hash FROM pdq WHERE log_id = ?"
        elif table == "retractions":
            sql = "SELECT target, retracted_by FROM retractions WHERE log_id = ?"
        elif table == "opinions":
            return [
                (int(idx), (str(o), int(t), bytes(h), str(v)))
                for idx, o, t, h, v in self.conn.execute(
                    "SELECT idx, target_origin, target_idx, target_leaf_hash, verdict "
                    "FROM opinions WHERE log_id = ?",
                    (log_id,),
                )
            ]
        else:
            raise ValueError(f"{table!r} is not a derived table")
        return [
            (int(idx), bytes(v) if isinstance(v, bytes) else v)
            for idx, v in self.conn.execute(sql, (log_id,))
        ]

    def missing_guards(self) -> list[str]:
        """Append-only triggers the schema calls for that are missing (dropped, or damaged)."""
        return missing_guards(self.conn)

    def restore_guards(self) -> list[str]:
        """Create the missing append-only triggers (inside :meth:`transaction`)."""
        return restore_guards(self.conn)

    def rebuilding(self, tables: Sequence[str]) -> AbstractContextManager[None]:
        """Drop derived tables and make them again, empty, for the block to refill.

        Call inside :meth:`transaction`; see :func:`~node.storage.schema.rebuilt_tables`.
        """
        return rebuilt_tables(self.conn, tables)

    def fill_derived(
        self,
        log_id: int,
        *,
        active: tuple[Sequence[int], Sequence[int]],
        pdq: Sequence[tuple[int, bytes]],
        opinions: Sequence[tuple[int, str, int, bytes, str]],
        retractions: Sequence[tuple[int, int]],
        leaf_fixes: Sequence[tuple[int, bytes]],
    ) -> None:
        """Refill one log's derived rows (inside :meth:`rebuilding`).

        ``active`` is (keys, indexes); ``leaf_fixes`` the (index, leaf hash)
        of entries whose stored leaf hash is wrong.
        """
        self.add_active(log_id, *active)
        self.matching.add_pdq(log_id, pdq)
        self.matching.add_opinions(log_id, opinions)
        self.conn.executemany(
            "INSERT INTO retractions (log_id, target, retracted_by) VALUES (?, ?, ?)",
            [(log_id, t, b) for t, b in retractions],
        )
        if leaf_fixes:
            with suspended_triggers(self.conn, "entries"):
                self.conn.executemany(
                    "UPDATE entries SET leaf_hash = ? WHERE log_id = ? AND idx = ?",
                    [(h, log_id, i) for i, h in leaf_fixes],
                )

    def rewrite_entries(self, log_id: int, rows: Sequence[tuple[int, bytes, bytes]]) -> None:
        """Put verified bytes back in place of damaged entries: rows of (index, data, leaf hash).

        Only repair calls this (:func:`node.ledger.fsck.restore_entries`), inside
        :meth:`transaction`, after the bytes reproduced a signed root: the
        append-only triggers are lifted for the statement and restored.
        """
        if not rows:
            return
        with suspended_triggers(self.conn, "entries"):
            self.conn.executemany(
                "INSERT OR REPLACE INTO entries (log_id, idx, data, leaf_hash) VALUES (?, ?, ?, ?)",
                [(log_id, idx, data, leaf) for idx, data, leaf in rows],
            )

    def integrity_check(self) -> list[str]:
        """SQLite's ``PRAGMA integrity_check`` result lines (["ok"] when sound)."""
        # Its messages may quote damaged text: decode them leniently.
        factory = self.conn.text_factory
        self.conn.text_factory = bytes
        try:
            rows = self.conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            self.conn.text_factory = factory
        return [bytes(r[0]).decode("utf-8", "replace") for r in rows]


def _upgrade(path: Path, version: int) -> None:
    """Migrate the database at ``path`` (opened read-only by the caller) to this schema version."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            apply_pragmas(conn)
            migrate(conn)
        finally:
            conn.close()
    except (sqlite3.Error, StorageError) as e:
        raise StorageError(
            f"database {path} has schema version {version}, older than this hashmesh's "
            f"{SCHEMA_VERSION}, and cannot be upgraded here ({e}): run a command that writes "
            "(`hashmesh serve`, `hashmesh import`) where the file is writable"
        ) from e


def _fold_leaves(found: Mapping[tuple[int, int], bytes], node_id: NodeId) -> bytes | None:
    """A perfect node's hash from its leaf hashes (keys ``(0, index)``), None if one is missing."""
    first = node_id.index << node_id.level
    level = [found.get((0, i)) for i in range(first, first + (1 << node_id.level))]
    hashes = [h for h in level if h is not None]
    if len(hashes) < len(level):
        return None
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
