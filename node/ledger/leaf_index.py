"""Find entries by their RFC 6962 leaf hash, for inclusion proofs by leaf hash.

Layer: node.ledger. Reads through :mod:`node.storage`; no writes.

RFC 6962 logs answer "prove this leaf hash" as well as "prove this index".
An SQLite index on ``entries.leaf_hash`` would answer it too, but every
import and sync would pay about 1.5 µs per entry for a random-key B-tree
insert (``docs/benchmarks.md``), for a question asked rarely. Instead the
serving process keeps, per log, the first 8 bytes of every leaf hash and
its index in two sorted numpy arrays (16 bytes per entry), built on the
first question about that log and extended from the stored leaf hashes as
the log grows (entries are append-only, so nothing is ever removed). A hit
on the 8-byte prefix is a candidate only: each is checked against the
stored leaf hash.
"""

from __future__ import annotations

import threading

import numpy

from node.storage.ledger_store import LedgerStore
from protocol.hashing import HASH_SIZE

__all__ = ["LeafHashIndex"]

_PREFIX = numpy.dtype(">u8")


class _LogLeaves:
    """The sorted leaf-hash prefixes of one log's first ``covered`` entries."""

    def __init__(self) -> None:
        self.covered = 0
        self.prefixes = numpy.empty(0, dtype=numpy.uint64)
        self.indexes = numpy.empty(0, dtype=numpy.int64)

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
        # Merge into the sorted arrays: O(n) per extension, not a re-sort.
        at = numpy.searchsorted(self.prefixes, new_prefixes, side="right")
        self.prefixes = numpy.insert(self.prefixes, at, new_prefixes)
        self.indexes = numpy.insert(self.indexes, at, new_indexes)
        self.covered = size

    def candidates(self, prefix: int) -> list[int]:
        key = numpy.uint64(prefix)
        lo = int(numpy.searchsorted(self.prefixes, key, side="left"))
        hi = int(numpy.searchsorted(self.prefixes, key, side="right"))
        return sorted(int(i) for i in self.indexes[lo:hi])


class LeafHashIndex:
    """Leaf hash -> entry index, for every log a serving process is asked about.

    Safe to share between the API's reader threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[int, _LogLeaves] = {}

    def find(self, store: LedgerStore, log_id: int, leaf_hash: bytes, size: int) -> int | None:
        """The first index below ``size`` whose entry has ``leaf_hash``, or None.

        ``size`` must not exceed the number of entries the log holds. Identical
        entries (a hash listed again after its retraction, duplicates a
        replica keeps verbatim) share a leaf hash: the first one is returned.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes")
        with self._lock:
            leaves = self._logs.setdefault(log_id, _LogLeaves())
            leaves.extend(store, log_id, size)
            candidates = leaves.candidates(int.from_bytes(leaf_hash[:8], "big"))
        for index in candidates:
            if index < size and store.leaf_hash_at(log_id, index) == leaf_hash:
                return index
        return None

    def entries_indexed(self, log_id: int) -> int:
        """How many entries of the log the index covers (0 if never asked)."""
        with self._lock:
            leaves = self._logs.get(log_id)
            return 0 if leaves is None else leaves.covered
