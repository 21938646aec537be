"""Exact PDQ near-match index: every stored hash within a Hamming distance of a query.

Layer: node.ledger. In memory only; no I/O. The caller (the matching service)
loads hashes from storage and keeps the index current.

Design: multi-index hashing. 253 of the 256 bits are cut into ``_CHUNKS`` =
11 disjoint chunks of 23 bits, the bits of each chosen when the index is
built so that every chunk is about as selective on the data at hand (skewed
bits spread over the chunks, the three most skewed left out; see
:func:`_balanced_order`). If two hashes differ in at most ``d`` bits,
then by the pigeonhole principle they differ in at most ``d // 11`` bits on at
least one chunk (11 chunks each differing in ``d // 11 + 1`` bits or more would
add up to more than ``d``). For every chunk the index sorts the rows by the
chunk's top ``b`` bits (its key; ``b`` about ``log2(n) + 2``, at most 23, so
there are four to eight keys a row and a non-empty bucket holds about one
row) into a permutation of the rows (``_perm``). The bucket directory keeps
only what is non-empty: a bitmap of the non-empty buckets of every chunk
(``_present``, ``2**b`` bits a chunk), the number of set bits before each of
its words (``_rank``) and, for each non-empty bucket, where it starts in the
permutations (``_starts``). A query probes, on each chunk, every bucket whose
key is within ``d // 11`` bits of its own (277 at distance 31): the bitmap,
small enough for the CPU caches, answers for the empty ones, and only the
others cost a look-up of their rows. The rows found are candidates, checked
with an exact popcount over the full 256 bits. Nothing within ``d`` can be
missed, so recall is exact; only the cost depends on the data. When the
candidates (or the probes, for large distances) would cost more than reading
every hash, the query scans all hashes instead, so skewed data (clusters,
many copies of one hash) degrades to a linear scan, never worse. The queries
of one call are searched together, a block at a time, so each numpy pass
runs over thousands of probes, not one query's.

Adds go to an unsorted tail that every query scans; when the tail reaches
``TAIL_LIMIT`` rows (more for large indexes) it is merged into the directories
(one linear pass per merge, or a full rebuild when the bucket width changes or
the tail is large next to the indexed rows).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "HASH_BYTES",
    "LAYOUT",
    "MAX_DISTANCE_CAP",
    "TAIL_LIMIT",
    "PdqIndex",
    "SortedHashes",
    "hashes_to_words",
]

HASH_BYTES = 32
"""Length of a PDQ hash in bytes (256 bits)."""

MAX_DISTANCE_CAP = 64
"""Largest ``max_distance`` accepted. Every distance up to it is exact: larger ones
probe more buckets, and a query scans every hash when that is cheaper. Beyond 64
a "match" is no longer meaningful for PDQ (Meta's confident-match threshold is 31)."""

LAYOUT = 2
"""Version of the arrays :meth:`PdqIndex.to_arrays` returns; a file of another is rebuilt.

1: 3 chunks of 24 bits and 8 of 23, a dense offset array per chunk (``dir``).
2: 11 chunks of 23 bits, their bits chosen by entropy when the index is built
(``order``); a presence bitmap, its ranks and the offsets of non-empty buckets
only (``present``, ``rank``, ``starts``); keys of up to 23 bits."""

TAIL_LIMIT = 32_768
"""Fewest rows kept unindexed (scanned by every query) before they are merged.

A merge costs one pass over the whole index, so the tail grows with it (1/64 of
the indexed rows, at most ``_TAIL_LIMIT_MAX``): at 10M rows a merge of about
1.3 s happens every 156,000 adds, and a full tail adds about 1.3 ms to a query."""

_TAIL_LIMIT_MAX = 262_144

_BITS = 256
_CHUNKS = 11
_CHUNK_BITS = 23
# 11 chunks of 23 bits: bits 253-255 are in no chunk (the pigeonhole argument
# needs only that the chunks are disjoint; the exact check reads all 256).
# Bucket keys are the top bits of each chunk.
_CHUNK_STARTS = tuple(c * _CHUNK_BITS for c in range(_CHUNKS))
_MAX_BUCKET_BITS = _CHUNK_BITS
_MIN_BUCKET_BITS = 10
_MAX_ROWS = (2**31 - 1) // _CHUNKS  # positions in the 11 permutations are int32

# Rough per-item costs on one core, in nanoseconds, used only to choose between
# probing and scanning (both exact). Measured with numpy 2 on the project machine.
_COST_PROBE_NS = 25.0
_COST_CANDIDATE_NS = 40.0
_COST_SCAN_NS = 10.0

_SCAN_BLOCK = 16_384
# Queries searched together: their probes (about 3,000 each at distance 31)
# and candidates stay within a few MB of temporaries.
_QUERY_BLOCK = 64

_U64 = npt.NDArray[np.uint64]
_I64 = npt.NDArray[np.int64]


class PdqIndex:
    """An exact (100 % recall) Hamming-distance index over 256-bit PDQ hashes.

    Rows are ``(id, hash)`` pairs; ids are int64 values chosen by the caller and
    need not be unique (the same hash listed twice is two rows). Rows are never
    removed: callers filter hits (e.g. through the ``active`` table).

    Thread-safe: one lock serialises adds and searches. A merge of the tail
    holds the lock for one linear pass over the permutation arrays.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._words: _U64 = np.empty((0, 4), dtype=np.uint64)
        self._ids: _I64 = np.empty(0, dtype=np.int64)
        self._count = 0  # rows held
        self._indexed = 0  # rows [0, _indexed) are in the directories
        self._bucket_bits = 0
        self._perm: npt.NDArray[np.int32] = np.empty(0, dtype=np.int32)
        self._present: _U64 = np.zeros(0, dtype=np.uint64)
        self._rank: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._starts: npt.NDArray[np.int32] = np.zeros(1, dtype=np.int32)
        # Which bit of the hash is each bit of the chunks (chunk c: order[23c:23c + 23]).
        self._order: npt.NDArray[np.uint8] = _IDENTITY
        self._frozen = False  # arrays borrowed from a read-only mapping

    def __len__(self) -> int:
        return self._count

    @classmethod
    def build(cls, ids: _I64, words: _U64) -> PdqIndex:
        """An index of these rows with every row in the directories (one bulk build).

        ``words`` are hashes as :func:`hashes_to_words` returns them.
        """
        index = cls()
        if len(words):
            index._append(ids, words)
            index._rebuild()
        return index

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> PdqIndex:
        """A read-only index over arrays made by :meth:`to_arrays` (typically mapped views).

        Nothing is copied. Only the shapes are checked here (cheap at any size);
        the values are trusted, so callers check the arrays' origin (a
        checksummed file) first.

        Raises:
            ValueError: the arrays do not fit together.
        """
        words, ids, perm, present, rank, starts, order = (
            arrays[k] for k in ("words", "ids", "perm", "present", "rank", "starts", "order")
        )
        n = len(ids)
        bits = _bucket_bits_for(n)
        if (
            words.shape != (n, 4)
            or words.dtype != np.uint64
            or ids.dtype != np.int64
            or perm.shape != (_CHUNKS * n,)
            or perm.dtype != np.int32
            or present.dtype != np.uint64
            or rank.dtype != np.int32
            or starts.dtype != np.int32
            or starts.ndim != 1
            or (n and present.shape != (_CHUNKS << bits >> 6,))
            or rank.shape != present.shape
            or (n and not _directory_fits(present, rank, starts, n))
            or order.dtype != np.uint8
            or order.shape != (_BITS,)
            or not bool(np.all(np.bincount(order, minlength=_BITS) == 1))
        ):
            raise ValueError("the PDQ index arrays do not fit together")
        index = cls()
        index._words, index._ids, index._perm = words, ids, perm
        index._count = index._indexed = n
        if n:
            index._present, index._rank, index._starts = present, rank, starts
            index._bucket_bits, index._order = bits, order
        index._frozen = True
        return index

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The index as arrays for :meth:`from_arrays`, every row in the directories."""
        with self._lock:
            if self._indexed < self._count:
                self._rebuild()
            n = self._count
            return {
                "words": self._words[:n],
                "ids": self._ids[:n],
                "perm": self._perm,
                "present": self._present,
                "rank": self._rank,
                "starts": self._starts,
                "order": self._order,
            }

    def rows(self, start: int = 0) -> tuple[_I64, _U64]:
        """Copies of the ids and words of rows ``[start, len)``, in the order added."""
        with self._lock:
            return self._ids[start : self._count].copy(), self._words[start : self._count].copy()

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (hashes, ids, permutations, directories)."""
        arrays = (self._words, self._ids, self._perm, self._present, self._rank, self._starts)
        # (the bit order, 256 bytes, is left out)
        return sum(int(a.nbytes) for a in arrays)

    def add(
        self,
        ids: Sequence[int] | npt.NDArray[Any],
        hashes: Sequence[bytes] | npt.NDArray[Any],
    ) -> None:
        """Add rows.

        Args:
            ids: one int64 per hash.
            hashes: 32-byte values, either a sequence of bytes or a ``(n, 32)``
                uint8 array.

        Raises:
            ValueError: a hash is not 32 bytes, an id is not an int64, or the two
                lengths differ. Nothing is added then.
        """
        if self._frozen:
            raise ValueError("this index is read-only (its arrays are mapped from a file)")
        words = hashes_to_words(hashes)
        id_array = _ids_to_array(ids)
        if len(id_array) != len(words):
            raise ValueError(f"ids: expected {len(words)} ids (one per hash), got {len(id_array)}")
        n = len(words)
        if n == 0:
            return
        with self._lock:
            if self._count + n > _MAX_ROWS:
                raise ValueError(f"hashes: the index holds at most {_MAX_ROWS} rows")
            self._append(id_array, words)
            tail_limit = min(_TAIL_LIMIT_MAX, max(TAIL_LIMIT, self._indexed // 64))
            if self._count - self._indexed >= tail_limit:
                self._merge()

    def search(
        self, query: bytes, max_distance: int, *, limit: int | None = None
    ) -> list[tuple[int, int]]:
        """Every row whose hash is within ``max_distance`` bits of ``query``.

        Args:
            query: a 32-byte PDQ hash.
            max_distance: inclusive Hamming distance, 0 to ``MAX_DISTANCE_CAP``.
            limit: return only the first ``limit`` pairs (the nearest).

        Returns:
            ``(id, distance)`` pairs ordered by distance, then id.

        Raises:
            ValueError: the query is not 32 bytes or the distance is out of range.
        """
        _check_distance(max_distance)
        qbytes = _check_query(query, "query")
        with self._lock:
            return self._search_many([qbytes], max_distance, limit)[0]

    def search_many(
        self, queries: Sequence[bytes], max_distance: int, *, limit: int | None = None
    ) -> list[list[tuple[int, int]]]:
        """:meth:`search` for each query, in order; all queries are checked first.

        Raises:
            ValueError: a query is not 32 bytes (named by its position) or the
                distance is out of range.
        """
        _check_distance(max_distance)
        checked = [_check_query(q, f"queries[{i}]") for i, q in enumerate(queries)]
        with self._lock:
            return self._search_many(checked, max_distance, limit)

    # -- internals (called with the lock held) ---------------------------------

    def _append(self, ids: _I64, words: _U64) -> None:
        need = self._count + len(words)
        if need > len(self._words):
            # Grow by half so a stream of small adds stays amortised linear; a single
            # bulk load allocates exactly what it needs.
            capacity = max(need, len(self._words) + len(self._words) // 2)
            new_words = np.empty((capacity, 4), dtype=np.uint64)
            new_words[: self._count] = self._words[: self._count]
            new_ids = np.empty(capacity, dtype=np.int64)
            new_ids[: self._count] = self._ids[: self._count]
            self._words, self._ids = new_words, new_ids
        self._words[self._count : need] = words
        self._ids[self._count : need] = ids
        self._count = need

    def _merge(self) -> None:
        bits = _bucket_bits_for(self._count)
        tail = self._count - self._indexed
        if bits != self._bucket_bits or tail * 2 > self._indexed:
            self._rebuild()
            return
        old, n = self._indexed, self._count
        keyed = _permute_bits(self._words[:n], self._order)
        words = keyed[old:n]
        rows = np.arange(old, n, dtype=np.int32)
        perm = np.empty(_CHUNKS * n, dtype=np.int32)

        def merged_keys() -> Iterator[npt.NDArray[np.int32]]:
            for c, start in enumerate(_CHUNK_STARTS):
                # The indexed rows' keys in permutation order are sorted; the new
                # rows go after the equal ones (order inside a bucket does not matter).
                chunk_perm = self._perm[c * old : (c + 1) * old]
                old_keys = _extract(keyed[chunk_perm], start, bits)
                new_keys = _extract(words, start, bits)
                order = np.argsort(new_keys)
                at = np.searchsorted(old_keys, new_keys[order], side="right")
                perm[c * n : (c + 1) * n] = np.insert(chunk_perm, at, rows[order])
                yield np.insert(old_keys, at, new_keys[order])

        self._present, self._rank, self._starts = _directory(merged_keys(), bits)
        self._perm, self._indexed = perm, n

    def _rebuild(self) -> None:
        n = self._count
        bits = _bucket_bits_for(n)
        self._order = _balanced_order(self._words[:n])
        words = _permute_bits(self._words[:n], self._order)
        perm = np.empty(_CHUNKS * n, dtype=np.int32)

        def sorted_keys() -> Iterator[npt.NDArray[np.int32]]:
            for c, start in enumerate(_CHUNK_STARTS):
                keys = _extract(words, start, bits)
                order = np.argsort(keys)
                perm[c * n : (c + 1) * n] = order
                yield keys[order]

        self._present, self._rank, self._starts = _directory(sorted_keys(), bits)
        self._perm, self._bucket_bits, self._indexed = perm, bits, n

    def _search_many(
        self, queries: list[bytes], max_distance: int, limit: int | None
    ) -> list[list[tuple[int, int]]]:
        """Every query at once: the numpy passes run over a block of queries, not one each."""
        results: list[list[tuple[int, int]]] = []
        for lo in range(0, len(queries), _QUERY_BLOCK):
            block = queries[lo : lo + _QUERY_BLOCK]
            results.extend(self._search_block(hashes_to_words(block), max_distance, limit))
        return results

    def _search_block(
        self, qwords: _U64, max_distance: int, limit: int | None
    ) -> list[list[tuple[int, int]]]:
        k = len(qwords)
        if not self._count or not k:
            return [[] for _ in range(k)]
        # Rows within the distance, the query (its position in the block) each
        # is for, and the distance.
        found: list[tuple[_I64, _I64, _I64]] = []
        scan_queries: npt.NDArray[np.int64] = np.arange(k)
        if self._indexed:
            probed = self._probe_many(qwords, max_distance)
            if probed is not None:
                rows, per_query, scan_queries = probed
                # Candidates come query by query: each query's words repeated
                # as often as it has candidates.
                keep, dist = _within(
                    np.take(self._words, rows, axis=0),
                    np.repeat(qwords, per_query, axis=0),
                    max_distance,
                )
                owner = np.repeat(np.arange(k, dtype=np.int64), per_query)[keep]
                found.append((rows[keep], owner, dist))
        scans = [(q, 0, self._indexed) for q in scan_queries.tolist()] if self._indexed else []
        if self._count > self._indexed:
            scans.extend((q, self._indexed, self._count) for q in range(k))
        for q, begin, end in scans:
            rows = _scan(self._words, begin, end, qwords[q], max_distance)
            keep, dist = _within(np.take(self._words, rows, axis=0), qwords[q], max_distance)
            found.append((rows[keep], np.full(len(keep), q, dtype=np.int64), dist))
        if not found:
            return [[] for _ in range(k)]
        if len(found) > 1:
            rows, owner, dist = (np.concatenate(parts) for parts in zip(*found, strict=True))
        else:
            rows, owner, dist = found[0]
        if len(rows) == 0:
            return [[] for _ in range(k)]
        ids = self._ids[rows]
        # A row found through several chunks sorts next to its copies; keep one.
        order = np.lexsort((rows, ids, dist, owner))
        rows, owner, ids, dist = rows[order], owner[order], ids[order], dist[order]
        if len(rows) > 1:
            first = np.empty(len(rows), dtype=bool)
            first[0] = True
            np.not_equal(rows[1:], rows[:-1], out=first[1:])
            first[1:] |= owner[1:] != owner[:-1]
            owner, ids, dist = owner[first], ids[first], dist[first]
        bounds = np.searchsorted(owner, np.arange(k + 1)).tolist()
        id_list, dist_list = ids.tolist(), dist.tolist()
        out = []
        for q in range(k):
            lo, hi = bounds[q], bounds[q + 1]
            if limit is not None:
                hi = min(hi, lo + limit)
            out.append(list(zip(id_list[lo:hi], dist_list[lo:hi], strict=True)))
        return out

    def _probe_many(
        self, qwords: _U64, max_distance: int
    ) -> tuple[_I64, _I64, npt.NDArray[np.int64]] | None:
        """Candidate rows among the indexed ones for a block of queries (unverified, may repeat).

        Returns the candidate rows (query by query, in query order), how many
        each query has, and the queries for which a scan of the indexed rows
        is cheaper (not probed, none of their rows); None when a scan is
        cheaper for every query whatever its buckets hold.
        """
        n = self._indexed
        bits = self._bucket_bits
        flips = _flip_masks(bits, max_distance // _CHUNKS)
        probes = _CHUNKS * len(flips)
        expected = probes * n / (1 << bits)
        scan_cost = n * _COST_SCAN_NS
        if probes * _COST_PROBE_NS + expected * _COST_CANDIDATE_NS > scan_cost:
            return None
        k = len(qwords)
        keyed = _permute_bits(qwords, self._order)
        keys = np.empty((k, _CHUNKS, 1), dtype=np.int64)
        for c, start in enumerate(_CHUNK_STARTS):
            keys[:, c, 0] = _extract(keyed, start, bits)
        # A needle is a bucket's number over every chunk: chunk c's keys follow
        # chunk c - 1's, as their bits do in the presence bitmap.
        needles = np.bitwise_xor(keys, flips[None, None, :])
        needles += (np.arange(_CHUNKS, dtype=np.int64) << bits)[None, :, None]
        needles = needles.ravel()
        # Most buckets probed are empty: the bitmap (a few MB, cache-friendly)
        # answers for them; only the others read the bucket offsets.
        word_at = needles >> 6
        present_words = self._present[word_at]
        bit = (needles & 63).astype(np.uint64)
        hit = np.flatnonzero((present_words >> bit) & np.uint64(1))
        if len(hit) == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, np.zeros(k, dtype=np.int64), empty
        below = present_words[hit] & ((np.uint64(1) << bit[hit]) - np.uint64(1))
        bucket = self._rank[word_at[hit]] + np.bitwise_count(below).astype(np.int32)
        lo = self._starts[bucket].astype(np.int64)
        sizes = self._starts[bucket + 1] - lo
        owner_of_hit = hit // probes
        totals = np.bincount(owner_of_hit, weights=sizes, minlength=k).astype(np.int64)
        heavy = totals * _COST_CANDIDATE_NS > scan_cost
        scan_queries = np.flatnonzero(heavy)
        if len(scan_queries):
            light = ~heavy[owner_of_hit]
            lo, sizes = lo[light], sizes[light]
            totals[heavy] = 0
        total = int(sizes.sum())
        before = np.cumsum(sizes) - sizes
        positions = np.repeat(lo - before, sizes) + np.arange(total)
        rows = np.take(self._perm, positions).astype(np.int64)
        return rows, totals, scan_queries


class SortedHashes:
    """Rows ``(id, hash)`` looked up at distance 0 only: sorted, found by binary search.

    The exact-only rows of :class:`~node.ledger.live_pdq.LivePdqIndex` (hashes
    below the quality floor) are near-degenerate by definition, and many are
    the same all-zero hash: in a :class:`PdqIndex` they crowd one bucket of
    every chunk, and each such query scans them all. Sorted by hash (then by
    id), one query is at most eight binary searches and a slice. Immutable:
    made by :meth:`build` or :meth:`from_arrays`.
    """

    def __init__(self, columns: _U64, ids: _I64) -> None:
        # Column k holds word k of every hash, contiguous, so a binary search
        # over one word never copies the array.
        self._columns = columns
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def nbytes(self) -> int:
        """Bytes held (hash columns and ids)."""
        return int(self._columns.nbytes + self._ids.nbytes)

    @classmethod
    def build(cls, ids: _I64, words: _U64) -> SortedHashes:
        """Sort rows given as ids and :func:`hashes_to_words` words."""
        order = np.lexsort((ids, words[:, 3], words[:, 2], words[:, 1], words[:, 0]))
        columns = np.ascontiguousarray(words[order].T)
        return cls(columns, ids[order])

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> SortedHashes:
        """Rows from :meth:`to_arrays` (typically mapped views; nothing is copied).

        Raises:
            ValueError: the arrays do not fit together.
        """
        columns, ids = arrays["columns"], arrays["ids"]
        if columns.shape != (4, len(ids)) or columns.dtype != np.uint64 or ids.dtype != np.int64:
            raise ValueError("the sorted hash arrays do not fit together")
        return cls(columns, ids)

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The rows as arrays for :meth:`from_arrays`."""
        return {"columns": self._columns, "ids": self._ids}

    def rows(self) -> tuple[_I64, _U64]:
        """Copies of the ids and words of every row (in hash order)."""
        return self._ids.copy(), np.ascontiguousarray(self._columns.T)

    def search_many(
        self, queries: Sequence[bytes], *, limit: int | None = None
    ) -> list[list[tuple[int, int]]]:
        """``(id, 0)`` for every row equal to each query, by id; at most ``limit`` each.

        Raises:
            ValueError: a query is not 32 bytes (named by its position).
        """
        checked = [_check_query(q, f"queries[{i}]") for i, q in enumerate(queries)]
        if not checked or not len(self._ids):
            return [[] for _ in checked]
        qwords = hashes_to_words(checked)
        first = self._columns[0]
        lows = np.searchsorted(first, qwords[:, 0], side="left")
        highs = np.searchsorted(first, qwords[:, 0], side="right")
        results: list[list[tuple[int, int]]] = [[] for _ in checked]
        # Most queries miss on the first word: only the others go further.
        for i in np.flatnonzero(highs > lows).tolist():
            lo, hi = int(lows[i]), int(highs[i])
            for k in (1, 2, 3):
                column = self._columns[k, lo:hi]
                value = qwords[i, k]
                left = int(np.searchsorted(column, value, side="left"))
                right = int(np.searchsorted(column, value, side="right"))
                lo, hi = lo + left, lo + right
                if lo == hi:
                    break
            else:
                end = hi if limit is None else min(hi, lo + limit)
                results[i] = [(int(row_id), 0) for row_id in self._ids[lo:end].tolist()]
        return results


def _bucket_bits_for(n: int) -> int:
    # Four to eight buckets a row: most probes find an empty bucket, answered by
    # the bitmap alone, and a bucket found holds about one row, so few
    # candidates need the exact check. Memory does not grow with the key width:
    # only non-empty buckets have an offset.
    return max(_MIN_BUCKET_BITS, min(_MAX_BUCKET_BITS, n.bit_length() + 2))


_IDENTITY = np.arange(_BITS, dtype=np.uint8)
_IDENTITY.flags.writeable = False
_ORDER_SAMPLE = 65_536
_ORDER_MIN_ROWS = 4_096
_PERMUTE_BLOCK = 131_072


def _balanced_order(words: _U64) -> npt.NDArray[np.uint8]:
    """The hash's bits in chunk order, chosen so every chunk's key spreads rows alike.

    Real PDQ hashes are skewed: some bits are set far more (or less) often
    than half the time, and a chunk of such bits crowds its buckets, so a
    query gathers many candidates there. Each bit's collision entropy,
    ``-log2(p**2 + (1 - p)**2)`` for a bit set with probability ``p`` (1 for
    a fair bit, less for a skewed one), is measured on a sample of the rows;
    the three lowest go to the unused tail, and the others are dealt to the
    chunks largest first, each to the chunk with the least entropy so far,
    so every chunk's keys are about equally selective. Any order is exact:
    chunks stay disjoint. Small indexes keep the positional order.
    """
    n = len(words)
    if n < _ORDER_MIN_ROWS:
        return _IDENTITY
    sample = words[:: max(1, n // _ORDER_SAMPLE)]
    bits = np.unpackbits(np.ascontiguousarray(sample, dtype=">u8").view(np.uint8), axis=1)
    p = bits.mean(axis=0, dtype=np.float64)
    entropy = -np.log2(p * p + (1 - p) * (1 - p))
    by_entropy = np.argsort(-entropy, kind="stable")
    kept, dropped = by_entropy[: _CHUNKS * _CHUNK_BITS], by_entropy[_CHUNKS * _CHUNK_BITS :]
    chunks: list[list[int]] = [[] for _ in range(_CHUNKS)]
    sums = [0.0] * _CHUNKS
    for bit in kept.tolist():
        c = min((c for c in range(_CHUNKS) if len(chunks[c]) < _CHUNK_BITS), key=sums.__getitem__)
        chunks[c].append(bit)
        sums[c] += float(entropy[bit])
    order = np.array([b for chunk in chunks for b in chunk] + dropped.tolist(), dtype=np.uint8)
    return order


def _permute_bits(words: _U64, order: npt.NDArray[np.uint8]) -> _U64:
    """``words`` with bit ``i`` of each row taken from bit ``order[i]`` (positional: as is)."""
    if order is _IDENTITY or bool(np.array_equal(order, _IDENTITY)):
        return words
    out = np.empty_like(words)
    for lo in range(0, len(words), _PERMUTE_BLOCK):
        block = np.ascontiguousarray(words[lo : lo + _PERMUTE_BLOCK], dtype=">u8").view(np.uint8)
        bits = np.take(np.unpackbits(block, axis=1), order, axis=1)
        packed = np.ascontiguousarray(np.packbits(bits, axis=1))
        out[lo : lo + len(block)] = packed.view(">u8").astype(np.uint64)
    return out


def _directory(
    sorted_keys: Iterable[npt.NDArray[np.int32]], bits: int
) -> tuple[_U64, npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """The bucket directory of every chunk from each chunk's keys in permutation order.

    The keys come one chunk at a time (only one chunk's are held at once: at
    20M rows each chunk's are 80 MB).

    Returns ``(present, rank, starts)``: bucket ``b`` of chunk ``c`` is number
    ``g = c << bits | b``; bit ``g`` of ``present`` (64 to a word, least
    significant first) says whether it holds a row; ``rank[w]`` counts the
    set bits before word ``w``; the ``i``-th non-empty bucket (by ``g``) is
    ``perm[starts[i]:starts[i + 1]]``, positions in the concatenated
    per-chunk permutations.
    """
    flags = np.zeros(_CHUNKS << bits, dtype=bool)
    starts = []
    total = 0
    for c, keys in enumerate(sorted_keys):
        first = np.flatnonzero(np.concatenate(([len(keys) > 0], keys[1:] != keys[:-1])))
        flags[(c << bits) + keys[first].astype(np.int64)] = True
        starts.append((first + total).astype(np.int32))
        total += len(keys)
    starts.append(np.array([total], dtype=np.int32))
    present = np.packbits(flags, bitorder="little").view("<u8").astype(np.uint64)
    del flags
    counts = np.bitwise_count(present).astype(np.int64)
    rank = (np.cumsum(counts) - counts).astype(np.int32)
    return present, rank, np.concatenate(starts)


def _directory_fits(
    present: _U64, rank: npt.NDArray[np.int32], starts: npt.NDArray[np.int32], n: int
) -> bool:
    """Cheap checks (whatever the size) that a mapped directory is consistent with ``n`` rows."""
    if not len(present) or not len(starts):
        return False
    buckets = int(rank[-1]) + int(np.bitwise_count(present[-1]))
    return (
        int(rank[0]) == 0
        and len(starts) == buckets + 1
        and int(starts[0]) == 0
        and int(starts[-1]) == _CHUNKS * n
    )


@lru_cache(maxsize=64)
def _flip_masks(bits: int, radius: int) -> npt.NDArray[np.int64]:
    """Every ``bits``-bit mask with at most ``radius`` bits set, as int64."""
    masks = [0]
    level = [(0, -1)]  # (mask, highest bit set) for masks of the current weight
    for _ in range(min(radius, bits)):
        level = [(m | (1 << j), j) for m, high in level for j in range(high + 1, bits)]
        masks.extend(m for m, _ in level)
    out = np.array(masks, dtype=np.int64)
    out.flags.writeable = False
    return out


def _extract(words: _U64, start: int, nbits: int) -> npt.NDArray[np.int32]:
    """Bits ``[start, start + nbits)`` of each 256-bit row (bit 0 = most significant)."""
    word, offset = divmod(start, 64)
    mask = np.uint64((1 << nbits) - 1)
    if offset + nbits <= 64:
        value = (words[:, word] >> np.uint64(64 - offset - nbits)) & mask
    else:
        low_bits = offset + nbits - 64
        high = (words[:, word] << np.uint64(low_bits)) & mask
        value = high | (words[:, word + 1] >> np.uint64(64 - low_bits))
    return value.astype(np.int32)


def _within(words: _U64, qwords: _U64, max_distance: int) -> tuple[_I64, _I64]:
    """Positions and distances of the ``words`` rows within ``max_distance`` of ``qwords``.

    ``words`` is a ``(k, 4)`` array the caller owns (XORed in place);
    ``qwords`` one query's words or one query's per row. As in :func:`_scan`,
    the four per-word popcounts are summed in one uint32 multiply and
    compared before anything is widened; the one sum that wraps (distance
    256 to 0) is dropped among the few rows kept.
    """
    np.bitwise_xor(words, qwords, out=words)
    counts = np.bitwise_count(words).view(np.uint32).ravel()
    summed = counts * np.uint32(0x01010101)
    keep = np.flatnonzero(summed < np.uint32((max_distance + 1) << 24))
    keep = keep[counts[keep] != np.uint32(0x40404040)]
    return keep, (summed[keep] >> np.uint32(24)).astype(np.int64)


def _scan(words: _U64, begin: int, end: int, qwords: _U64, max_distance: int) -> _I64:
    """Rows in ``[begin, end)`` that may be within ``max_distance`` (a superset).

    Per-word popcounts are summed in one uint32 multiply: the top byte of
    ``counts * 0x01010101`` is the sum of the four bytes modulo 256. Only a hash
    at distance exactly 256 wraps to 0; the caller's exact check removes it.
    """
    limit = np.uint32((max_distance + 1) << 24)
    spread = np.uint32(0x01010101)
    block = min(_SCAN_BLOCK, max(end - begin, 1))
    xor = np.empty((block, 4), dtype=np.uint64)
    counts = np.empty((block, 4), dtype=np.uint8)
    hits = []
    for lo in range(begin, end, block):
        hi = min(lo + block, end)
        size = hi - lo
        np.bitwise_xor(words[lo:hi], qwords, out=xor[:size])
        np.bitwise_count(xor[:size], out=counts[:size])
        summed = counts[:size].view(np.uint32).ravel() * spread
        found = np.flatnonzero(summed < limit)
        if len(found):
            hits.append(found + lo)
    if not hits:
        return np.empty(0, dtype=np.int64)
    return np.concatenate(hits).astype(np.int64)


def _check_distance(max_distance: int) -> None:
    if (
        isinstance(max_distance, bool)
        or not isinstance(max_distance, int | np.integer)
        or not 0 <= max_distance <= MAX_DISTANCE_CAP
    ):
        raise ValueError(
            f"max_distance: expected an integer from 0 to {MAX_DISTANCE_CAP}, got {max_distance!r}"
        )


def _check_query(query: object, field: str) -> bytes:
    if not isinstance(query, bytes | bytearray | memoryview):
        raise ValueError(f"{field}: expected {HASH_BYTES} bytes, got {type(query).__name__}")
    data = bytes(query)
    if len(data) != HASH_BYTES:
        raise ValueError(f"{field}: expected {HASH_BYTES} bytes, got {len(data)}")
    return data


def hashes_to_words(hashes: Sequence[bytes] | npt.NDArray[Any]) -> _U64:
    """Hashes as a ``(n, 4)`` uint64 array of their big-endian words (what the index stores).

    Args:
        hashes: 32-byte values, either a sequence of bytes or a ``(n, 32)`` uint8 array.

    Raises:
        ValueError: a hash is not 32 bytes (named by its position).
    """
    if isinstance(hashes, np.ndarray):
        if hashes.dtype != np.uint8 or hashes.ndim != 2 or hashes.shape[1] != HASH_BYTES:
            raise ValueError(
                f"hashes: expected a (n, {HASH_BYTES}) uint8 array, "
                f"got shape {hashes.shape} dtype {hashes.dtype}"
            )
        raw = np.ascontiguousarray(hashes)
        return raw.view(">u8").reshape(len(raw), 4).astype(np.uint64)
    try:
        joined = b"".join(hashes)
        lengths_ok = set(map(len, hashes)) <= {HASH_BYTES}
    except TypeError:
        lengths_ok = False
    if not lengths_ok:
        # Slow path only to name the first bad item.
        for i, value in enumerate(hashes):
            if not isinstance(value, bytes | bytearray | memoryview):
                raise ValueError(
                    f"hashes[{i}]: expected {HASH_BYTES} bytes, got {type(value).__name__}"
                )
            if len(value) != HASH_BYTES:
                raise ValueError(f"hashes[{i}]: expected {HASH_BYTES} bytes, got {len(value)}")
    return np.frombuffer(joined, dtype=">u8").reshape(len(hashes), 4).astype(np.uint64)


def _ids_to_array(ids: Sequence[int] | npt.NDArray[Any]) -> _I64:
    if isinstance(ids, np.ndarray):
        array = ids
    elif len(ids) == 0:
        return np.empty(0, dtype=np.int64)
    else:
        try:
            array = np.array(ids)
        except (OverflowError, ValueError, TypeError):
            array = np.array(ids, dtype=object)
        if array.ndim != 1 or array.dtype != np.int64:
            # Slow path only to name the first bad item.
            for i, value in enumerate(ids):
                if isinstance(value, bool) or not isinstance(value, int | np.integer):
                    raise ValueError(f"ids[{i}]: expected an integer, got {type(value).__name__}")
                if not -(2**63) <= value < 2**63:
                    raise ValueError(f"ids[{i}]: expected a signed 64-bit integer, got {value}")
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"ids: expected a 1-d integer array, got dtype {array.dtype}")
    if array.dtype == np.uint64 and len(array) and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError("ids: every id must fit in a signed 64-bit integer")
    return array.astype(np.int64)
