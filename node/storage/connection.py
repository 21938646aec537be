"""What every store on one SQLite connection shares: transactions and row timestamps.

Layer: node.storage. :class:`~node.storage.ledger_store.LedgerStore` owns the
connection; the per-concern stores it hands out
(:class:`~node.storage.peer_store.PeerStore`,
:class:`~node.storage.match_store.MatchStore`,
:class:`~node.storage.witness_store.WitnessStore`) write on the same one, so
one ``BEGIN IMMEDIATE`` transaction can span all of them.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from node.errors import StorageError

__all__ = [
    "database_path",
    "describe_sqlite_error",
    "joined_transaction",
    "now_text",
    "read_snapshot",
    "rollback_if_open",
    "write_transaction",
]

# SQLite's primary result codes (the low byte of an extended code) that name a
# cause an operator can act on; anything else is shown as SQLite words it.
_CAUSES = {
    3: "permission denied on the database file",
    5: "the database is locked by another writer",
    6: "the database is locked by another writer",
    8: "the database is read-only (read-only file system or file permissions)",
    10: "an I/O error on the database file or its journal",
    11: "the database file is damaged",
    13: "the disk is full",
    14: "the database file or its folder cannot be opened",
    26: "the file is not a database (damaged, or another format)",
}

_DAMAGED = frozenset({11, 26})
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
# Below this many free bytes an I/O error is taken for a full disk: SQLite
# needs a page or a shared-memory block (32 KiB) to go on.
_LOW_SPACE = 64 * 1024


def describe_sqlite_error(e: sqlite3.Error, path: Path | None = None) -> str:
    """The cause of a SQLite failure in the operator's words, with SQLite's own in brackets.

    Given the database's ``path``, an I/O error on a file system with no room
    left is reported as the full disk it is (SQLite cannot grow its shared
    memory file there and says only "disk I/O error").
    """
    code = getattr(e, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    cause = _CAUSES.get(primary) if primary is not None else None
    if primary == _SQLITE_IOERR and path is not None and _no_room(path):
        cause = _CAUSES[_SQLITE_FULL]
    text = f"{cause} ({e})" if cause else str(e)
    return text + "; run `hashmesh fsck`" if primary in _DAMAGED else text


def _no_room(path: Path) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < _LOW_SPACE
    except OSError:
        return False


def database_path(conn: sqlite3.Connection) -> Path | None:
    """The file of a connection's main database (None in memory)."""
    row = conn.execute("PRAGMA database_list").fetchone()
    return Path(row[2]) if row is not None and row[2] else None


def rollback_if_open(conn: sqlite3.Connection) -> None:
    """Roll back the connection's transaction if SQLite has not already done so.

    After SQLITE_FULL, SQLITE_IOERR and some others SQLite rolls the
    transaction back by itself; an explicit ``ROLLBACK`` then raises "cannot
    rollback - no transaction is active" and buries the real cause. A failing
    rollback is not reported either: the first error is the one that matters,
    and an unfinished transaction is rolled back when the connection closes.
    """
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def now_text() -> str:
    """The current UTC time as stored in ``*_at`` columns (microseconds, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _describe(conn: sqlite3.Connection, e: sqlite3.Error) -> str:
    try:
        path = database_path(conn)
    except sqlite3.Error:
        path = None
    return describe_sqlite_error(e, path)


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in one ``BEGIN IMMEDIATE`` transaction.

    Commits when the block ends normally and rolls back on any exception,
    so a failed write leaves the database exactly as it was.

    Raises:
        StorageError: if SQLite fails (the transaction is rolled back).
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as e:
        raise StorageError(
            f"cannot start a write: {_describe(conn, e)}; nothing was written"
        ) from e
    try:
        yield
    except sqlite3.Error as e:
        rollback_if_open(conn)
        raise StorageError(f"write failed: {_describe(conn, e)}; nothing was written") from e
    except BaseException:
        rollback_if_open(conn)
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        rollback_if_open(conn)
        raise StorageError(f"commit failed: {_describe(conn, e)}; nothing was written") from e


@contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Read one committed state for the whole block (a deferred transaction).

    Joins the caller's open transaction, if any. Without it, a long read
    (an export, a batch of matches) could mix rows from before and after a
    concurrent commit.
    """
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        _end_read(conn)


def _end_read(conn: sqlite3.Connection) -> None:
    # A damaged page or an I/O error may have ended the transaction already.
    if conn.in_transaction:
        conn.execute("COMMIT")


@contextmanager
def joined_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Join the caller's open transaction, or run the block in a new one."""
    if conn.in_transaction:
        yield
        return
    with write_transaction(conn):
        yield
