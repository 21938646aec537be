"""What every store on one SQLite connection shares: transactions and row timestamps.

Layer: node.storage. :class:`~node.storage.ledger_store.LedgerStore` owns the
connection; the per-concern stores it hands out
(:class:`~node.storage.peer_store.PeerStore`,
:class:`~node.storage.match_store.MatchStore`,
:class:`~node.storage.witness_store.WitnessStore`) write on the same one, so
one ``BEGIN IMMEDIATE`` transaction can span all of them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from node.errors import StorageError

__all__ = ["joined_transaction", "now_text", "read_snapshot", "write_transaction"]


def now_text() -> str:
    """The current UTC time as stored in ``*_at`` columns (microseconds, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
        raise StorageError(f"cannot start a write transaction: {e}") from e
    try:
        yield
    except sqlite3.Error as e:
        conn.execute("ROLLBACK")
        raise StorageError(f"write failed and was rolled back: {e}") from e
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        conn.execute("ROLLBACK")
        raise StorageError(f"commit failed and was rolled back: {e}") from e


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
        conn.execute("COMMIT")


@contextmanager
def joined_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Join the caller's open transaction, or run the block in a new one."""
    if conn.in_transaction:
        yield
        return
    with write_transaction(conn):
        yield
