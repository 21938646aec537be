"""Witness state, collected cosignatures and checkpoints waiting for them (schema 4, 5).

Layer: node.storage. Performs SQLite I/O on the connection it is given.

Three tables:

* ``witness_state``: for each origin this node witnesses, the latest
  checkpoint it cosigned. The witness (:mod:`node.ledger.witness`) reads and
  writes it inside one ``BEGIN IMMEDIATE`` transaction, so two requests can
  never both pass the check against the same old state. The upsert below
  moves a row only forward (a larger size, or the same size and root), so
  even a caller that forgot the transaction could not roll a witness back.
* ``cosignatures`` (append-only, by trigger): witness signature lines held
  for checkpoints of any log this node holds, one per (checkpoint, witness
  key); served appended to the checkpoint's note.
* ``witness_waits``: per followed origin, the newest checkpoint that does not
  meet this node's witness policy yet, holding every verified cosignature
  collected for it so far from any peer (so k of n lines met on different
  paths add up), and since when the node waits. ``hashmesh status`` and the
  metrics read it; a row goes once a checkpoint that large is held.

Like :class:`~node.storage.ledger_store.LedgerStore`, nothing here signs or
verifies: the ledger layer decides what to write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from node.errors import StorageError
from node.storage.connection import now_text

__all__ = ["CosignatureRecord", "WitnessStateRecord", "WitnessStore", "WitnessWaitRecord"]


@dataclass(frozen=True, slots=True)
class WitnessStateRecord:
    """The latest checkpoint this node cosigned for one origin."""

    origin: str
    size: int
    root_hash: bytes
    note: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class CosignatureRecord:
    """One held cosignature line of a checkpoint.

    Attributes:
        size: the checkpoint's tree size.
        witness: the witness key's name.
        key_id: the key ID, 8 lowercase hex digits.
        line: the signature line, without its final newline.
        received_at: when it was stored (UTC).
    """

    size: int
    witness: str
    key_id: str
    line: str
    received_at: str


@dataclass(frozen=True, slots=True)
class WitnessWaitRecord:
    """A followed origin's checkpoint waiting for witness cosignatures.

    Attributes:
        origin: the followed origin.
        size: the checkpoint's tree size.
        root_hash: its root hash.
        note: the checkpoint note with the verified cosignatures collected.
        since: when this node started waiting (UTC; kept when a larger
            checkpoint replaces the one waited for).
        updated_at: when a checkpoint or cosignature last changed the row.
    """

    origin: str
    size: int
    root_hash: bytes
    note: str
    since: str
    updated_at: str


class WitnessStore:
    """The witness tables, on one SQLite connection (shared with the ledger store)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- witness state -------------------------------------------------------

    def get_state(self, origin: str) -> WitnessStateRecord | None:
        """The latest checkpoint cosigned for ``origin``, or None if never."""
        row = self.conn.execute(
            "SELECT origin, size, root_hash, note, updated_at FROM witness_state WHERE origin = ?",
            (origin,),
        ).fetchone()
        if row is None:
            return None
        return WitnessStateRecord(row[0], int(row[1]), bytes(row[2]), row[3], row[4])

    def list_states(self) -> list[WitnessStateRecord]:
        """Every origin witnessed, by origin."""
        rows = self.conn.execute(
            "SELECT origin, size, root_hash, note, updated_at FROM witness_state ORDER BY origin"
        ).fetchall()
        return [WitnessStateRecord(r[0], int(r[1]), bytes(r[2]), r[3], r[4]) for r in rows]

    def save_state(self, origin: str, size: int, root_hash: bytes, note: str) -> None:
        """Record a newly cosigned checkpoint (call inside the checking transaction).

        Raises:
            StorageError: if the row would move backwards (a smaller size, or
                the same size with another root): the caller's check failed.
        """
        cur = self.conn.execute(
            "INSERT INTO witness_state (origin, size, root_hash, note, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET "
            "size = excluded.size, root_hash = excluded.root_hash, note = excluded.note, "
            "updated_at = excluded.updated_at "
            "WHERE excluded.size > witness_state.size OR "
            "(excluded.size = witness_state.size AND excluded.root_hash = witness_state.root_hash)",
            (origin, size, root_hash, note, now_text()),
        )
        if cur.rowcount != 1:
            raise StorageError(
                f"witness state of {origin!r} would move back to size {size}; refused"
            )

    # -- cosignatures --------------------------------------------------------

    def add_cosignatures(
        self, log_id: int, size: int, lines: Iterable[tuple[str, int, str]]
    ) -> int:
        """Store cosignature lines ``(witness name, key ID, line)`` of one checkpoint.

        A witness key already held for that checkpoint keeps its first line.

        Returns:
            How many lines were new.
        """
        now = now_text()
        added = 0
        for witness, key_id, line in lines:
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO cosignatures "
                "(log_id, size, witness, key_id, line, received_at) VALUES (?, ?, ?, ?, ?, ?)",
                (log_id, size, witness, f"{key_id:08x}", line, now),
            )
            added += cur.rowcount
        return added

    def cosignatures(self, log_id: int, size: int) -> list[CosignatureRecord]:
        """The cosignature lines held for the checkpoint of ``size``, oldest first."""
        rows = self.conn.execute(
            "SELECT size, witness, key_id, line, received_at FROM cosignatures "
            "WHERE log_id = ? AND size = ? ORDER BY received_at, witness, key_id",
            (log_id, size),
        ).fetchall()
        return [CosignatureRecord(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    def latest_cosigned_size(self, log_id: int, witness: str, key_id: int) -> int | None:
        """The largest checkpoint size of a log that this witness key cosigned, or None."""
        row = self.conn.execute(
            "SELECT max(size) FROM cosignatures WHERE log_id = ? AND witness = ? AND key_id = ?",
            (log_id, witness, f"{key_id:08x}"),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    # -- checkpoints waiting for cosignatures --------------------------------

    def get_wait(self, origin: str) -> WitnessWaitRecord | None:
        """The checkpoint of ``origin`` waiting for cosignatures, if any."""
        row = self.conn.execute(
            "SELECT origin, size, root_hash, note, since, updated_at FROM witness_waits "
            "WHERE origin = ?",
            (origin,),
        ).fetchone()
        return None if row is None else _wait(row)

    def list_waits(self) -> list[WitnessWaitRecord]:
        """Every checkpoint waiting for cosignatures, by origin."""
        rows = self.conn.execute(
            "SELECT origin, size, root_hash, note, since, updated_at FROM witness_waits "
            "ORDER BY origin"
        ).fetchall()
        return [_wait(r) for r in rows]

    def save_wait(self, origin: str, size: int, root_hash: bytes, note: str) -> str:
        """Record (or update) the checkpoint of ``origin`` waiting for cosignatures.

        ``since`` is kept from an existing row: the node has waited since
        then, whichever checkpoint it waits for now.

        Returns:
            Since when the node waits.
        """
        now = now_text()
        self.conn.execute(
            "INSERT INTO witness_waits (origin, size, root_hash, note, since, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET "
            "size = excluded.size, root_hash = excluded.root_hash, note = excluded.note, "
            "updated_at = excluded.updated_at",
            (origin, size, root_hash, note, now, now),
        )
        row = self.conn.execute(
            "SELECT since FROM witness_waits WHERE origin = ?", (origin,)
        ).fetchone()
        return str(row[0])

    def end_wait(self, origin: str, held_size: int) -> WitnessWaitRecord | None:
        """Drop the wait of ``origin`` if a checkpoint of ``held_size`` covers it.

        Returns:
            The wait that ended, or None.
        """
        wait = self.get_wait(origin)
        if wait is None or wait.size > held_size:
            return None
        self.conn.execute("DELETE FROM witness_waits WHERE origin = ?", (origin,))
        return wait


def _wait(row: sqlite3.Row | tuple[Any, ...]) -> WitnessWaitRecord:
    return WitnessWaitRecord(row[0], int(row[1]), bytes(row[2]), row[3], row[4], row[5])
