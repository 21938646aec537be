"""Find entries by their RFC 6962 leaf hash, for inclusion proofs by leaf hash.

Layer: node.ledger. Reads through :mod:`node.storage`; writes only its own
index files (:mod:`node.storage.segment_file`).

RFC 6962 logs answer "prove this leaf hash" as well as "prove this index".
An SQLite index on ``entries.leaf_hash`` would answer it too, but every
import and sync would pay about 1.5 µs per entry for a random-key B-tree
insert (``docs/benchmarks.md``), for a question asked rarely. Instead the
serving process keeps, per log, the first 8 bytes of every leaf hash and
its index in two sorted arrays (12 bytes per entry on disk, 16 in memory),
extended from the stored leaf hashes as the log grows (entries are
append-only, so nothing is ever removed). A hit on the 8-byte prefix is a
candidate only: each is checked against the stored leaf hash.

Building the arrays reads every stored leaf hash of the log (1.1 s at 1M
entries, minutes at 100M), so they are kept on disk as one immutable
segment file per log, ``index/leaves-<log id>.seg``: the sorted prefixes and
indexes of the first N entries and, to tie the file to the log, N and the
leaf hash of entry N - 1. The first question about a log maps the file
(after checking that tie; a file failing any check is logged, removed and
rebuilt) and reads only the leaf hashes beyond N into an in-memory tail.
When the tail is large next to the file, a background thread writes a new
file of both and swaps it in.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy
import numpy.typing as npt

from node.storage.ledger_store import LedgerStore
from node.storage.segment_file import (
    Segment,
    SegmentError,
    open_segment,
    remove_stale_temporaries,
    write_segment,
)
from protocol.hashing import HASH_SIZE

__all__ = ["PERSIST_MIN_ENTRIES", "LeafHashIndex", "leaves_file"]

log = logging.getLogger("hashmesh.index")

PERSIST_MIN_ENTRIES = 1_000_000
"""Fewest tail entries that make a new file worth writing (reading them costs about 1 s)."""

_PREFIX = numpy.dtype(">u8")
_KIND = "leaf-index"
_CHECK_CHUNK = 1 << 18  # entries whose leaf hashes fsck holds at a time


def leaves_file(directory: Path, log_id: int) -> Path:
    """The leaf-hash index file of one log in a node's index directory."""
    return directory / f"leaves-{log_id}.seg"


def _empty() -> tuple[npt.NDArray[numpy.uint64], npt.NDArray[Any]]:
    return numpy.empty(0, dtype=numpy.uint64), numpy.empty(0, dtype=numpy.int64)


class _LogLeaves:
    """The sorted leaf-hash prefixes of one log's first ``covered`` entries."""

    def __init__(self) -> None:
        self.base_covered = 0  # entries in the mapped file
        self.base_prefixes, self.base_indexes = _empty()
        self.segment: Segment | None = None
        self.covered = 0  # entries in the file and the tail
        self.prefixes, self.indexes = _empty()  # the tail, sorted
        self.last_leaf = b""  # leaf hash of entry covered - 1
        self.persisting = False

    @property
    def tail(self) -> int:
        return self.covered - self.base_covered

    def attach(self, store: LedgerStore, log_id: int, path: Path, writable: bool) -> None:
        """Map the log's file if it is valid for this log (else log it and go on without)."""
        if writable:
            remove_stale_temporaries(path)
        try:
            segment = open_segment(path, _KIND)
        except FileNotFoundError:
            return
        except SegmentError as e:
            _not_used(path, str(e), writable)
            return
        try:
            meta = segment.meta
            covered = int(meta["covered"])
            last = bytes.fromhex(meta["last_leaf"])
            if int(meta["log_id"]) != log_id:
                raise SegmentError(f"{path}: indexes log {meta['log_id']}, not {log_id}")
            if covered and store.leaf_hash_at(log_id, covered - 1) != last:
                raise SegmentError(f"{path}: stale: entry {covered - 1} is not the one it indexed")
            prefixes, indexes = segment.array("prefixes"), segment.array("indexes")
            if len(prefixes) != covered or len(indexes) != covered:
                raise SegmentError(f"{path}: holds {len(prefixes)} entries, not {covered}")
        except (KeyError, TypeError, ValueError, SegmentError) as e:
            segment.close()
            _not_used(path, str(e) if isinstance(e, SegmentError) else f"{path}: {e}", writable)
            return
        self.segment = segment
        self.base_prefixes, self.base_indexes = prefixes, indexes
        self.base_covered = self.covered = covered
        self.last_leaf = last

    def extend(self, store: LedgerStore, log_id: int, size: int) -> None:
        if size <= self.covered:
            return
        hashes = store.leaf_hashes(log_id, self.covered, size)
        if len(hashes) != size - self.covered:
            raise ValueError(f"log {log_id} holds fewer than {size} entries")
        raw = b"".join(h[:8] for h in hashes)
        new = numpy.frombuffer(raw, dtype=_PREFIX).astype(numpy.uint64)
        order = numpy.argsort(new, kind="stable")
        new_prefixes = new[order]
        new_indexes = numpy.arange(self.covered, size, dtype=numpy.int64)[order]
        # Merge into the sorted tail: O(tail) per extension, not a re-sort.
        at = numpy.searchsorted(self.prefixes, new_prefixes, side="right")
        self.prefixes = numpy.insert(self.prefixes, at, new_prefixes)
        self.indexes = numpy.insert(self.indexes, at, new_indexes)
        self.covered = size
        self.last_leaf = hashes[-1]

    def candidates(self, prefix: int) -> list[int]:
        key = numpy.uint64(prefix)
        found: list[int] = []
        for prefixes, indexes in (
            (self.base_prefixes, self.base_indexes),
            (self.prefixes, self.indexes),
        ):
            lo = int(numpy.searchsorted(prefixes, key, side="left"))
            hi = int(numpy.searchsorted(prefixes, key, side="right"))
            found.extend(int(i) for i in indexes[lo:hi])
        return sorted(found)

    def snapshot(self) -> tuple[npt.NDArray[numpy.uint64], npt.NDArray[Any], int, bytes]:
        """Both parts merged into one sorted pair of arrays (for a new file)."""
        prefixes = numpy.concatenate([self.base_prefixes, self.prefixes])
        indexes = numpy.concatenate([self.base_indexes.astype(numpy.int64), self.indexes])
        order = numpy.argsort(prefixes, kind="stable")
        dtype = numpy.uint32 if self.covered < 2**32 else numpy.int64
        return prefixes[order], indexes[order].astype(dtype), self.covered, self.last_leaf

    def swap(self, segment: Segment) -> None:
        """Use a newly written file; keep only the tail entries beyond it."""
        covered = int(segment.meta["covered"])
        keep = self.indexes >= covered
        self.prefixes, self.indexes = self.prefixes[keep], self.indexes[keep]
        old = self.segment
        self.segment = segment
        self.base_prefixes = segment.array("prefixes")
        self.base_indexes = segment.array("indexes")
        self.base_covered = covered
        if old is not None:
            old.close()


def _not_used(path: Path, reason: str, writable: bool) -> None:
    log.warning("leaf-hash index file not used, rebuilding from the log: %s", reason)
    if writable:
        path.unlink(missing_ok=True)


class LeafHashIndex:
    """Leaf hash -> entry index, for every log a serving process is asked about.

    Safe to share between the API's reader threads.

    Args:
        writable: write, replace and remove index files (the serving
            process); otherwise files are only read.
        persist_min: fewest tail entries worth a new file.
    """

    def __init__(self, *, writable: bool = True, persist_min: int = PERSIST_MIN_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._logs: dict[int, _LogLeaves] = {}
        self.writable = writable
        self.persist_min = persist_min
        self._writers: list[threading.Thread] = []

    def find(
        self,
        store: LedgerStore,
        log_id: int,
        leaf_hash: bytes,
        size: int,
        *,
        directory: Path | None = None,
    ) -> int | None:
        """The first index below ``size`` whose entry has ``leaf_hash``, or None.

        ``size`` must not exceed the number of entries the log holds. Identical
        entries (a hash listed again after its retraction, duplicates a
        replica keeps verbatim) share a leaf hash: the first one is returned.
        ``directory`` is the node's index directory (None: memory only).
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes")
        with self._lock:
            leaves = self._logs.get(log_id)
            if leaves is None:
                leaves = self._logs[log_id] = _LogLeaves()
                if directory is not None:
                    leaves.attach(store, log_id, leaves_file(directory, log_id), self.writable)
            leaves.extend(store, log_id, size)
            candidates = leaves.candidates(int.from_bytes(leaf_hash[:8], "big"))
            if directory is not None and self._due(leaves):
                self._persist_in_background(leaves, log_id, leaves_file(directory, log_id))
        for index in candidates:
            if index < size and store.leaf_hash_at(log_id, index) == leaf_hash:
                return index
        return None

    def _due(self, leaves: _LogLeaves) -> bool:
        return (
            self.writable
            and not leaves.persisting
            and leaves.tail >= self.persist_min
            and leaves.tail * 4 >= leaves.base_covered
        )

    def _persist_in_background(self, leaves: _LogLeaves, log_id: int, path: Path) -> None:
        leaves.persisting = True
        thread = threading.Thread(
            target=self._persist,
            args=(leaves, log_id, path),
            name="hashmesh-leaf-index",
            daemon=True,
        )
        self._writers.append(thread)
        thread.start()

    def _persist(self, leaves: _LogLeaves, log_id: int, path: Path) -> None:
        try:
            with self._lock:
                prefixes, indexes, covered, last = leaves.snapshot()
            write_segment(
                path,
                _KIND,
                {"log_id": log_id, "covered": covered, "last_leaf": last.hex()},
                {"prefixes": prefixes, "indexes": indexes},
            )
            del prefixes, indexes
            segment = open_segment(path, _KIND)
            with self._lock:
                leaves.swap(segment)
            log.info("leaf-hash index of log %d persisted: %d entries in %s", log_id, covered, path)
        except (OSError, SegmentError) as e:
            log.warning("leaf-hash index of log %d not persisted: %s", log_id, e)
        finally:
            leaves.persisting = False

    def wait_for_writers(self) -> None:
        """Wait until every background write started so far has finished (tests, shutdown)."""
        for thread in list(self._writers):
            thread.join()
        self._writers = [t for t in self._writers if t.is_alive()]

    def entries_indexed(self, log_id: int) -> int:
        """How many entries of the log the index covers (0 if never asked)."""
        with self._lock:
            leaves = self._logs.get(log_id)
            return 0 if leaves is None else leaves.covered

    def entries_mapped(self, log_id: int) -> int:
        """How many of them come from the log's mapped file (0: none)."""
        with self._lock:
            leaves = self._logs.get(log_id)
            return 0 if leaves is None else leaves.base_covered

    def verify(self) -> list[str]:
        """Block checksums of every mapped file; the problems found (one line each)."""
        with self._lock:
            segments = [leaves.segment for leaves in self._logs.values() if leaves.segment]
        return [p for p in (s.verify() for s in segments) if p is not None]

    def verify_and_drop(self) -> list[str]:
        """:meth:`verify`, forgetting each log whose file fails (rebuilt when next asked)."""
        with self._lock:
            mapped = [(i, v.segment) for i, v in self._logs.items() if v.segment is not None]
        problems = []
        for log_id, segment in mapped:
            problem = segment.verify()
            if problem is None:
                continue
            problems.append(problem)
            with self._lock:
                leaves = self._logs.get(log_id)
                if leaves is not None and leaves.segment is segment:
                    del self._logs[log_id]
            _not_used(segment.path, problem, self.writable)
            segment.close()
        return problems


def build_leaves_file(store: LedgerStore, log_id: int, directory: Path) -> int:
    """Write the log's leaf-hash index file from every stored leaf hash; the entries covered.

    For ``hashmesh fsck --repair`` and ``hashmesh index build`` (offline).
    """
    covered = store.entry_count(log_id)
    if not covered:
        leaves_file(directory, log_id).unlink(missing_ok=True)
        return 0
    # The prefixes a chunk of leaf hashes at a time: 16 bytes an entry with
    # the sort's order, where the whole log's hashes as Python bytes would
    # be 73 (7 GB at 100M entries).
    prefixes = numpy.empty(covered, dtype=numpy.uint64)
    last = b""
    for lo in range(0, covered, _CHECK_CHUNK):
        hashes = store.leaf_hashes(log_id, lo, min(covered, lo + _CHECK_CHUNK))
        if len(hashes) != min(covered, lo + _CHECK_CHUNK) - lo:
            raise ValueError(f"log {log_id} holds fewer than {covered} entries")
        prefixes[lo : lo + len(hashes)] = numpy.frombuffer(
            b"".join(h[:8] for h in hashes), dtype=_PREFIX
        )
        last = hashes[-1]
    order = numpy.argsort(prefixes, kind="stable")
    prefixes = prefixes[order]
    indexes = order.astype(numpy.uint32 if covered < 2**32 else numpy.int64)
    del order
    write_segment(
        leaves_file(directory, log_id),
        _KIND,
        {"log_id": log_id, "covered": covered, "last_leaf": last.hex()},
        {"prefixes": prefixes, "indexes": indexes},
    )
    return covered


def check_leaves_file(store: LedgerStore, log_id: int, directory: Path) -> str | None:
    """Check a log's leaf-hash index file against the stored leaf hashes; a problem, or None.

    Header, block checksums, the tie to the log, and every (prefix, index)
    pair against the stored leaf hash of that entry. No file is no problem
    (the serving process writes one when it is worth it).
    """
    path = leaves_file(directory, log_id)
    try:
        segment = open_segment(path, _KIND)
    except FileNotFoundError:
        return None
    except SegmentError as e:
        return str(e)
    try:
        problem = segment.verify()
        if problem is not None:
            return problem
        covered = int(segment.meta["covered"])
        if int(segment.meta["log_id"]) != log_id:
            return f"{path}: indexes log {segment.meta['log_id']}, not {log_id}"
        if covered and store.leaf_hash_at(log_id, covered - 1) != bytes.fromhex(
            segment.meta["last_leaf"]
        ):
            return f"{path}: stale: entry {covered - 1} is not the one it indexed"
        prefixes, indexes = segment.array("prefixes"), segment.array("indexes")
        if len(prefixes) != covered or len(indexes) != covered:
            return f"{path}: does not match the stored leaf hashes"
        # Chunk by chunk, so a 100M-entry log costs one small integer per
        # entry (where its pair sits in the file), not its leaf hashes at
        # once. The file must be sorted by prefix, list every entry once,
        # and give each entry the prefix of its stored leaf hash (equal
        # prefixes may list their entries in any order).
        where: npt.NDArray[Any] = numpy.full(
            covered, -1, dtype=numpy.int32 if covered < 2**31 else numpy.int64
        )
        for lo in range(0, covered, _CHECK_CHUNK):
            hi = min(covered, lo + _CHECK_CHUNK)
            run = prefixes[lo : hi + 1]
            at = indexes[lo:hi].astype(numpy.int64)
            if bool(numpy.any(run[1:] < run[:-1])) or bool(numpy.any((at < 0) | (at >= covered))):
                return f"{path}: does not match the stored leaf hashes"
            where[at] = numpy.arange(lo, hi, dtype=where.dtype)
        for lo in range(0, covered, _CHECK_CHUNK):
            hi = min(covered, lo + _CHECK_CHUNK)
            spots = where[lo:hi]
            if bool(numpy.any(spots < 0)):  # some other entry is listed twice
                return f"{path}: does not match the stored leaf hashes"
            hashes = store.leaf_hashes(log_id, lo, hi)
            want = numpy.frombuffer(b"".join(h[:8] for h in hashes), dtype=_PREFIX)
            if len(want) != hi - lo or not numpy.array_equal(prefixes[spots], want):
                return f"{path}: does not match the stored leaf hashes"
        return None
    except (KeyError, TypeError, ValueError) as e:
        return f"{path}: malformed ({e})"
    finally:
        segment.close()
