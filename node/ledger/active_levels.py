"""When the two levels of ``active`` are merged, and the merge itself.

Layer: node.ledger. Performs SQLite I/O through the :class:`LedgerStore` it is given.

Schema version 7 (:mod:`node.storage.schema`) keeps the listed hashes in two
tables of one layout: ``active``, which every new row goes to, and
``active_base``, which holds the rows merged so far. ``active`` is a B-tree
with a random key, so a batch of ``b`` new rows dirties about
``min(b, pages of the table)`` pages; kept small, it costs an import what it
cost a fresh node, whatever the node holds. A merge moves its rows into
``active_base`` in key order, :data:`MERGE_CHUNK_ROWS` per transaction, so
each page of the base is written once per merge (not once per import) and
the write lock is never held for long. SQLite stays the only holder of the
rows; ``index/active.seg`` stays a derived accelerator.

A merge is due when ``active`` holds more than :func:`merge_bound` rows:
``max(MERGE_MIN_ROWS, entries held // MERGE_SHARE)``. The bound sets both
costs (docs/benchmarks.md, *``active`` in two levels*): a batch
dirties at most the small level's pages, and a merge rewrites the base once
per ``bound`` new rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.storage.ledger_store import LedgerStore

__all__ = [
    "MERGE_CHUNK_ROWS",
    "MERGE_MIN_ROWS",
    "MERGE_SHARE",
    "SYNC_CHECK_ROWS",
    "MergeResult",
    "merge_active",
    "merge_active_if_due",
    "merge_bound",
]

log = logging.getLogger(__name__)

MERGE_MIN_ROWS = 1_000_000
"""``active`` is merged only beyond this many rows (about 20 MB: it stays in the writer's cache)."""

MERGE_SHARE = 16
"""... or beyond this share of the entries held (1/16), whichever is larger."""

MERGE_CHUNK_ROWS = 262_144
"""Rows moved per transaction of a merge (the write lock is released in between)."""

SYNC_CHECK_ROWS = 131_072
"""A sync looks whether a merge is due after this many new rows (counting scans ``active``)."""


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What one merge moved.

    Attributes:
        rows: rows moved from ``active`` into ``active_base``.
        chunks: transactions it took.
        seconds: wall time of the merge.
    """

    rows: int
    chunks: int
    seconds: float


def merge_bound(store: LedgerStore) -> int:
    """Rows ``active`` may hold before a merge is due (see the module docstring)."""
    held = sum(store.entry_count(record.log_id) for record in store.list_logs())
    return max(MERGE_MIN_ROWS, held // MERGE_SHARE)


def merge_active(
    store: LedgerStore,
    *,
    chunk_rows: int = MERGE_CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
) -> MergeResult:
    """Move every row of ``active`` into ``active_base``, one chunk per transaction.

    Each chunk is one transaction (rows leave one level and enter the other
    in the same commit), so a crash at any point loses and doubles nothing:
    the rows of an unfinished chunk are still in ``active``. Writers may
    append between chunks; their new rows are merged too if they sort after
    the chunk boundary, else by the next merge. ``progress`` is told the
    rows moved so far after each committed chunk.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    began = time.perf_counter()
    rows = chunks = 0
    while True:
        moved = store.merge_active_rows(chunk_rows)
        rows += moved
        chunks += 1
        if progress is not None:
            progress(rows)
        if moved < chunk_rows:
            break
    return MergeResult(rows, chunks, time.perf_counter() - began)


def merge_active_if_due(store: LedgerStore, *, every: int = 0) -> MergeResult | None:
    """Merge the levels of ``active`` if the small one holds more than :func:`merge_bound` rows.

    Call after an import or a sync chunk has committed; inside a
    transaction nothing is done. ``every``: look only once this store has
    written that many ``active`` rows since it last looked (0: always).
    Returns what was merged, or None if no merge was due.
    """
    if store.conn.in_transaction or store.active_rows_written - store.active_rows_checked < every:
        return None
    store.active_rows_checked = store.active_rows_written
    bound = merge_bound(store)
    if store.unmerged_active_rows(bound + 1) <= bound:
        return None
    result = merge_active(store)
    log.info(
        "active merged: %d rows into active_base in %d transactions (%.1f s)",
        result.rows,
        result.chunks,
        result.seconds,
    )
    return result
