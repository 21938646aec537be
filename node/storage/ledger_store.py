"""Synchronous storage of logs, entries, tree nodes and checkpoints.

Layer: node.storage. Performs SQLite I/O on one connection.

:class:`LedgerStore` is deliberately plain: every method is a few SQL
statements, callers group writes with :meth:`LedgerStore.transaction`
(``BEGIN IMMEDIATE``, so two writers never race for a sequence number), and no
method signs or verifies anything. The ledger layer above decides what to
write; this layer only makes it durable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from node.errors import StorageError, UnknownLogError
from node.storage.schema import apply_pragmas, migrate
from protocol.tree import CompactRange, NodeId, NodeRun, frontier_ids

__all__ = ["CheckpointRecord", "LedgerStore", "LogNodeReader", "LogRecord"]

# SQLite's default limit on bound parameters per statement is 32766; stay
# well below it for IN (...) look-ups.
_IN_CHUNK = 500


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

    # -- logs -------------------------------------------------------------

    def create_log(self, origin: str, verifier_key: str, *, is_own: bool) -> LogRecord:
        """Register a log (call inside a transaction)."""
        cur = self.conn.execute(
            "INSERT INTO logs (origin, verifier_key, is_own, created_at) VALUES (?, ?, ?, ?)",
            (origin, verifier_key, int(is_own), _now()),
        )
        assert cur.lastrowid is not None
        return LogRecord(cur.lastrowid, origin, verifier_key, is_own)

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

        Raises:
            StorageError: if a node is missing (the database is damaged).
        """
        found: dict[NodeId, bytes] = {}
        leaves = sorted({n.index for n in ids if n.level == 0})
        inner = sorted({n for n in ids if n.level > 0})
        for i in range(0, len(leaves), _IN_CHUNK):
            chunk = leaves[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for idx, leaf_hash in self.conn.execute(
                f"SELECT idx, leaf_hash FROM entries WHERE log_id = ? AND idx IN ({marks})",  # noqa: S608 - only placeholders
                (log_id, *chunk),
            ):
                found[NodeId(level=0, index=idx)] = leaf_hash
        for node_id in inner:
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

        Call inside :meth:`transaction`. The primary key makes a second write
        of an index fail instead of overwriting it.
        """
        self.conn.executemany(
            "INSERT INTO entries (log_id, idx, data, leaf_hash) VALUES (?, ?, ?, ?)",
            zip(
                [log_id] * len(datas),
                range(start, start + len(datas)),
                datas,
                leaf_hashes,
                strict=True,
            ),
        )
        for run in runs:
            self.conn.executemany(
                "INSERT INTO nodes (log_id, level, idx, hash) VALUES (?, ?, ?, ?)",
                ((log_id, run.level, run.start + i, h) for i, h in enumerate(run.hashes)),
            )

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
        """Which of ``values`` the log currently lists, mapped to their index."""
        found: dict[str, int] = {}
        for i in range(0, len(values), _IN_CHUNK):
            chunk = values[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for value, idx in self.conn.execute(
                f"SELECT value, idx FROM active WHERE log_id = ? AND signal_type = ? "  # noqa: S608 - only placeholders
                f"AND value IN ({marks})",
                (log_id, signal_type, *chunk),
            ):
                found[value] = idx
        return found

    def add_active(self, log_id: int, rows: Iterable[tuple[str, str, int, str]]) -> None:
        """Record listed hashes: rows of (signal type, value, index, labels JSON)."""
        self.conn.executemany(
            "INSERT OR IGNORE INTO active (log_id, signal_type, value, idx, labels) "
            "VALUES (?, ?, ?, ?, ?)",
            ((log_id, *row) for row in rows),
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
            "DELETE FROM active WHERE log_id = ? AND signal_type = ? AND value = ? AND idx = ?",
            (log_id, identity[0], identity[1], target),
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
                "SELECT signal_type, count(*) FROM active WHERE log_id = ? "
                "GROUP BY signal_type ORDER BY signal_type",
                (log_id,),
            ).fetchall()
        )
        by_label = dict(
            self.conn.execute(
                "SELECT j.value, count(*) FROM active, json_each(active.labels) AS j "
                "WHERE active.log_id = ? GROUP BY j.value ORDER BY j.value",
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

    def iter_checkpoints(self, log_id: int) -> Iterator[CheckpointRecord]:
        """Every stored checkpoint of a log, by increasing size."""
        for row in self.conn.execute(
            "SELECT size, root_hash, note, recorded_at FROM checkpoints "
            "WHERE log_id = ? ORDER BY size",
            (log_id,),
        ):
            yield CheckpointRecord(row[0], bytes(row[1]), row[2], row[3])

    def integrity_check(self) -> list[str]:
        """SQLite's ``PRAGMA integrity_check`` result lines (["ok"] when sound)."""
        return [r[0] for r in self.conn.execute("PRAGMA integrity_check").fetchall()]


class LogNodeReader:
    """:class:`protocol.tree.NodeReader` over one log in a :class:`LedgerStore`."""

    def __init__(self, store: LedgerStore, log_id: int) -> None:
        self._store = store
        self._log_id = log_id

    def get_node_hashes(self, ids: Sequence[NodeId]) -> Sequence[bytes]:
        """Stored hashes of perfect subtrees, in the order asked."""
        return self._store.get_node_hashes(self._log_id, ids)
