"""SQL of matching: the derived ``pdq`` and ``opinions`` tables, and bulk look-ups.

Layer: node.storage. Performs SQLite I/O on the connection it is given.

Writes (:meth:`MatchStore.add_pdq`, :meth:`MatchStore.remove_pdq`,
:meth:`MatchStore.add_opinions`) run inside the ledger's write transaction,
next to the ``active`` rows they mirror, so the derived tables are exactly as
durable and as current as the log. Reads answer a whole batch of queries in
one statement per signal type: the batch is handed to SQLite as one JSON
array, walked with ``json_each`` and joined to the indexes, so ten thousand
look-ups are ten thousand B-tree seeks in C rather than ten thousand Python
calls. ``CROSS JOIN`` fixes the loop order (SQLite never reorders it): the
planner has no statistics on these tables and would otherwise scan ``active``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy

from node.storage.schema import active_keys

__all__ = ["Candidate", "MatchStore", "OpinionRow"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A listed entry whose ``active`` key equals a query's (to be checked by value).

    Attributes:
        position: the query's position in the list given to the look-up.
        log_id: the log holding the entry.
        index: the entry's index in that log.
        data: the exact entry bytes.
    """

    position: int
    log_id: int
    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OpinionRow:
    """One opinion entry about a target entry, as stored in ``opinions``.

    Attributes:
        author: the origin of the log holding the opinion entry.
        index: the opinion entry's index in the author's log.
        target_origin: the origin of the entry the opinion is about.
        target_index: that entry's index.
        target_leaf_hash: the leaf hash the opinion is bound to.
        verdict: ``confirm``, ``dispute`` or ``false-positive``.
        data: the opinion entry's exact bytes (for its note).
    """

    author: str
    index: int
    target_origin: str
    target_index: int
    target_leaf_hash: bytes
    verdict: str
    data: bytes


def _both_levels(select: str) -> str:
    """``select`` (naming ``active`` as ``a``) over both levels of ``active``, as one statement.

    Schema version 7 keeps listed hashes in ``active`` (new rows) and
    ``active_base`` (merged rows), each row in one of them: a UNION ALL of
    the same seeks in each, in one statement, so one snapshot. Parameters
    are numbered (``?1``) so each arm binds the same values.
    """
    base = select.replace("CROSS JOIN active AS a", "CROSS JOIN active_base AS a")
    assert base != select, select
    return f"{select} UNION ALL {base}"


_EXACT = _both_levels(
    "SELECT k.key, a.log_id, a.idx, e.data FROM logs AS l "
    "CROSS JOIN json_each(?1) AS k "
    "CROSS JOIN active AS a ON a.log_id = l.log_id AND a.key = k.value "
    "CROSS JOIN entries AS e ON e.log_id = a.log_id AND e.idx = a.idx"
)

# The same look-up restricted to some logs (the others are answered from
# the mapped key file, node.ledger.active_index).
_EXACT_IN = _both_levels(
    "SELECT k.key, a.log_id, a.idx, e.data FROM json_each(?1) AS l "
    "CROSS JOIN json_each(?2) AS k "
    "CROSS JOIN active AS a ON a.log_id = l.value AND a.key = k.value "
    "CROSS JOIN entries AS e ON e.log_id = a.log_id AND e.idx = a.idx"
)

# Candidates found elsewhere, kept if their row is in `active` (one seek on
# the full primary key each): [[position, log id, key, index], ...].
_STILL_LISTED = _both_levels(
    "SELECT json_extract(k.value, '$[0]'), a.log_id, a.idx, e.data FROM json_each(?1) AS k "
    "CROSS JOIN active AS a ON a.log_id = json_extract(k.value, '$[1]') "
    "AND a.key = json_extract(k.value, '$[2]') AND a.idx = json_extract(k.value, '$[3]') "
    "CROSS JOIN entries AS e ON e.log_id = a.log_id AND e.idx = a.idx"
)

# Rows of a file written before later retractions: kept unless retracted
# since (a seek in `retractions`, a small table), read with their entries.
_UNRETRACTED = (
    "SELECT json_extract(k.value, '$[0]'), e.log_id, e.idx, e.data FROM json_each(?) AS k "
    "CROSS JOIN entries AS e ON e.log_id = json_extract(k.value, '$[1]') "
    "AND e.idx = json_extract(k.value, '$[3]') "
    "WHERE NOT EXISTS (SELECT 1 FROM retractions AS r "
    "WHERE r.log_id = e.log_id AND r.target = e.idx)"
)

_ENTRIES = (
    "SELECT e.idx, e.data FROM json_each(?) AS k "
    "CROSS JOIN entries AS e ON e.log_id = ? AND e.idx = k.value"
)

_ACTIVE = _both_levels(
    "SELECT a.idx FROM json_each(?1) AS k "
    "CROSS JOIN active AS a ON a.log_id = ?2 AND a.key = json_extract(k.value, '$[0]') "
    "AND a.idx = json_extract(k.value, '$[1]')"
)

_OPINIONS = (
    "SELECT l.origin, o.idx, o.target_origin, o.target_idx, o.target_leaf_hash, o.verdict, "
    "e.data FROM json_each(?) AS t "
    "CROSS JOIN opinions AS o ON o.target_origin = json_extract(t.value, '$[0]') "
    "AND o.target_idx = json_extract(t.value, '$[1]') "
    "CROSS JOIN logs AS l ON l.log_id = o.log_id "
    "CROSS JOIN entries AS e ON e.log_id = o.log_id AND e.idx = o.idx"
)


class MatchStore:
    """Matching tables of one ledger database, on one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- writes (inside the ledger's transaction) ---------------------------------

    def add_pdq(self, log_id: int, rows: Sequence[tuple[int, bytes]]) -> None:
        """Record listed PDQ hashes: rows of (index of the add, 32 hash bytes)."""
        if rows:
            self.conn.executemany(
                "INSERT INTO pdq (log_id, idx, hash) VALUES (?, ?, ?)",
                [(log_id, idx, h) for idx, h in rows],
            )

    def remove_pdq(self, log_id: int, index: int) -> None:
        """Forget a PDQ hash whose add was retracted (no-op for other entries)."""
        self.conn.execute("DELETE FROM pdq WHERE log_id = ? AND idx = ?", (log_id, index))

    def add_opinions(self, log_id: int, rows: Sequence[tuple[int, str, int, bytes, str]]) -> None:
        """Record opinion entries: (index, target origin, target index, leaf hash, verdict)."""
        if rows:
            self.conn.executemany(
                "INSERT INTO opinions (log_id, idx, target_origin, target_idx, "
                "target_leaf_hash, verdict) VALUES (?, ?, ?, ?, ?, ?)",
                [(log_id, *row) for row in rows],
            )

    # -- reads ----------------------------------------------------------------

    def log_origins(self) -> dict[int, str]:
        """Every held log: log id -> origin."""
        return dict(self.conn.execute("SELECT log_id, origin FROM logs"))

    def exact_candidates(
        self, signal_type: str, values: Sequence[str], log_ids: Sequence[int] | None = None
    ) -> list[Candidate]:
        """Listed entries of every held log whose ``active`` key equals a value's.

        A key may be shared by two values: the caller checks each candidate's
        stored signal type and value. ``log_ids``: only these logs (default: all).
        """
        if not values:
            return []
        keys = numpy.array(active_keys((signal_type, v) for v in values), dtype=numpy.int64)
        return self.key_candidates(keys, log_ids)

    def key_candidates(
        self, keys: numpy.ndarray[Any, Any], log_ids: Sequence[int] | None = None
    ) -> list[Candidate]:
        """:meth:`exact_candidates` of ``active`` keys already computed (position = key's)."""
        if not len(keys) or (log_ids is not None and not log_ids):
            return []
        # Sorted, the seeks walk the index in order and reuse the pages just
        # read (about a third faster on a million listed hashes). Keys in
        # bulk and sorted by numpy: no Python work per value but the hash.
        order = numpy.argsort(keys, kind="stable")
        positions: list[int] = order.tolist()
        wanted = json.dumps(keys[order].tolist())
        rows = (
            self.conn.execute(_EXACT, (wanted,))
            if log_ids is None
            else self.conn.execute(_EXACT_IN, (json.dumps(sorted(log_ids)), wanted))
        )
        return [
            Candidate(positions[at], int(log_id), int(idx), bytes(data))
            for at, log_id, idx, data in rows
        ]

    def still_listed(self, rows: numpy.ndarray[Any, Any]) -> list[Candidate]:
        """Which candidate rows are in ``active`` now, with their entries.

        ``rows``: an ``(n, 4)`` integer array of (position, log id, active
        key, entry index), e.g. found in a file that may predate a retraction.
        """
        return self._rows_kept(_STILL_LISTED, rows)

    def unretracted(self, rows: numpy.ndarray[Any, Any]) -> list[Candidate]:
        """Which rows of ``active`` as it was (e.g. in a file) are still listed, with their entries.

        ``rows`` as for :meth:`still_listed`; each must have been an
        ``active`` row: only a retraction removes such a row.
        """
        return self._rows_kept(_UNRETRACTED, rows)

    def _rows_kept(self, sql: str, rows: numpy.ndarray[Any, Any]) -> list[Candidate]:
        """The rows of an ``(n, 4)`` candidate array that ``sql`` keeps, with their entries."""
        if not len(rows):
            return []
        return [
            Candidate(int(position), int(log_id), int(idx), bytes(data))
            for position, log_id, idx, data in self.conn.execute(sql, (json.dumps(rows.tolist()),))
        ]

    def add_identities(
        self, log_id: int, start: int, end: int
    ) -> tuple[list[int], list[tuple[str, str]]]:
        """Entries of one log in [start, end) that name a signal: indexes and (type, value).

        Read in SQLite (``json_extract``, no Python parse per entry). Every
        add has a signal; so may other entries: callers treat these as
        candidates only.
        """
        indexes: list[int] = []
        identities: list[tuple[str, str]] = []
        for idx, signal_type, value in self.conn.execute(
            "SELECT idx, json_extract(CAST(data AS TEXT), '$.signal.type'), "
            "json_extract(CAST(data AS TEXT), '$.signal.value') FROM entries "
            "WHERE log_id = ? AND idx >= ? AND idx < ?",
            (log_id, start, end),
        ):
            if isinstance(signal_type, str) and isinstance(value, str):
                indexes.append(idx)
                identities.append((signal_type, value))
        return indexes, identities

    def entries_at(self, log_id: int, indexes: Iterable[int]) -> dict[int, bytes]:
        """The exact bytes of entries of one log, by index (missing ones left out)."""
        wanted = json.dumps(sorted(set(indexes)))
        return {
            int(idx): bytes(data) for idx, data in self.conn.execute(_ENTRIES, (wanted, log_id))
        }

    def listed_among(self, log_id: int, keyed: Iterable[tuple[int, int]]) -> set[int]:
        """Which of (active key, index) pairs of one log are listed now, by index."""
        pairs = json.dumps([[key, idx] for key, idx in keyed])
        return {int(idx) for (idx,) in self.conn.execute(_ACTIVE, (pairs, log_id))}

    def opinions_about(self, targets: Iterable[tuple[str, int]]) -> list[OpinionRow]:
        """Every opinion entry of any held log about the (origin, index) targets."""
        wanted = sorted(set(targets))
        if not wanted or self.conn.execute("SELECT 1 FROM opinions LIMIT 1").fetchone() is None:
            return []
        return [
            OpinionRow(str(a), int(i), str(to), int(ti), bytes(th), str(v), bytes(d))
            for a, i, to, ti, th, v, d in self.conn.execute(_OPINIONS, (json.dumps(wanted),))
        ]

    def pdq_after(self, log_id: int, after: int, limit: int) -> list[tuple[int, bytes, int]]:
        """Listed PDQ hashes of one log with index > ``after``: ``(index, hash, quality)``.

        By index, at most ``limit``. The quality is read from the entry itself
        (in SQLite, no Python parse per row).
        """
        return [
            (int(idx), bytes(h), int(q))
            for idx, h, q in self.conn.execute(
                "SELECT p.idx, p.hash, json_extract(CAST(e.data AS TEXT), '$.signal.quality') "
                "FROM pdq AS p JOIN entries AS e ON e.log_id = p.log_id AND e.idx = p.idx "
                "WHERE p.log_id = ? AND p.idx > ? ORDER BY p.idx LIMIT ?",
                (log_id, after, limit),
            )
        ]

    def pdq_count_after(self, log_id: int, after: int, limit: int) -> int:
        """Listed PDQ hashes of one log with index > ``after``, counted up to ``limit``.

        Reads at most ``limit`` index entries: a bounded cost however large the table.
        """
        return int(
            self.conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM pdq WHERE log_id = ? AND idx > ? LIMIT ?)",
                (log_id, after, limit),
            ).fetchone()[0]
        )

    def pdq_count(self) -> int:
        """Number of listed PDQ hashes over every held log."""
        return int(self.conn.execute("SELECT count(*) FROM pdq").fetchone()[0])

    def cosignature_lines(self, log_id: int, size: int) -> list[str]:
        """Witness cosignature lines stored for a checkpoint, in a stable order."""
        return [
            str(line)
            for (line,) in self.conn.execute(
                "SELECT line FROM cosignatures WHERE log_id = ? AND size = ? "
                "ORDER BY witness, key_id",
                (log_id, size),
            )
        ]
