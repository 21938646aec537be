"""Exact look-ups from a memory-mapped, sorted array of ``active`` keys.

Layer: node.ledger. Reads through :mod:`node.storage`; writes only its own
index file (:mod:`node.storage.segment_file`).

An exact look-up of a batch used to be one SQLite seek in the ``active``
B-tree per hash and per log: at 10M entries about 3.5 µs each, a third of a
worker's CPU per 10,000-hash request (docs/benchmarks.md). Nearly every
hash of a bulk request is not listed, so nearly all of those seeks find
nothing. Here the node keeps, in ``index/active.seg``, every ``active`` row
of every held log at the time it was written, sorted by key: the keys
(int64), each row's log id and entry index. A batch of keys is looked up
with two ``numpy.searchsorted`` calls over the mapped keys (C, a few
milliseconds for 10,000 keys at 10M rows, pages shared through the page
cache by every process that maps the file). Only the keys found become
SQLite work.

The file covers, per log, the entries below ``covered`` (tied to the log by
the leaf hash of entry ``covered - 1``, like the other index files). Beyond
it, each process reads the identities of the newer entries into an
in-memory sorted tail (``json_extract`` in SQLite, one range read of
``entries`` by index, at most :data:`TAIL_STEP` entries per batch). Both
give *candidates*; every candidate is then checked against the ``active``
table itself (one seek on its full primary key) and read with its entry, in
one statement. So:

* a retraction committed after the file was written is honoured at once
  (its ``active`` row is gone), and so is a duplicate add that never got a
  row;
* every ``active`` row with an index below ``covered`` was in ``active``
  when the file was written (rows of old entries are only ever deleted;
  ``fsck --repair``, which rebuilds the table, rebuilds this file after it),
  and every newer one is an add read into the tail: nothing listed is
  missed;
* a log the file does not cover, or whose tail is not read up to the
  snapshot yet, is answered by the SQLite seeks as before.

The results are exactly those of the SQLite path (tests/node/test_active_index.py
compares them). A file failing any check at open (header, every block's
CRC, the tie to each log) is logged and not used: every log is then
answered by SQLite until a valid file appears (``hashmesh serve`` writes a
new one in the background when the tails grow large, ``hashmesh index
build`` and ``fsck --repair`` write one on request).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from node.config import NodeConfig
from node.storage.ledger_store import LedgerStore
from node.storage.match_store import Candidate, MatchStore
from node.storage.schema import active_keys
from node.storage.segment_file import (
    INDEX_DIR,
    Segment,
    SegmentError,
    file_identity,
    open_segment,
    remove_stale_temporaries,
    write_segment,
)

__all__ = [
    "ACTIVE_FILE",
    "AUTO_BUILD_MAX",
    "PERSIST_MIN_ENTRIES",
    "TAIL_STEP",
    "ActiveKeyIndex",
    "active_file_due",
    "active_index_path",
    "active_persist_due",
    "build_active_file",
    "check_active_file",
    "persist_active_file_if_due",
]

log = logging.getLogger("hashmesh.index")

ACTIVE_FILE = "active.seg"
"""The sorted ``active`` keys, in :data:`INDEX_DIR`."""

TAIL_STEP = 250_000
"""Most entries beyond the file one batch reads into a process's tail (about 0.4 s)."""

PERSIST_MIN_ENTRIES = 500_000
"""Fewest entries beyond the file that make a new file worth writing."""

AUTO_BUILD_MAX = 20_000_000
"""Most entries held for ``serve`` to write the first file by itself (beyond:
``hashmesh index build``, which an operator runs when the machine can spare
the minutes of CPU and the gigabytes of memory a build takes at that size)."""

_KIND = "active-keys"
_NO_KEYS: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)


def active_index_path(node_dir: Path) -> Path:
    """Where a node's sorted ``active`` key file lives."""
    return node_dir / INDEX_DIR / ACTIVE_FILE


_FENCE = 256
"""Rows per fence: the first search is over every 256th key (8 KiB per 2M rows, cached)."""


class _Rows:
    """Rows sorted by key: key, log id, entry index (three parallel arrays).

    A binary search of 10,000 keys over a mapped array of 10M is bound by
    memory latency (each key touches about 23 pages: 18 ms measured). So the
    keys are searched first in a small copy of every :data:`_FENCE`-th key,
    then within one block of :data:`_FENCE` rows (one or two pages), by a
    bisection that moves every key at once (8 numpy steps).
    """

    def __init__(
        self,
        keys: npt.NDArray[np.int64] = _NO_KEYS,
        logs: npt.NDArray[Any] = _NO_KEYS,
        indexes: npt.NDArray[Any] = _NO_KEYS,
    ) -> None:
        self.keys, self.logs, self.indexes = keys, logs, indexes
        self.fence = np.ascontiguousarray(keys[::_FENCE])

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Rows whose key is one of ``keys``: an ``(n, 4)`` array (position, log, key, index).

        ``keys`` must be sorted; rows come in key order.
        """
        n = len(self.keys)
        if not n or not len(keys):
            return np.empty((0, 4), dtype=np.int64)
        # First row >= key: after the fence before it, at or before the fence at or after it.
        block = np.searchsorted(self.fence, keys, side="left")
        lo = np.maximum(block - 1, 0) * _FENCE
        hi = np.minimum(block * _FENCE, n)
        while True:
            open_ = lo < hi
            if not open_.any():
                break
            mid = (lo + hi) >> 1
            below = open_ & (self.keys[np.minimum(mid, n - 1)] < keys)
            lo = np.where(below, mid + 1, lo)
            hi = np.where(open_ & ~below, mid, hi)
        hit = np.flatnonzero(lo < n)
        hit = hit[self.keys[lo[hit]] == keys[hit]]
        if not len(hit):
            return np.empty((0, 4), dtype=np.int64)
        # Runs of equal keys (a key shared by two logs or two values) are rare and short.
        positions, rows = [hit], [lo[hit]]
        step = 1
        while True:
            at = lo[hit] + step
            more = at < n
            hit, at = hit[more], at[more]
            same = self.keys[at] == keys[hit]
            hit, at = hit[same], at[same]
            if not len(hit):
                break
            positions.append(hit)
            rows.append(at)
            step += 1
        position = np.concatenate(positions)
        row = np.concatenate(rows)
        order = np.lexsort((row, position))
        position, row = position[order], row[order]
        out = np.empty((len(row), 4), dtype=np.int64)
        out[:, 0] = position
        out[:, 1] = self.logs[row]
        out[:, 2] = self.keys[row]
        out[:, 3] = self.indexes[row]
        return out


@dataclass
class _Base:
    rows: _Rows = field(default_factory=lambda: _Rows())
    covered: dict[int, int] = field(default_factory=dict)  # log id -> entries covered
    segment: Segment | None = None


def _open_base(store: LedgerStore, path: Path) -> _Base:
    """Map the file after every check (header, block CRCs, tie to each log).

    Raises:
        FileNotFoundError: there is no file.
        SegmentError: the file fails a check (one line naming it).
    """
    segment = open_segment(path, _KIND)
    try:
        problem = segment.verify()
        if problem is not None:
            raise SegmentError(problem)
        meta = segment.meta
        covered: dict[int, int] = {}
        for item in meta["logs"]:
            log_id, size = int(item["log_id"]), int(item["covered"])
            if size and store.leaf_hash_at(log_id, size - 1) != bytes.fromhex(item["last_leaf"]):
                raise SegmentError(
                    f"{path}: stale: entry {size - 1} of log {log_id} is not the one it indexed"
                )
            covered[log_id] = size
        rows = _Rows(segment.array("keys"), segment.array("logs"), segment.array("indexes"))
        n = int(meta["rows"])
        if not len(rows.keys) == len(rows.logs) == len(rows.indexes) == n:
            raise SegmentError(f"{path}: holds {len(rows.keys)} rows, not {n}")
        if n and not set(np.unique(rows.logs).tolist()) <= set(covered):
            raise SegmentError(f"{path}: holds rows of a log it does not cover")
    except (KeyError, TypeError, ValueError, SegmentError) as e:
        segment.close()
        if isinstance(e, SegmentError):
            raise
        raise SegmentError(f"{path}: malformed header ({e})") from e
    return _Base(rows, covered, segment)


class ActiveKeyIndex:
    """The mapped key file and this process's tail, answering exact look-ups.

    Read-only: it never writes the file (:func:`build_active_file` does).
    Thread-safe (one lock). Call :meth:`candidates` inside the read snapshot
    of the batch: the tail is brought up to that snapshot first.

    Args:
        path: the file (None: no file, the tail only).
        tail_step: most entries read into the tail per batch.
    """

    def __init__(self, path: Path | None, *, tail_step: int = TAIL_STEP) -> None:
        self.path = path
        self.tail_step = tail_step
        self._lock = threading.Lock()
        self._base = _Base()
        self._identity: tuple[int, int, int, int] | None = None
        self._tail = _Rows()
        self._read: dict[int, int] = {}  # log id -> entries read (base and tail)

    @property
    def base_rows(self) -> int:
        """Rows held in the mapped file (0: none mapped)."""
        return len(self._base.rows.keys)

    @property
    def tail_rows(self) -> int:
        """Candidate rows read into the tail."""
        return len(self._tail.keys)

    def covered(self) -> dict[int, int]:
        """Per log id, the entries the mapped file covers."""
        return dict(self._base.covered)

    def _attach(self, store: LedgerStore) -> None:
        """Map the file if it appeared or was replaced; drop it if it went away (lock held)."""
        if self.path is None:
            return
        identity = file_identity(self.path)
        if identity == self._identity:
            return
        self._identity = identity
        try:
            base = _open_base(store, self.path) if identity is not None else _Base()
        except (FileNotFoundError, SegmentError) as e:
            log.warning("active key index file not used, exact look-ups read SQLite: %s", e)
            base = _Base()
        old, self._base = self._base, base
        # The tail keeps only what the new base does not cover; a log the new
        # base covers less of than the old one is read again from there.
        keep = np.ones(len(self._tail.keys), dtype=bool)
        for log_id in old.covered.keys() | base.covered.keys():
            now, before = base.covered.get(log_id, 0), old.covered.get(log_id, 0)
            mine = self._tail.logs == log_id
            if now < before:
                keep &= ~mine
                self._read[log_id] = now
            else:
                keep &= ~(mine & (self._tail.indexes < now))
                self._read[log_id] = max(self._read.get(log_id, 0), now)
        self._tail = _Rows(self._tail.keys[keep], self._tail.logs[keep], self._tail.indexes[keep])
        if old.segment is not None:
            old.segment.close()

    def _extend(self, matching: MatchStore, log_id: int, size: int) -> bool:
        """Read the log's newer entries into the tail, up to ``tail_step``; whether all read."""
        start = self._read.get(log_id, 0)
        if start >= size:
            return True
        end = min(size, start + self.tail_step)
        indexes, identities = matching.add_identities(log_id, start, end)
        if indexes:
            keys = np.array(active_keys(identities), dtype=np.int64)
            merged_keys = np.concatenate([self._tail.keys, keys])
            merged_logs = np.concatenate(
                [self._tail.logs, np.full(len(keys), log_id, dtype=np.int64)]
            )
            merged_indexes = np.concatenate([self._tail.indexes, np.array(indexes, dtype=np.int64)])
            order = np.argsort(merged_keys, kind="stable")
            self._tail = _Rows(merged_keys[order], merged_logs[order], merged_indexes[order])
        self._read[log_id] = end
        return end >= size

    def candidates(
        self, store: LedgerStore, signal_type: str, values: list[str]
    ) -> list[Candidate]:
        """Listed entries of every held log whose ``active`` key equals a value's.

        The same rows as :meth:`MatchStore.exact_candidates` in the current
        read snapshot (which the caller holds), found from the file and the
        tail where they cover the log, from SQLite elsewhere.
        """
        matching = store.matching
        keys = np.array(active_keys((signal_type, v) for v in values), dtype=np.int64)
        with self._lock:
            self._attach(store)
            by_sql: list[int] = []
            fast: list[int] = []
            for log_id in sorted(matching.log_origins()):
                size = store.entry_count(log_id)
                if not size:
                    continue
                if (
                    self.path is not None
                    and log_id not in self._base.covered
                    and not self._read.get(log_id)
                    and size > self.tail_step
                ):
                    # A large log the file does not cover (yet): SQLite, not
                    # the whole log read into this process's memory.
                    by_sql.append(log_id)
                elif self._extend(matching, log_id, size):
                    fast.append(log_id)
                else:
                    by_sql.append(log_id)
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            in_base = self._base.rows.find(sorted_keys)
            in_tail = self._tail.find(sorted_keys)
        if by_sql:
            fast_logs = np.array(fast, dtype=np.int64)
            in_base = in_base[np.isin(in_base[:, 1], fast_logs)]
            in_tail = in_tail[np.isin(in_tail[:, 1], fast_logs)]
        in_base[:, 0] = order[in_base[:, 0]]
        in_tail[:, 0] = order[in_tail[:, 0]]
        # A row of the file was listed when it was written: it still is
        # unless retracted since. A row of the tail is any add read from the
        # log: listed only if it has its `active` row (a duplicate has none).
        result = matching.unretracted(in_base)
        result.extend(matching.still_listed(in_tail))
        if by_sql:
            result.extend(matching.key_candidates(keys, by_sql))
        return result

    def close(self) -> None:
        """Unmap the file (the object must not be used afterwards)."""
        with self._lock:
            segment = self._base.segment
            self._base = _Base()
            self._tail = _Rows()
            self._read = {}
        if segment is not None:
            segment.close()


def _uncovered(store: LedgerStore, covered: dict[int, int]) -> int:
    return sum(
        max(0, store.entry_count(log.log_id) - covered.get(log.log_id, 0))
        for log in store.list_logs()
    )


def active_persist_due(
    store: LedgerStore, path: Path, min_entries: int = PERSIST_MIN_ENTRIES
) -> bool:
    """Whether enough entries lie beyond the file to write a new one (``serve``).

    At least ``min_entries`` and an eighth of what the file holds: each
    process reads what lies beyond into memory, and a write reads every row.
    Without a usable file: when the node holds at least ``min_entries`` and
    at most :data:`AUTO_BUILD_MAX` entries.
    """
    try:
        segment = open_segment(path, _KIND)
    except FileNotFoundError:
        return min_entries <= _uncovered(store, {}) <= AUTO_BUILD_MAX
    except SegmentError:
        return _uncovered(store, {}) <= AUTO_BUILD_MAX
    try:
        covered = {int(i["log_id"]): int(i["covered"]) for i in segment.meta["logs"]}
        rows = int(segment.meta["rows"])
    except (KeyError, TypeError, ValueError):
        return True
    finally:
        segment.close()
    beyond = _uncovered(store, covered)
    return beyond >= min_entries and beyond * 8 >= rows


class _Ledger(Protocol):
    """What is used of a :class:`~node.ledger.service.Ledger` (not imported: fsck imports us)."""

    @property
    def store(self) -> LedgerStore: ...

    @property
    def config(self) -> NodeConfig: ...


def active_file_due(ledger: _Ledger) -> bool:
    """:func:`active_persist_due` for a node's own file (cheap: a header and a seek per log)."""
    return active_persist_due(
        ledger.store, active_index_path(ledger.config.node_dir), PERSIST_MIN_ENTRIES
    )


def persist_active_file_if_due(
    database_path: Path, path: Path, min_entries: int | None = None
) -> int | None:
    """:func:`build_active_file` if :func:`active_persist_due`; the rows written, or None.

    On a read-only connection of its own. ``hashmesh serve`` runs it in a
    child process (``python -m node.ledger.active_index DATABASE FILE``):
    reading every row holds the interpreter for seconds to minutes at size,
    and its arrays are not the server's memory.
    """
    store = LedgerStore.open(database_path, read_only=True)
    try:
        least = PERSIST_MIN_ENTRIES if min_entries is None else min_entries
        if not active_persist_due(store, path, least):
            return None
        return build_active_file(store, path)
    finally:
        store.close()


def build_active_file(store: LedgerStore, path: Path) -> int:
    """Write the key file from every ``active`` row of every held log; the rows written.

    One read snapshot: the rows, each log's size and the leaf hash tying the
    file to it are one committed state. The file is replaced atomically, so
    readers keep the old one until they next look (``hashmesh index build``,
    ``fsck --repair``, and ``hashmesh serve`` in the background).
    """
    remove_stale_temporaries(path)
    keys: list[npt.NDArray[np.int64]] = []
    logs: list[npt.NDArray[np.uint32]] = []
    indexes: list[npt.NDArray[np.int64]] = []
    meta_logs = []
    with store.read_snapshot():
        for record in store.list_logs():
            size = store.entry_count(record.log_id)
            if not size:
                continue
            idx, key = store.active_arrays(record.log_id)
            leaf = store.leaf_hash_at(record.log_id, size - 1)
            assert leaf is not None, "a log holds its last entry"
            keys.append(key)
            indexes.append(idx)
            logs.append(np.full(len(key), record.log_id, dtype=np.uint32))
            meta_logs.append(
                {
                    "log_id": record.log_id,
                    "origin": record.origin,
                    "covered": size,
                    "last_leaf": leaf.hex(),
                }
            )
    # Each log's rows come in primary-key order (key, then index): one log
    # (a large node) needs no copy and no sort; several are sorted by key
    # (stable: the order among equal keys does not matter to a search).
    if len(keys) == 1:
        all_keys, all_logs, all_indexes = keys[0], logs[0], indexes[0]
    else:
        all_keys = np.concatenate([_NO_KEYS, *keys])
        all_logs = np.concatenate([np.empty(0, dtype=np.uint32), *logs])
        all_indexes = np.concatenate([_NO_KEYS, *indexes])
    del keys, logs, indexes
    if len(all_keys) > 1 and not bool(np.all(all_keys[1:] >= all_keys[:-1])):
        order = np.argsort(all_keys, kind="stable")
        all_keys, all_logs, all_indexes = all_keys[order], all_logs[order], all_indexes[order]
        del order
    index_type = np.uint32 if not len(all_indexes) or all_indexes.max() < 2**32 else np.int64
    write_segment(
        path,
        _KIND,
        {"rows": len(all_keys), "logs": meta_logs},
        {"keys": all_keys, "logs": all_logs, "indexes": all_indexes.astype(index_type)},
    )
    return len(all_keys)


def check_active_file(store: LedgerStore, path: Path) -> str | None:
    """Check the key file against the ``active`` table; a problem in one line, or None.

    Everything a reader checks at open (header, every block's CRC, the tie
    to each log), then the rows, per covered log: every ``active`` row of an
    entry below ``covered`` must be in the file, and a row of the file not
    in ``active`` must be a retracted add. No file is no problem.
    """
    try:
        base = _open_base(store, path)
    except FileNotFoundError:
        return None
    except SegmentError as e:
        return str(e)
    try:
        rows = base.rows
        for log_id, size in sorted(base.covered.items()):
            problem = _check_log_rows(store, path, rows, log_id, size)
            if problem is not None:
                return problem
        return None
    finally:
        if base.segment is not None:
            base.segment.close()


_IN_FILE = 1  # the file holds a row of the entry
_IN_TABLE = 2  # so does the active table
_CHECK_ROWS = 1 << 20  # file rows looked at a time


def _check_log_rows(
    store: LedgerStore, path: Path, rows: _Rows, log_id: int, size: int
) -> str | None:
    """One covered log's rows of the file against its ``active`` rows (below ``size``).

    Nine bytes an entry of the log (a flag and the file's key of each
    entry), the file read where it is mapped and the table a chunk at a
    time: a 100M-entry log is checked in 0.9 GB, not in copies of both.
    """
    flags = np.zeros(size, dtype=np.uint8)
    file_keys = np.zeros(size, dtype=np.int64)
    for lo in range(0, len(rows), _CHECK_ROWS):
        mine = np.asarray(rows.logs[lo : lo + _CHECK_ROWS], dtype=np.int64) == log_id
        idx = np.asarray(rows.indexes[lo : lo + _CHECK_ROWS], dtype=np.int64)[mine]
        if len(idx) and (int(idx.max()) >= size or int(idx.min()) < 0):
            return f"{path}: holds rows of log {log_id} beyond what it covers"
        ordered = np.sort(idx)
        if bool(np.any(ordered[1:] == ordered[:-1])) or bool(np.any(flags[idx])):
            return f"{path}: holds entry of log {log_id} twice"
        flags[idx] = _IN_FILE
        file_keys[idx] = np.asarray(rows.keys[lo : lo + _CHECK_ROWS])[mine]
    lacking: int | None = None
    for idx, key in store.active_chunks(log_id):
        below = (idx >= 0) & (idx < size)
        idx, key = idx[below], key[below]
        present = ((flags[idx] & _IN_FILE) != 0) & (file_keys[idx] == key)
        if not bool(np.all(present)):
            first = int(idx[~present].min())
            lacking = first if lacking is None else min(lacking, first)
        flags[idx] |= _IN_TABLE
    if lacking is not None:
        return f"{path}: lacks the active row of entry {lacking} of log {log_id}"
    del file_keys
    retracted: npt.NDArray[np.int64] | None = None
    for lo in range(0, size, _CHECK_ROWS):
        gone = np.flatnonzero(flags[lo : lo + _CHECK_ROWS] == _IN_FILE) + lo
        if not len(gone):
            continue
        if retracted is None:
            retracted = np.array(
                sorted(t for t, _by in store.derived_rows(log_id, "retractions")),
                dtype=np.int64,
            )
        stray = np.setdiff1d(gone, retracted, assume_unique=True)
        if len(stray):
            return (
                f"{path}: holds entry {int(stray[0])} of log {log_id}, "
                "which is neither listed nor retracted"
            )
    return None


def _main(argv: list[str]) -> int:
    """``python -m node.ledger.active_index DATABASE FILE [MIN_ENTRIES]``: write it if due.

    Prints the rows written, or nothing when no file was due.
    """
    least = int(argv[3]) if len(argv) > 3 else None
    rows = persist_active_file_if_due(Path(argv[1]), Path(argv[2]), least)
    if rows is not None:
        print(rows)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv))
