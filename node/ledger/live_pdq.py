"""The node's PDQ index: a memory-mapped base segment on disk plus an in-memory tail.

Layer: node.ledger. Reads the ``pdq`` table through :mod:`node.storage`;
files through :mod:`node.storage.segment_file`.

Rebuilding the index from the ``pdq`` table at every start cost 22 s at 10M
hashes (and 14 s more to read each row's quality from its entry). Instead the
index lives in one file beside the database, ``index/pdq.seg``, an immutable
*base segment*: the near-match :class:`~node.ledger.pdq_index.PdqIndex`
(hashes, ids, per-chunk permutations and bucket directories) and the
exact-only rows (below the quality floor) as a
:class:`~node.ledger.pdq_index.SortedHashes`, plus what it covers: per log,
the last ``pdq`` row included and the leaf hash of that entry. Opening maps
the file (nothing is read but its header), checks that each covered log still
has that leaf hash at that index, and reads only the rows beyond it from
SQLite into an in-memory *tail*. Every query searches both.

When the tail grows large next to the base (:meth:`LivePdqIndex.persist_due`),
the serving process writes a new base of every row (a background thread:
temporary file, fsync, atomic rename) and swaps it in; rows that arrived
meanwhile stay in the tail. Other processes that mapped the old file keep a
valid mapping and switch at their next :meth:`LivePdqIndex.refresh`.

A process that reads the same table beside the serving one (a match worker
of ``serve``) would, at a first start without the file, read every row
itself: at 100M entries 20M rows, minutes of CPU per process, while the
server reads them too. Such a reader is given ``read_max``
(``[match] worker_read_max``): when more rows than that lie beyond the
base, and the serving process will write a new base for them (the same
rule as :meth:`LivePdqIndex.persist_due`), :meth:`LivePdqIndex.refresh`
reads nothing and raises :class:`~node.errors.IndexPendingError` (the API
answers 503 with ``Retry-After``), until the new file is there to map.

A file that fails a check (bad magic or header checksum, short, another
format version or index layout (:data:`~node.ledger.pdq_index.LAYOUT`),
another quality floor, a covered log whose leaf hash changed) is never
used: the index logs one line and is rebuilt from the table; a writable
opener removes the file. Damage deep inside a large file is found by the
block checksums (:meth:`LivePdqIndex.verify`), which ``hashmesh
fsck`` and the serving process (once after each open) run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from node.config import DEFAULT_MIN_QUALITY, NodeConfig
from node.errors import IndexPendingError
from node.ledger.pdq_index import LAYOUT, PdqIndex, SortedHashes, hashes_to_words
from node.storage.ledger_store import LedgerStore
from node.storage.match_store import MatchStore
from node.storage.segment_file import (
    INDEX_DIR,
    Segment,
    SegmentError,
    file_identity,
    open_segment,
    remove_stale_temporaries,
    write_segment,
)


class _Ledger(Protocol):
    """What is used of a :class:`~node.ledger.service.Ledger` (not imported: fsck imports us)."""

    @property
    def store(self) -> LedgerStore: ...

    @property
    def config(self) -> NodeConfig: ...


__all__ = [
    "ID_SHIFT",
    "INDEX_DIR",
    "LOAD_CHUNK",
    "PDQ_FILE",
    "PENDING_RECHECK",
    "PENDING_RETRY_AFTER",
    "PERSIST_MIN_ROWS",
    "LivePdqIndex",
    "build_pdq_file",
    "check_pdq_file",
    "node_pdq_index",
    "open_pdq_index",
    "pdq_index_path",
    "pdq_rows_beyond_file",
]

log = logging.getLogger("hashmesh.index")

PDQ_FILE = "pdq.seg"
"""The PDQ index's base segment, in :data:`INDEX_DIR`."""

LOAD_CHUNK = 100_000
"""PDQ rows read per step while (re)loading the index."""

PERSIST_MIN_ROWS = 100_000
"""Fewest tail rows that make a new base worth writing (see :meth:`LivePdqIndex.persist_due`)."""

PENDING_RETRY_AFTER = 30
"""``Retry-After`` seconds of a PDQ request answered 503 while a reader waits for a new base."""

PENDING_RECHECK = 10.0
"""Seconds a waiting reader trusts its count of rows beyond the base (a new file: at once)."""

ID_SHIFT = 40
"""Row ids are ``(log_id << ID_SHIFT) | entry index``: 2**40 entries per log."""

_KIND = "pdq-index"
_NEAR_ARRAYS = ("words", "ids", "perm", "present", "rank", "starts", "order")
_EXACT_ARRAYS = ("columns", "ids")


def pdq_index_path(node_dir: Path) -> Path:
    """Where the PDQ index's base segment of a node lives."""
    return node_dir / INDEX_DIR / PDQ_FILE


@dataclass
class _Base:
    """An immutable set of rows: mapped from a file, or empty."""

    near: PdqIndex = field(default_factory=PdqIndex)
    exact: SortedHashes = field(
        default_factory=lambda: SortedHashes(
            np.empty((4, 0), dtype=np.uint64), np.empty(0, dtype=np.int64)
        )
    )
    covered: dict[int, int] = field(default_factory=dict)  # log id -> last pdq row index
    segment: Segment | None = None

    def __len__(self) -> int:
        return len(self.near) + len(self.exact)

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The arrays a base segment file holds."""
        arrays = {f"near.{k}": v for k, v in self.near.to_arrays().items()}
        arrays.update({f"exact.{k}": v for k, v in self.exact.to_arrays().items()})
        return arrays


def _merge(
    base: _Base,
    near_ids: npt.NDArray[np.int64],
    near_words: npt.NDArray[np.uint64],
    exact_ids: npt.NDArray[np.int64],
    exact_words: npt.NDArray[np.uint64],
    covered: dict[int, int],
) -> _Base:
    """A new in-memory base of a base's rows and tail rows (directories built once)."""
    base_ids, base_words = base.near.rows()
    near = PdqIndex.build(
        np.concatenate([base_ids, near_ids]), np.concatenate([base_words, near_words])
    )
    del base_ids, base_words
    old_exact_ids, old_exact_words = base.exact.rows()
    exact = SortedHashes.build(
        np.concatenate([old_exact_ids, exact_ids]), np.concatenate([old_exact_words, exact_words])
    )
    return _Base(near, exact, covered)


class LivePdqIndex:
    """Every row of the ``pdq`` table, searchable: a mapped base plus an in-memory tail.

    Rows are read by ``(log, index > last read index)``: an entry appended to
    any log (own or replicated) has a larger index than every row already
    read from that log, so nothing is missed and nothing read twice.
    Retracted rows stay in the index; :func:`~node.ledger.matching.match`
    filters them out.

    PDQ quality is used as Meta's tools use it: a stored hash below
    ``min_quality`` (near-degenerate: blank or flat images) goes to the
    exact-only rows, searched at distance 0 only (a binary search), so exact
    look-ups still find it but it never near-matches (nor fills a near-match
    query's candidates); a query below it is looked up the same way
    (:meth:`near_allowed`).

    Reading and indexing are separate steps: :meth:`read_step` collects rows
    in chunks (so a server can interleave them with requests), and
    :meth:`flush` adds everything collected to the tail in one call (the
    index builds its bucket directories once for a bulk add).

    Made empty (in memory only, as tests and benchmarks use it) or by
    :func:`open_pdq_index` / :meth:`attach` with a node's index directory.
    The methods may run in any thread; concurrent calls are serialised.
    """

    def __init__(
        self,
        min_quality: int = DEFAULT_MIN_QUALITY,
        *,
        path: Path | None = None,
        writable: bool = False,
    ) -> None:
        self.min_quality = min_quality
        self.path = path
        self.writable = writable and path is not None
        self.persist_min = PERSIST_MIN_ROWS
        self.read_max: int | None = None
        """Most rows beyond the base :meth:`refresh` reads when the serving
        process would write a new base for them (None: every row). The
        serving process's own index holds the same value: it then writes a
        base whenever more lie beyond (:meth:`persist_due`)."""
        self._waiting: tuple[tuple[int, int, int, int] | None, float, str] | None = None
        self._base = _Base()
        self._near = PdqIndex()
        self._exact_ids: list[npt.NDArray[np.int64]] = []
        self._exact_words: list[npt.NDArray[np.uint64]] = []
        self._exact = SortedHashes.build(np.empty(0, np.int64), np.empty((0, 4), np.uint64))
        self._read: dict[int, int] = {}
        self._pending_ids: list[npt.NDArray[np.int64]] = []
        self._pending_hashes: list[bytes] = []
        self._pending_quality: list[npt.NDArray[np.int64]] = []
        self._lock = threading.Lock()
        self._persist_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._base) + len(self._near) + len(self._exact)

    @property
    def base_rows(self) -> int:
        """Rows held by the mapped base segment (0 when there is none)."""
        return len(self._base)

    @property
    def tail_rows(self) -> int:
        """Rows held in memory beyond the base."""
        return len(self._near) + len(self._exact)

    @property
    def segment(self) -> Segment | None:
        """The mapped base segment, if any."""
        return self._base.segment

    def near_allowed(self, quality: int | None) -> bool:
        """Whether a hash of this quality takes part in near-matching (None: unknown, yes)."""
        return quality is None or quality >= self.min_quality

    # -- the base segment ---------------------------------------------------------

    def attach(self, ledger: LedgerStore | _Ledger) -> bool:
        """Map the base segment if it is valid for this database; whether one is mapped now.

        Checks the file's header and, per covered log, the leaf hash of the
        last covered entry. A file failing a check is logged and left unused
        (removed when writable); rows then come from the ``pdq`` table. Also
        re-maps a file replaced since the last call (another process wrote a
        new base), dropping tail rows it covers.
        """
        store = ledger if isinstance(ledger, LedgerStore) else ledger.store
        if self.path is None:
            return False
        identity = file_identity(self.path)
        current = self._base.segment
        if identity is None:
            if current is not None:
                # Only a writer that found the file damaged removes it (a
                # new one replaces it atomically): stop using the mapping.
                self.drop_base(f"{self.path} was removed")
            return False
        if current is not None and current.identity == identity:
            return True
        if self.writable:
            remove_stale_temporaries(self.path)
        try:
            base = self._open_base(store)
        except SegmentError as e:
            log.warning("PDQ index file not used, rebuilding from the log: %s", e)
            if self.writable:
                self.path.unlink(missing_ok=True)
            return False
        self._swap_base(base)
        return True

    def _open_base(self, store: LedgerStore) -> _Base:
        assert self.path is not None
        try:
            segment = open_segment(self.path, _KIND)
        except FileNotFoundError as e:
            raise SegmentError(f"{self.path}: disappeared while opening") from e
        meta = segment.meta
        try:
            if meta.get("layout", 1) != LAYOUT:
                raise SegmentError(
                    f"{self.path}: index layout {meta.get('layout', 1)}, this program's is "
                    f"{LAYOUT} (written by another version)"
                )
            if meta.get("min_quality") != self.min_quality:
                raise SegmentError(
                    f"{self.path}: built with min_quality {meta.get('min_quality')}, "
                    f"the node's is {self.min_quality}"
                )
            origins = store.matching.log_origins()
            covered: dict[int, int] = {}
            for item in meta["covered"]:
                log_id, origin, after = int(item["log_id"]), str(item["origin"]), int(item["after"])
                if origins.get(log_id) != origin:
                    raise SegmentError(
                        f"{self.path}: covers log {origin}, not held as log {log_id}"
                    )
                if store.leaf_hash_at(log_id, after) != bytes.fromhex(item["leaf_hash"]):
                    raise SegmentError(
                        f"{self.path}: stale: entry {after} of {origin} is not the one it indexed"
                    )
                covered[log_id] = after
            near = PdqIndex.from_arrays({k: segment.array(f"near.{k}") for k in _NEAR_ARRAYS})
            exact = SortedHashes.from_arrays(
                {k: segment.array(f"exact.{k}") for k in _EXACT_ARRAYS}
            )
            if len(near) + len(exact) != meta["rows"]:
                raise SegmentError(
                    f"{self.path}: holds {len(near) + len(exact)} rows, not {meta['rows']}"
                )
        except (KeyError, TypeError, ValueError) as e:
            segment.close()
            raise SegmentError(f"{self.path}: malformed ({e})") from e
        except SegmentError:
            segment.close()
            raise
        return _Base(near, exact, covered, segment)

    def _swap_base(self, base: _Base, consumed: tuple[int, int] | None = None) -> None:
        """Make ``base`` the base; keep only the tail rows it does not hold.

        ``consumed``: the base was made here from the first that many near and
        exact-only tail rows (:meth:`persist`); otherwise (a file written by
        another process) the rows it holds are known by what it covers.
        """
        with self._lock:
            self._flush_locked()
            old = self._base
            # A base written by a process that was behind covers less of some
            # log than the one it replaces: those logs are read again from
            # their new coverage (their tail rows dropped, not kept twice).
            behind = {
                log_id
                for log_id, after in old.covered.items()
                if base.covered.get(log_id, -1) < after
            }
            for log_id in behind:
                self._read[log_id] = base.covered.get(log_id, -1)
            near_ids, near_words = self._near.rows()
            exact_ids = np.concatenate([np.empty(0, np.int64), *self._exact_ids])
            exact_words = np.concatenate([np.empty((0, 4), np.uint64), *self._exact_words])
            if consumed is not None:
                keep_near = np.arange(len(near_ids)) >= consumed[0]
                keep_exact = np.arange(len(exact_ids)) >= consumed[1]
            else:
                keep_near = _uncovered(near_ids, base.covered, behind)
                keep_exact = _uncovered(exact_ids, base.covered, behind)
            self._near = PdqIndex.build(near_ids[keep_near], near_words[keep_near])
            self._exact_ids = [exact_ids[keep_exact]]
            self._exact_words = [exact_words[keep_exact]]
            self._exact = SortedHashes.build(self._exact_ids[0], self._exact_words[0])
            for log_id, after in base.covered.items():
                if self._read.get(log_id, -1) < after:
                    self._read[log_id] = after
            self._base = base
        if old.segment is not None:
            old.segment.close()

    def persist_due(self) -> bool:
        """Whether the tail is large enough next to the base to write a new base."""
        return self.writable and self._base_due(self.tail_rows)

    def _base_due(self, beyond: int) -> bool:
        """Whether ``beyond`` rows past the base make a new base worth writing.

        At least ``persist_min`` and a quarter of the base; or more than
        ``read_max``, which readers do not read themselves.
        """
        if self.read_max is not None and beyond > self.read_max:
            return beyond * 4 >= len(self._base)
        return beyond >= self.persist_min and beyond * 4 >= len(self._base)

    def readers_wait(self) -> bool:
        """Whether readers with the same ``read_max`` wait for a new base (``/readyz``).

        True in the serving process from the moment it has read more rows
        beyond the base than they read themselves until the new base is
        written and mapped.
        """
        beyond = self.tail_rows
        return self.read_max is not None and beyond > self.read_max and self._base_due(beyond)

    def persist(
        self, store: LedgerStore | Path, *, before_rename: Callable[[Path], None] | None = None
    ) -> bool:
        """Write every row held (base and tail) as a new base segment and map it.

        Safe in a background thread while searches and adds go on: the lock
        is held only to copy the tail and to swap. The leaf hash of each
        covered log's last row ties the file to the log; it is read through
        ``store``, which must be usable from this thread, or a database path
        (a read-only connection of its own is opened then: a background
        thread must not hold the server's reader threads for seconds).

        Returns:
            False when the index has no file path or nothing to write.

        Raises:
            OSError: the file could not be written (nothing changed).
        """
        if self.path is None:
            return False
        if isinstance(store, Path):
            own = LedgerStore.open(store, read_only=True)
            try:
                return self.persist(own, before_rename=before_rename)
            finally:
                own.close()
        with self._persist_lock:
            with self._lock:
                self._flush_locked()
                covered = dict(self._read)
                base, tail = self._base, self._tail_rows()
            merged = _merge(base, *tail, covered)
            near, exact = merged.near, merged.exact
            origins = store.matching.log_origins()
            covered_meta = []
            for log_id, after in sorted(covered.items()):
                leaf = store.leaf_hash_at(log_id, after)
                if leaf is None or log_id not in origins:
                    # The log went away meanwhile: a base holding its rows
                    # uncovered would have them read twice after a restart.
                    log.warning("PDQ index not persisted: log %d changed while writing", log_id)
                    return False
                covered_meta.append(
                    {
                        "log_id": log_id,
                        "origin": origins[log_id],
                        "after": after,
                        "leaf_hash": leaf.hex(),
                    }
                )
            arrays = merged.arrays()
            write_segment(
                self.path,
                _KIND,
                {
                    "layout": LAYOUT,
                    "min_quality": self.min_quality,
                    "rows": len(near) + len(exact),
                    "covered": covered_meta,
                },
                arrays,
                before_rename=before_rename,
            )
            del near, exact, arrays, merged
            new_base = self._open_base(store)
            self._swap_base(new_base, (len(tail[0]), len(tail[2])))
            return True

    def _tail_rows(
        self,
    ) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.int64], npt.NDArray[np.uint64]
    ]:
        """Copies of the tail: near ids and words, exact-only ids and words (lock held)."""
        near_ids, near_words = self._near.rows()
        exact_ids = np.concatenate([np.empty(0, np.int64), *self._exact_ids])
        exact_words = np.concatenate([np.empty((0, 4), np.uint64), *self._exact_words])
        return near_ids, near_words, exact_ids, exact_words

    def compact(self) -> None:
        """Move every tail row into a new in-memory base, fully indexed (no file written).

        The search structure then is the one a persisted base has; benchmarks
        use it, and so may a process that never writes files.
        """
        with self._persist_lock, self._lock:
            self._flush_locked()
            self._base = _merge(self._base, *self._tail_rows(), dict(self._read))
            self._near = PdqIndex()
            self._exact_ids, self._exact_words = [], []
            self._exact = SortedHashes.build(np.empty(0, np.int64), np.empty((0, 4), np.uint64))

    def base_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The base's arrays, as a base segment file holds them."""
        return self._base.arrays()

    @classmethod
    def from_base_arrays(
        cls, arrays: dict[str, npt.NDArray[Any]], min_quality: int = DEFAULT_MIN_QUALITY
    ) -> LivePdqIndex:
        """An index whose base is these arrays (e.g. mapped from a file), covering no log.

        For benchmarks and tools that map a base segment written by
        :meth:`base_arrays`; a node's own file is opened by :meth:`attach`,
        which checks what it covers.
        """
        index = cls(min_quality)
        index._base = _Base(
            PdqIndex.from_arrays({k: arrays[f"near.{k}"] for k in _NEAR_ARRAYS}),
            SortedHashes.from_arrays({k: arrays[f"exact.{k}"] for k in _EXACT_ARRAYS}),
        )
        return index

    def verify(self) -> str | None:
        """Check every block of the mapped base against its checksum; a problem, or None."""
        segment = self._base.segment
        return None if segment is None else segment.verify()

    def drop_base(self, reason: str) -> None:
        """Stop using the base (damaged): log ``reason``; its rows are read again from the table."""
        log.warning("PDQ index file not used, rebuilding from the log: %s", reason)
        with self._lock:
            old = self._base
            self._base = _Base()
            self._near = PdqIndex()
            self._exact_ids, self._exact_words = [], []
            self._exact = SortedHashes.build(np.empty(0, np.int64), np.empty((0, 4), np.uint64))
            self._read = {}
            self._pending_ids, self._pending_hashes, self._pending_quality = [], [], []
        if old.segment is not None:
            old.segment.close()
        if self.writable and self.path is not None:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Drop the mapping of the base (the object must not be used afterwards)."""
        with self._lock:
            segment = self._base.segment
            self._base = _Base()
        if segment is not None:
            segment.close()

    # -- the tail -------------------------------------------------------------------

    def refresh(self, ledger: _Ledger) -> int:
        """Re-map a replaced base file, then read every new row; the number of rows added.

        Raises:
            IndexPendingError: ``read_max`` is set and more rows than that lie
                beyond the base, for which the serving process writes a new
                base (nothing was read; call again later).
        """
        self.attach(ledger)
        if self.read_max is not None and not self.writable:
            self._wait_if_far_behind(self.read_max, ledger.store.matching)
        return self.load(ledger.store.matching)

    def _wait_if_far_behind(self, read_max: int, matching: MatchStore) -> None:
        """Raise :class:`IndexPendingError` rather than read a table the server is indexing.

        Counting stops at ``read_max + 1`` rows (a second, longer count only
        when the base is large enough that the quarter rule matters); while
        waiting, the count is trusted for :data:`PENDING_RECHECK` seconds
        unless the file changed, so a stream of refused requests costs a
        ``stat`` each.
        """
        identity = None if self.path is None else file_identity(self.path)
        now = time.monotonic()
        waiting = self._waiting
        if waiting is not None and waiting[0] == identity and now < waiting[1]:
            raise IndexPendingError(waiting[2], retry_after=PENDING_RETRY_AFTER)
        self._waiting = None
        unread = self.unread_rows(matching, read_max + 1)
        if unread <= read_max:
            return
        quarter = -(-len(self._base) // 4) - self.tail_rows
        if quarter > unread:
            unread = self.unread_rows(matching, quarter)
        beyond = self.tail_rows + unread
        if not self._base_due(beyond):
            return
        message = (
            f"the PDQ index is being built: more than {read_max:,} PDQ hashes lie beyond "
            f"{self.path} ({len(self._base):,} in it), and this process waits for hashmesh "
            "serve to write the file rather than read them all itself; PDQ queries are "
            f"answered once it is written (retry in {PENDING_RETRY_AFTER} s), exact "
            "look-ups meanwhile"
        )
        self._waiting = (identity, now + PENDING_RECHECK, message)
        raise IndexPendingError(message, retry_after=PENDING_RETRY_AFTER)

    def unread_rows(self, matching: MatchStore, limit: int) -> int:
        """Rows beyond what this index has read, counted up to ``limit``."""
        with self._lock:
            read = dict(self._read)
        total = 0
        for log_id in sorted(matching.log_origins()):
            if total >= limit:
                break
            total += matching.pdq_count_after(log_id, read.get(log_id, -1), limit - total)
        return total

    def read_step(self, matching: MatchStore, limit: int = LOAD_CHUNK) -> int:
        """Collect up to ``limit`` new rows of one log; the number read (0: none left)."""
        with self._lock:
            for log_id in sorted(matching.log_origins()):
                after = self._read.get(log_id, -1)
                rows = matching.pdq_after(log_id, after, limit)
                if not rows:
                    continue
                base = log_id << ID_SHIFT
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                quality = np.fromiter((r[2] for r in rows), dtype=np.int64, count=len(rows))
                self._pending_ids.append(ids | base)
                self._pending_hashes.append(b"".join(r[1] for r in rows))
                self._pending_quality.append(quality)
                self._read[log_id] = rows[-1][0]
                return len(rows)
        return 0

    def flush(self) -> int:
        """Add every collected row to the tail; the number added."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        if not self._pending_ids:
            return 0
        ids = np.concatenate(self._pending_ids)
        hashes = np.frombuffer(b"".join(self._pending_hashes), dtype=np.uint8)
        quality = np.concatenate(self._pending_quality)
        self._pending_ids, self._pending_hashes, self._pending_quality = [], [], []
        self._add_locked(ids, hashes.reshape(len(ids), 32), quality)
        return len(ids)

    def add_rows(
        self, ids: npt.NDArray[np.int64], hashes: npt.NDArray[np.uint8], quality: npt.NDArray[Any]
    ) -> None:
        """Add rows directly: ``(n,)`` ids, ``(n, 32)`` hashes, ``(n,)`` qualities.

        Each row goes to the near-match rows or, below ``min_quality``, to the
        exact-only ones. :meth:`flush` uses it; so does the PDQ benchmark.
        """
        with self._lock:
            self._add_locked(ids, hashes, quality)

    def _add_locked(
        self, ids: npt.NDArray[np.int64], hashes: npt.NDArray[np.uint8], quality: npt.NDArray[Any]
    ) -> None:
        near = quality >= self.min_quality
        self._near.add(ids[near], hashes[near])
        low = ~near
        if low.any():
            self._exact_ids.append(np.asarray(ids[low], dtype=np.int64))
            self._exact_words.append(hashes_to_words(hashes[low]))
            all_ids = np.concatenate(self._exact_ids)
            all_words = np.concatenate(self._exact_words)
            self._exact_ids, self._exact_words = [all_ids], [all_words]
            self._exact = SortedHashes.build(all_ids, all_words)

    def load(self, matching: MatchStore, limit: int = LOAD_CHUNK) -> int:
        """Read every new row and add them to the tail; the number added."""
        while self.read_step(matching, limit) > 0:
            pass
        return self.flush()

    # -- searching ------------------------------------------------------------------

    def search_many(
        self,
        queries: Sequence[bytes],
        max_distance: int,
        *,
        near: Sequence[bool] | None = None,
        limit: int | None = None,
    ) -> list[list[tuple[int, int]]]:
        """``(row id, distance)`` candidates per query, unfiltered, nearest first.

        A row id is ``(log_id << 40) | index``. Rows below the minimum quality
        are found only at distance 0; so are every row for a query whose
        ``near`` flag is False. At most ``limit`` pairs per query.
        """
        near = near if near is not None else [True] * len(queries)
        wide = [q for q, n in zip(queries, near, strict=True) if n]
        narrow = [q for q, n in zip(queries, near, strict=True) if not n]
        with self._lock:
            base, tail, tail_exact = self._base, self._near, self._exact
        parts = []
        for index in (base.near, tail):
            if not len(index):
                continue
            found = iter(index.search_many(wide, max_distance, limit=limit))
            narrow_found = iter(index.search_many(narrow, 0, limit=limit))
            parts.append([next(found) if n else next(narrow_found) for n in near])
        # Most nodes hold no hash below the floor: no second search per query then.
        for exact in (base.exact, tail_exact):
            if len(exact):
                parts.append(exact.search_many(queries, limit=limit))
        if not parts:
            return [[] for _ in queries]
        if len(parts) == 1:
            return parts[0]
        results = []
        for pieces in zip(*parts, strict=True):
            nonempty = [p for p in pieces if p]
            if len(nonempty) <= 1:
                results.append(nonempty[0] if nonempty else [])
                continue
            merged = sorted(
                (pair for p in nonempty for pair in p), key=lambda pair: (pair[1], pair[0])
            )
            results.append(merged[:limit] if limit is not None else merged)
        return results


def _uncovered(
    ids: npt.NDArray[np.int64], covered: dict[int, int], dropped: set[int]
) -> npt.NDArray[np.bool_]:
    """Which row ids lie beyond what a base covers (rows of ``dropped`` logs: none)."""
    if not len(ids):
        return np.zeros(0, dtype=bool)
    log_ids = ids >> ID_SHIFT
    limits = np.full(len(ids), -1, dtype=np.int64)
    for log_id, after in covered.items():
        limits[log_ids == log_id] = after
    for log_id in dropped:
        limits[log_ids == log_id] = np.iinfo(np.int64).max
    return (ids & ((1 << ID_SHIFT) - 1)) > limits


def node_pdq_index(ledger: _Ledger, *, writable: bool = False) -> LivePdqIndex:
    """The node's PDQ index, empty: :meth:`LivePdqIndex.refresh` maps the file and reads the rest.

    Args:
        ledger: the node's ledger (read-only is enough); the quality floor is
            its ``[match] min_quality``.
        writable: only the serving process passes True; it may replace or
            remove the index files. Others (CLI, worker processes) never write.
    """
    return LivePdqIndex(
        ledger.config.match.min_quality,
        path=pdq_index_path(ledger.config.node_dir),
        writable=writable,
    )


def open_pdq_index(ledger: _Ledger, *, writable: bool = False) -> LivePdqIndex:
    """The node's PDQ index, ready to search: the base file mapped, the tail read.

    Arguments as :func:`node_pdq_index`. A process that keeps the object
    calls :meth:`LivePdqIndex.refresh` before each batch: it switches to a
    base file written since, and reads the new rows.
    """
    index = node_pdq_index(ledger, writable=writable)
    index.refresh(ledger)
    return index


def pdq_rows_beyond_file(ledger: _Ledger, limit: int) -> int:
    """PDQ rows of the node that its index file does not hold, counted up to ``limit``.

    All of them when there is no usable file. A bounded count (at most
    ``limit`` index entries read): ``hashmesh match --list`` asks it before
    starting worker processes that would each read those rows.
    """
    index = node_pdq_index(ledger)
    try:
        index.attach(ledger)
        return index.unread_rows(ledger.store.matching, limit)
    finally:
        index.close()


def build_pdq_file(store: LedgerStore, path: Path, min_quality: int) -> int:
    """Write the PDQ index file from every row of the ``pdq`` table; the rows written.

    For ``hashmesh fsck --repair`` and ``hashmesh index build``: the file is
    replaced atomically, so a serving process may keep running (it switches
    to the new file at its next refresh).
    """
    index = LivePdqIndex(min_quality, path=path, writable=True)
    index.load(store.matching)
    index.persist(store)
    rows = len(index)
    index.close()
    return rows


def check_pdq_file(store: LedgerStore, path: Path, min_quality: int) -> str | None:
    """Check the PDQ index file against the ``pdq`` table; a problem in one line, or None.

    Everything :meth:`LivePdqIndex.attach` checks, then every block's
    checksum, then the rows: each row of the table that the file covers must
    be in it with the same hash, on the side of the quality floor its entry
    says; a row of the file missing from the table must be a retracted one
    (rows are never removed from a base), and no row may lie beyond what the
    file covers. No file is no problem (``serve`` writes one).
    """
    if not path.exists():
        return None
    index = LivePdqIndex(min_quality, path=path)
    try:
        base = index._open_base(store)
    except SegmentError as e:
        return str(e)
    try:
        assert base.segment is not None
        problem = base.segment.verify()
        if problem is not None:
            return problem
        # The rows are compared where the file holds them (mapped), found
        # through their ids sorted: 24 bytes a row at most (the ids, their
        # order), where copies of the rows themselves would be 130.
        near, exact = base.near.to_arrays(), base.exact.to_arrays()
        near_words, exact_columns = near["words"], exact["columns"]
        in_near = len(near["ids"])
        ids = np.concatenate([near["ids"], exact["ids"]])
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        for lo in range(0, len(ids), LOAD_CHUNK):
            run = ids[lo : lo + LOAD_CHUNK + 1]
            if bool(np.any(run[1:] == run[:-1])):
                return f"{path}: holds a row twice"
            if not bool(np.all(_uncovered(run, base.covered, set()) == 0)):
                return f"{path}: holds rows beyond what it says it covers"
        matching = store.matching
        for log_id, after in sorted(base.covered.items()):
            last = -1
            while last < after:
                rows = [r for r in matching.pdq_after(log_id, last, LOAD_CHUNK) if r[0] <= after]
                if not rows:
                    break
                last = rows[-1][0]
                want_ids = np.array([r[0] for r in rows], dtype=np.int64) | (log_id << ID_SHIFT)
                want_words = hashes_to_words([r[1] for r in rows])
                want_near = np.array([r[2] >= min_quality for r in rows], dtype=bool)
                at = np.minimum(np.searchsorted(ids, want_ids), max(len(ids) - 1, 0))
                if not len(ids) or not bool(np.all(ids[at] == want_ids)):
                    missing = int(want_ids[ids[at] != want_ids][0] if len(ids) else want_ids[0])
                    return f"{path}: lacks entry {missing & ((1 << ID_SHIFT) - 1)} of log {log_id}"
                spots = order[at]
                is_near = spots < in_near
                words = np.empty((len(spots), 4), dtype=np.uint64)
                words[is_near] = near_words[spots[is_near]]
                words[~is_near] = exact_columns[:, spots[~is_near] - in_near].T
                bad = np.flatnonzero(np.any(words != want_words, axis=1) | (is_near != want_near))
                if len(bad):
                    entry = int(want_ids[bad[0]]) & ((1 << ID_SHIFT) - 1)
                    return f"{path}: entry {entry} of log {log_id} differs from the pdq table"
        return None
    except (KeyError, TypeError, ValueError) as e:
        return f"{path}: malformed ({e})"
    finally:
        if base.segment is not None:
            base.segment.close()
