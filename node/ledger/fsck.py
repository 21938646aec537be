"""Check a held log: the log against its signed checkpoints, derived data against the log.

Layer: node.ledger. Reads through :mod:`node.storage`; :func:`repair_derived`
writes in one transaction.

What a node stores falls in two kinds:

* **The log**: entry bytes and the signed checkpoints. Nothing on this node
  can recompute them; a damaged entry is found because its leaves no longer
  hash to the roots its own signed checkpoints commit to, and only a peer
  holding the same log can give it back (``hashmesh repair --from-peers``).
* **Derived data**: each entry's stored leaf hash, the stored tree nodes,
  the ``active`` index (hash -> listing entry; what matching and duplicate
  checks read, and what ``status`` counts), ``pdq`` rows, ``opinions``, the
  ``retractions`` table and the current verifier key of each log. All of it
  follows from the entries; :func:`repair_derived` rebuilds it from a log
  that verifies.

SQLite's ``integrity_check`` sees neither kind of damage when a flipped byte
still leaves a well-formed page (a changed entry number in ``active`` makes a
listed hash silently stop matching), so :class:`LogScan` replays the log:
it hashes every entry, rebuilds the tree and the derived rows as the write
path (:mod:`node.ledger.integration`) would, and compares. The scan is
incremental (:meth:`LogScan.scan` takes a slice at a time), which is how the
background scrub of ``hashmesh serve`` (:mod:`node.ledger.scrub`) uses it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy

from node.errors import StorageError
from node.ledger.rotation import load_key_chain
from node.storage.ledger_store import LedgerStore, LogRecord
from node.storage.schema import TILE_LEVEL, active_key, active_keys
from protocol.entry import (
    AddEntry,
    Entry,
    OpinionEntry,
    RetractEntry,
    parse_entries,
    parse_entry,
)
from protocol.errors import ProtocolError
from protocol.hashing import hash_leaves
from protocol.rotation import KeyChain
from protocol.tree import CompactRange

__all__ = [
    "DERIVED_TABLES",
    "Finding",
    "LogScan",
    "RepairProgress",
    "RepairRange",
    "ScanProgress",
    "check_log",
    "entries_part",
    "guard_findings",
    "plan_repair",
    "repair_derived",
    "restore_entries",
]

DERIVED_TABLES = ("active", "active_base", "pdq", "opinions", "retractions", "nodes")
"""Tables :func:`repair_derived` rebuilds from the log (plus ``entries.leaf_hash``).

Both levels of ``active`` are emptied; the rebuilt rows go to ``active`` and
are merged into ``active_base`` later (:mod:`node.ledger.active_levels`).
"""

_BATCH = 20_000  # entries read and hashed at a time
_SHOWN = 5  # findings of one kind listed before they are counted
_CHUNK = 1 << 20  # entries compared at a time once the log is scanned
_SORT_ALL = 1 << 22  # up to this many entries, the keys are sorted all at once

# What the scan learnt of each entry, one byte an entry (``_Expected.flags``).
_ADD = 1  # an add
_PDQ = 2  # an add of a PDQ hash
_PDQ_ROW = 4  # a ``pdq`` row names the entry
_PDQ_DIFF = 8  # ... with another hash than the entry's
_SEEN = 16  # an ``active`` row names the entry
_LISTED = 32  # the add lists its hash (known once the whole log is scanned)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing found wrong.

    Attributes:
        origin: the log it concerns.
        part: ``log`` (entries or checkpoints: only a peer can restore them)
            or ``derived`` (rebuilt by ``hashmesh fsck --repair``).
        table: where it was found (``entries``, ``checkpoints``, ``active``, ...).
        index: the first entry index concerned, when there is one.
        detail: what is wrong, in one line.
    """

    origin: str
    part: str
    table: str
    index: int | None
    detail: str

    def __str__(self) -> str:
        at = "" if self.index is None else f" at entry {self.index}"
        return f"{self.origin}: {self.table}{at}: {self.detail}"

    def to_json(self) -> dict[str, object]:
        """The finding as a JSON object (``fsck --json``, ``status --json``)."""
        return {
            "origin": self.origin,
            "part": self.part,
            "table": self.table,
            "index": self.index,
            "detail": self.detail,
        }


@dataclass(slots=True)
class _Expected:
    """Derived rows rebuilt from the entries scanned so far.

    Memory is 9 bytes an entry (``keys`` and ``flags``, numpy arrays sized
    to the log when the scan starts; pages are touched only as the scan
    reaches them) plus the retraction and opinion entries themselves: a
    100M-entry log costs 0.9 GB, not a Python object per entry. The ``pdq``
    rows are compared slice by slice as the scan reads them; the ``active``
    rows chunk by chunk once it is done.
    """

    keys: numpy.ndarray[Any, numpy.dtype[numpy.int64]]  # active key of each add (0: not an add)
    flags: numpy.ndarray[Any, numpy.dtype[numpy.uint8]]  # _ADD, _PDQ, ... of each entry
    retractions: dict[int, int] = field(default_factory=dict)  # target -> retracting index
    opinions: list[tuple[int, str, int, bytes, str]] = field(default_factory=list)
    leaf_fixes: list[tuple[int, bytes]] = field(default_factory=list)  # index, true leaf hash

    @classmethod
    def sized(cls, size: int) -> _Expected:
        return cls(numpy.zeros(size, numpy.int64), numpy.zeros(size, numpy.uint8))


class LogScan:
    """A replay of one log from its first entry, a slice at a time.

    Call :meth:`scan` until :attr:`done`, then :meth:`derived_findings`.
    Findings about the log itself stop the scan at the first bad index
    (everything after it is unverifiable here); findings about derived data
    are collected and the scan goes on.
    """

    def __init__(self, store: LedgerStore, log: LogRecord, *, resume_from: int = 0) -> None:
        """Begin a replay of ``log`` (reads its checkpoints).

        Args:
            store: the database.
            log: the log to replay.
            resume_from: the size of a signed checkpoint to start at instead
                of the first entry (the scrub after a restart). Used only if
                the stored tree frontier at that size reproduces the signed
                root; the scan is then :attr:`partial`: it checks the log from
                there on, but not the derived tables (they need the whole log).
        """
        self.log = log
        self.position = 0
        """Entries scanned so far."""
        self.partial = False
        """Resumed at :attr:`position`: the entries before it were checked by an earlier pass."""
        self.findings: list[Finding] = []
        self.first_bad_index: int | None = None
        """The first entry that does not verify against the signed checkpoints."""
        self.checkpoints_checked = 0
        self.verified_size = 0
        """The largest checkpoint size whose root the entries reproduced."""
        self._tree = CompactRange.empty()
        self._counts: dict[str, int] = {}
        self._sizes = _checkpoint_sizes(store, log, self)
        self.size = store.entry_count(log.log_id)
        """Entries held when the scan started (a replica may hold more than it has signed)."""
        self._held = self.size  # entries held when the derived tables are compared
        self.signed_size = self._sizes[-1][0] if self._sizes else 0
        """Size of the latest checkpoint whose signature verifies."""
        if 0 < resume_from <= self.size:
            self._resume(store, resume_from)
        # A resumed scan compares no derived table: it keeps nothing per entry.
        self._expected = _Expected.sized(0 if self.partial else self.size)
        self._listed_marked = False
        self._released = False
        if self.signed_size > self.size:
            self._log_finding(
                "entries",
                self.size,
                f"the latest checkpoint has size {self.signed_size:,} but only {self.size:,} "
                "entries are stored",
            )

    def _resume(self, store: LedgerStore, size: int) -> None:
        root = dict(self._sizes).get(size)
        if root is None:
            return
        try:
            tree = store.load_compact_range(self.log.log_id, size)
        except StorageError:
            return  # a stored node is missing: start from the first entry
        # The stored frontier is derived data: trusted only because it gives
        # the root our own signed checkpoint commits to.
        if tree.root() == root:
            self._tree = tree
            self.position = self.verified_size = size
            self.partial = True

    @property
    def sizes(self) -> list[tuple[int, bytes]]:
        """(size, root) of every stored checkpoint whose signature verifies, by size."""
        return list(self._sizes)

    @property
    def done(self) -> bool:
        """Every entry has been scanned, or the log itself was found damaged."""
        return self.first_bad_index is not None or self.position >= self.size

    @property
    def log_damaged(self) -> bool:
        """The entries or checkpoints do not verify: only a peer can repair them."""
        return any(f.part == "log" for f in self.findings)

    def scan(self, store: LedgerStore, limit: int = _BATCH) -> int:
        """Scan up to ``limit`` more entries; returns how many were scanned."""
        if self.done:
            return 0
        start = self.position
        end = min(self.size, start + limit)
        indexes: list[int] = []
        datas: list[bytes] = []
        stored: list[bytes] = []
        for idx, data, leaf_hash in store.iter_entries(self.log.log_id, start, end):
            # A flipped byte in a record header can change a column's type:
            # the row says bytes, the file may hold text, a number or NULL.
            value: object = data
            if not isinstance(value, bytes):
                self._log_finding("entries", int(idx), f"entry stored as {type(value).__name__}")
                return 0
            held: object = leaf_hash
            indexes.append(int(idx))
            datas.append(value)
            stored.append(held if isinstance(held, bytes) else b"")
        expected_indexes = range(start, start + len(indexes))
        if indexes != list(expected_indexes) or len(indexes) != end - start:
            missing = next(
                (i for i, got in zip(expected_indexes, indexes, strict=False) if i != got),
                start + len(indexes),
            )
            self._log_finding("entries", missing, "entry missing from the database")
            return 0
        leaves = hash_leaves(datas)
        # Checkpoint sizes inside the slice: the tree is checked at each.
        at = start
        for size, root in [s for s in self._sizes if start < s[0] <= end]:
            if not self._extend(store, leaves[at - start : size - start], at):
                return at - start
            at = size
            if self._tree.root() != root:
                self._root_mismatch(start, size, stored, leaves)
                return at - start
            self.verified_size = size
        if not self._extend(store, leaves[at - start :], at):
            return end - start
        self._replay(store, start, datas, stored, leaves)
        self.position = end
        return end - start

    def _extend(self, store: LedgerStore, leaves: Sequence[bytes], start: int) -> bool:
        runs = self._tree.extend(leaves, collect=True, min_level=TILE_LEVEL)
        for run in runs:
            got = store.node_hashes(
                self.log.log_id, run.level, run.start, run.start + len(run.hashes)
            )
            for offset, computed in enumerate(run.hashes):
                index = run.start + offset
                if got.get(index) != computed:
                    first_leaf = index << run.level
                    state = "missing" if index not in got else "wrong"
                    self._derived(
                        "nodes",
                        first_leaf,
                        f"stored tree node (level {run.level}, index {index}) is {state}",
                    )
        return True

    def _root_mismatch(
        self, start: int, size: int, stored: Sequence[bytes], leaves: Sequence[bytes]
    ) -> None:
        # The first entry whose bytes no longer hash to its stored leaf hash
        # is where the damage starts (both are written together); earlier
        # slices since the last verified checkpoint count too: what they took
        # for a wrong stored leaf hash was this damage. Without one, the
        # damage lies after the previous checkpoint, where exactly we cannot tell.
        here = (start + i for i, (s, h) in enumerate(zip(stored, leaves, strict=False)) if s != h)
        earlier = [i for i, _leaf in self._expected.leaf_fixes if i >= self.verified_size]
        bad = min([*earlier, *here], default=None)
        if earlier:
            self.findings = [
                f
                for f in self.findings
                if not (
                    f.table == "entries" and f.index is not None and f.index >= self.verified_size
                )
            ]
        index = bad if bad is not None else self.verified_size
        self._log_finding(
            "entries",
            index,
            f"entries do not hash to the root of the signed checkpoint of size {size:,}",
        )

    def _replay(
        self,
        store: LedgerStore,
        start: int,
        datas: Sequence[bytes],
        stored: Sequence[bytes],
        leaves: Sequence[bytes],
    ) -> None:
        expected = self._expected
        if stored != leaves:
            for offset, (held, leaf) in enumerate(zip(stored, leaves, strict=True)):
                if held != leaf:
                    # The tree (from the entry bytes) verified: the column is wrong.
                    index = start + offset
                    self._derived(
                        "entries", index, "stored leaf hash differs from the entry's hash"
                    )
                    expected.leaf_fixes.append((index, leaf))
        try:
            # The fast parser, proven to agree with parse_entry (tests/protocol).
            entries: Sequence[Entry] = parse_entries(datas, start)
        except ProtocolError:
            entries = []
            for offset, data in enumerate(datas):
                try:
                    entries.append(parse_entry(data))
                except ProtocolError as e:
                    self._log_finding("entries", start + offset, f"entry does not parse: {e}")
                    break
        adds: list[int] = []
        identities: list[tuple[str, str]] = []
        pdq: dict[int, str] = {}  # index -> hex value of this slice's PDQ adds
        for offset, entry in enumerate(entries):
            if type(entry) is AddEntry:
                adds.append(start + offset)
                identities.append((entry.signal_type, entry.value))
                if entry.signal_type == "pdq":
                    pdq[start + offset] = entry.value
            elif isinstance(entry, RetractEntry):
                expected.retractions[entry.index] = start + offset
            elif isinstance(entry, OpinionEntry):
                expected.opinions.append(
                    (start + offset, entry.origin, entry.index, entry.leaf_hash, entry.verdict)
                )
        if self.partial:
            return
        flags = expected.flags
        at = numpy.fromiter(adds, dtype=numpy.int64, count=len(adds))
        expected.keys[at] = numpy.fromiter(active_keys(identities), numpy.int64, len(adds))
        flags[at] |= _ADD
        if pdq:
            flags[numpy.fromiter(pdq, dtype=numpy.int64, count=len(pdq))] |= _PDQ
        # This slice's pdq rows, read now rather than held for the end: rows
        # of entries below the scan's size change afterwards only through a
        # retraction by a later entry, and those targets are not judged.
        end = start + len(datas)
        for idx, held_hash in store.derived_rows(self.log.log_id, "pdq", start, end):
            value = pdq.get(idx)
            flags[idx] |= (
                _PDQ_ROW
                if value is not None and held_hash == bytes.fromhex(value)
                else _PDQ_ROW | _PDQ_DIFF
            )

    def _log_finding(self, table: str, index: int | None, detail: str) -> None:
        if self.first_bad_index is None or (index is not None and index < self.first_bad_index):
            self.first_bad_index = index if index is not None else 0
        self.findings.append(Finding(self.log.origin, "log", table, index, detail))

    def _derived(self, table: str, index: int | None, detail: str) -> None:
        count = self._counts.get(table, 0) + 1
        self._counts[table] = count
        if count <= _SHOWN:
            self.findings.append(Finding(self.log.origin, "derived", table, index, detail))

    # -- derived tables, once every entry is scanned ---------------------------

    def derived_findings(self, store: LedgerStore) -> list[Finding]:
        """Compare the derived tables with what the scanned log says; adds to :attr:`findings`.

        Only rows about the :attr:`size` entries scanned are compared, so a
        scan spread over time (the scrub) is not misled by entries appended
        since it started: rows of later entries are skipped, and so are the
        entries a later retraction changed.
        """
        if not self.done or self.log_damaged or self.partial or self._released:
            return []
        before = len(self.findings)
        log_id = self.log.log_id
        self._held = store.entry_count(log_id)
        later = {
            target
            for target, by in store.derived_rows(log_id, "retractions")
            if isinstance(by, int) and by >= self.size
        }
        self._mark_listed(store)
        skip = numpy.fromiter(later, dtype=numpy.int64, count=len(later))
        skip.sort()
        self._compare_active(store, skip)
        self._compare_pdq(skip)
        self._compare_rows(
            "opinions",
            {row[0]: row[1:] for row in self._expected.opinions},
            store.derived_rows(log_id, "opinions"),
            set(),
            lambda want: f"opinion entry {'missing from' if want else 'wrongly in'} the table",
        )
        self._compare_rows(
            "retractions",
            dict(self._expected.retractions),
            [(t, b) for t, b in store.derived_rows(log_id, "retractions") if t not in later],
            set(),
            lambda want: f"retraction state {'missing' if want else 'wrong'}",
        )
        for table, count in self._counts.items():
            if count > _SHOWN:
                self.findings.append(
                    Finding(
                        self.log.origin,
                        "derived",
                        table,
                        None,
                        f"{count - _SHOWN:,} more rows wrong (first {_SHOWN} listed)",
                    )
                )
        return self.findings[before:]

    def _mark_listed(self, store: LedgerStore) -> None:
        """Flag the listing add of each listed hash, as the write path leaves them.

        A hash is listed by its first add not yet retracted; a later add of
        the same hash (kept verbatim by a replica) lists nothing. Adds whose
        key is shared by another add, and retracted adds, are replayed
        exactly from the entries; the rest (nearly all) are listed as they
        stand. Shared keys are found by sorting the keys one slice of the
        key space at a time (16 slices past :data:`_SORT_ALL` entries), so
        the sort's copy is a sixteenth of the keys, not all of them.
        """
        self._listed_marked = True
        keys, flags = self._expected.keys, self._expected.flags
        shift = 60 if self.size > _SORT_ALL else 64
        shared: list[numpy.ndarray[Any, numpy.dtype[numpy.int64]]] = []
        for part in range(1 << (64 - shift)):
            picked = []
            for lo in range(0, self.size, _CHUNK):
                mine = (flags[lo : lo + _CHUNK] & _ADD) != 0
                chunk = keys[lo : lo + _CHUNK]
                if shift < 64:
                    mine &= (chunk >> shift) + (1 << (64 - shift - 1)) == part
                picked.append(chunk[mine])
            part_keys = numpy.sort(numpy.concatenate(picked)) if picked else keys[:0]
            del picked
            shared.append(numpy.unique(part_keys[1:][part_keys[1:] == part_keys[:-1]]))
            del part_keys
        twice = numpy.sort(numpy.concatenate(shared))
        retracted = numpy.fromiter(self._expected.retractions, dtype=numpy.int64)
        retracted.sort()
        special: list[int] = []
        for lo in range(0, self.size, _CHUNK):
            f = flags[lo : lo + _CHUNK]
            adds = (f & _ADD) != 0
            odd = adds & (
                _member(keys[lo : lo + _CHUNK], twice)
                | _member(numpy.arange(lo, lo + len(f), dtype=numpy.int64), retracted)
            )
            f[adds & ~odd] |= _LISTED
            special += (numpy.flatnonzero(odd) + lo).tolist()
        if special:
            replayed = self._replay_listing(store, special)
            at = numpy.fromiter(replayed, dtype=numpy.int64, count=len(replayed))
            flags[at] |= _LISTED
            keys[at] = numpy.fromiter(replayed.values(), dtype=numpy.int64, count=len(replayed))

    def listed_chunks(
        self,
    ) -> Iterator[
        tuple[
            numpy.ndarray[Any, numpy.dtype[numpy.int64]],
            numpy.ndarray[Any, numpy.dtype[numpy.int64]],
        ]
    ]:
        """The listing add of each listed hash and its active key, by index, a chunk at a time.

        Known once :meth:`derived_findings` ran: two arrays (entry index, active key).
        """
        flags = self._expected.flags
        for lo in range(0, self.size, _CHUNK):
            at = numpy.flatnonzero(flags[lo : lo + _CHUNK] & _LISTED) + lo
            yield at, self._expected.keys[at]

    def _replay_listing(self, store: LedgerStore, adds: list[int]) -> dict[int, int]:
        datas = store.entries_by_index(self.log.log_id, adds)
        events: list[tuple[int, int, tuple[str, str]]] = []  # (index, 0 add / 1 retract, identity)
        identities: dict[int, tuple[str, str]] = {}
        for idx in adds:
            entry = parse_entry(datas[idx])
            assert isinstance(entry, AddEntry)
            identities[idx] = entry.identity
            events.append((idx, 0, entry.identity))
        targets: dict[int, int] = {}  # retracting index -> target
        for target, by in self._expected.retractions.items():
            if target in identities:
                events.append((by, 1, identities[target]))
                targets[by] = target
        current: dict[tuple[str, str], int] = {}
        for idx, kind, identity in sorted(events):
            if kind == 0:
                current.setdefault(identity, idx)
            elif current.get(identity) == targets[idx]:
                del current[identity]
        return {idx: active_key(*identity) for identity, idx in current.items()}

    def _compare_active(
        self, store: LedgerStore, skip: numpy.ndarray[Any, numpy.dtype[numpy.int64]]
    ) -> None:
        """Each ``active`` row against the flags, a chunk of rows at a time.

        ``skip``: sorted entries a retraction appended since the scan began
        changed (not judged).
        """
        keys, flags = self._expected.keys, self._expected.flags
        size, held = self.size, self._held
        for lo in range(0, size, _CHUNK):
            flags[lo : lo + _CHUNK] &= ~numpy.uint8(_SEEN)  # a second call starts afresh
        twice: list[int] = []
        extra: list[int] = []
        wrong: list[int] = []
        total = 0
        for have_idx, have_key in store.active_chunks(self.log.log_id):
            # Rows of entries appended since the scan began are not judged;
            # rows naming entries that do not exist at all are wrong.
            inside = (have_idx >= 0) & (have_idx < size)
            outside = have_idx[~inside & ((have_idx < size) | (have_idx >= held))]
            judged = inside & ~_member(have_idx, skip)
            idx, key = have_idx[judged], have_key[judged]
            before = flags[idx]
            _unique, first = numpy.unique(idx, return_index=True)
            new = numpy.zeros(len(idx), dtype=bool)
            new[first] = True
            new &= (before & _SEEN) == 0
            flags[idx] |= _SEEN
            repeated = idx[~new]
            idx, key, before = idx[new], key[new], before[new]
            listed = (before & _LISTED) != 0
            unlisted = numpy.concatenate([outside, idx[~listed]])
            bad_key = idx[listed & (key != keys[idx])]
            total += len(repeated) + len(unlisted) + len(bad_key)
            twice = _lowest(twice, repeated)
            extra = _lowest(extra, unlisted)
            wrong = _lowest(wrong, bad_key)
        missing: list[int] = []
        for lo in range(0, size, _CHUNK):
            f = flags[lo : lo + _CHUNK]
            lost = numpy.flatnonzero((f & (_LISTED | _SEEN)) == _LISTED) + lo
            lost = lost[~_member(lost, skip)]
            total += len(lost)
            missing = _lowest(missing, lost)
        problems = (
            [(i, "entry listed twice in the active index") for i in twice]
            + [
                (i, "listed hash missing from the active index: it would not match")
                for i in missing
            ]
            + [(i, "active index names an entry that lists nothing") for i in extra]
            + [(i, "active index holds the wrong key: the hash would not match") for i in wrong]
        )
        for index, detail in sorted(problems)[:_SHOWN]:
            self._derived("active", index, detail)
        # The rest are counted, not listed.
        self._counts["active"] = self._counts.get("active", 0) + max(0, total - _SHOWN)

    def _compare_pdq(self, skip: numpy.ndarray[Any, numpy.dtype[numpy.int64]]) -> None:
        """The ``pdq`` rows the scan saw against the listed PDQ adds, a chunk at a time."""
        flags = self._expected.flags
        for lo in range(0, self.size, _CHUNK):
            f = flags[lo : lo + _CHUNK]
            want = (f & (_PDQ | _LISTED)) == (_PDQ | _LISTED)
            have = (f & _PDQ_ROW) != 0
            bad = numpy.flatnonzero((want != have) | (want & ((f & _PDQ_DIFF) != 0)))
            bad = bad[~_member(bad + lo, skip)]
            for offset in bad.tolist():
                self._derived(
                    "pdq",
                    lo + offset,
                    f"listed PDQ hash {'missing from' if want[offset] else 'wrongly in'} the index",
                )

    def _compare_rows(
        self,
        table: str,
        want: dict[int, object],
        rows: Sequence[tuple[int, object]],
        skip: set[int],
        describe: Callable[[bool], str],
    ) -> None:
        got = {idx: value for idx, value in rows if idx < self.size and idx not in skip}
        for idx in sorted((set(want) | set(got)) - skip):
            if want.get(idx) != got.get(idx):
                self._derived(table, idx, describe(idx in want))

    def release(self) -> None:
        """Let go of what the scan learnt of each entry (the findings stay; no rebuild after)."""
        self._expected = _Expected.sized(0)
        self._released = True

    # -- repair ------------------------------------------------------------

    def rebuild(self, store: LedgerStore, progress: Callable[[int], None] | None = None) -> None:
        """Write this log's derived rows as the scan computed them (inside a transaction).

        ``progress`` is called with the entries whose tree nodes are rewritten so far.
        """
        if not self.done or self.log_damaged or self.partial or self._released:
            raise StorageError(
                f"log {self.log.origin} was not replayed whole and verified; its derived "
                "data is not rebuilt"
            )
        log_id = self.log.log_id
        if not self._listed_marked:
            self._mark_listed(store)
        keys, flags = self._expected.keys, self._expected.flags
        store.fill_derived(
            log_id,
            active=([], []),
            pdq=[],
            opinions=self._expected.opinions,
            retractions=sorted(self._expected.retractions.items()),
            leaf_fixes=self._expected.leaf_fixes,
        )
        # The active rows go in by key, in chunks, so the inserts walk the
        # table's B-tree once: 24 bytes a listed hash while they are written
        # (their entry indexes and the key order), not Python lists of them.
        listed = numpy.concatenate([at for at, _keys in self.listed_chunks()])
        order = numpy.argsort(keys[listed], kind="stable")
        for lo in range(0, len(order), _CHUNK):
            at = listed[order[lo : lo + _CHUNK]]
            store.fill_derived(
                log_id,
                active=(keys[at].tolist(), at.tolist()),
                pdq=[],
                opinions=[],
                retractions=[],
                leaf_fixes=[],
            )
        del listed, order
        tree = CompactRange.empty()
        for start in range(0, self.size, _BATCH):
            datas = [bytes(d) for _i, d, _h in store.iter_entries(log_id, start, start + _BATCH)]
            runs = tree.extend(hash_leaves(datas), collect=True, min_level=TILE_LEVEL)
            store.append_entries(log_id, start, [], [], runs)
            # The listed PDQ hashes, read again from their entries here (in
            # index order, as the pdq table is keyed) instead of held.
            f = flags[start : start + len(datas)]
            pdq = numpy.flatnonzero((f & (_PDQ | _LISTED)) == (_PDQ | _LISTED)).tolist()
            rows = []
            for offset in pdq:
                entry = parse_entry(datas[offset])
                assert isinstance(entry, AddEntry)
                rows.append((start + offset, bytes.fromhex(entry.value)))
            store.fill_derived(
                log_id, active=([], []), pdq=rows, opinions=[], retractions=[], leaf_fixes=[]
            )
            if progress is not None:
                progress(start + len(datas))


def _member(
    values: numpy.ndarray[Any, numpy.dtype[numpy.int64]],
    among: numpy.ndarray[Any, numpy.dtype[numpy.int64]],
) -> numpy.ndarray[Any, numpy.dtype[numpy.bool_]]:
    """Which of ``values`` are in the sorted array ``among`` (a mask)."""
    if not len(among):
        return numpy.zeros(len(values), dtype=bool)
    at = numpy.minimum(numpy.searchsorted(among, values), len(among) - 1)
    return numpy.asarray(among[at] == values)


def _lowest(kept: list[int], more: numpy.ndarray[Any, numpy.dtype[numpy.int64]]) -> list[int]:
    """The :data:`_SHOWN` lowest of ``kept`` and ``more`` (findings listed by index)."""
    if not len(more):
        return kept
    return sorted(kept + numpy.sort(more)[:_SHOWN].tolist())[:_SHOWN]


def _checkpoint_sizes(store: LedgerStore, log: LogRecord, scan: LogScan) -> list[tuple[int, bytes]]:
    """(size, root) of every checkpoint whose note verifies with the log's key chain, by size."""
    try:
        chain: KeyChain | None = load_key_chain(store, log.origin)
    except ProtocolError as e:
        scan.findings.append(Finding(log.origin, "log", "origin_keys", None, f"key chain: {e}"))
        chain = None
    sizes: list[tuple[int, bytes]] = []
    for record in store.iter_checkpoints(log.log_id):
        scan.checkpoints_checked += 1
        if chain is None:
            continue
        try:
            cp = chain.open(record.note).checkpoint
        except ProtocolError as e:
            scan.findings.append(
                Finding(log.origin, "log", "checkpoints", None, f"checkpoint {record.size:,}: {e}")
            )
            continue
        if (cp.size, cp.root_hash) != (record.size, record.root_hash):
            scan.findings.append(
                Finding(
                    log.origin,
                    "log",
                    "checkpoints",
                    None,
                    f"checkpoint {record.size:,}: the row disagrees with its signed note",
                )
            )
            continue
        sizes.append((cp.size, cp.root_hash))
    return sizes


ScanProgress = Callable[[int], None]
"""``progress(entries)``: called after each batch of a scan with the entries scanned so far."""


def _scan_whole(
    store: LedgerStore, scan: LogScan, batch: int, progress: ScanProgress | None
) -> None:
    """Scan until done (or stuck at a finding), in the caller's read snapshot."""
    while not scan.done:
        if scan.scan(store, batch) == 0 and not scan.done:
            break
        if progress is not None:
            progress(scan.position)


def check_log(
    store: LedgerStore,
    log: LogRecord,
    *,
    batch: int = _BATCH,
    progress: ScanProgress | None = None,
    keep: bool = False,
) -> LogScan:
    """Scan a whole log and its derived data; the returned scan holds the findings.

    ``progress`` is called after each batch with the entries scanned so far
    (out of ``LogScan.size``). ``keep``: keep what the scan learnt of each
    entry (9 bytes an entry) so that :meth:`LogScan.rebuild` can write it;
    otherwise it is let go once the derived tables are compared, and
    ``fsck`` holds one log's worth at a time.
    """
    scan = LogScan(store, log)
    with store.read_snapshot():
        _scan_whole(store, scan, batch, progress)
        try:
            scan.derived_findings(store)
        except (sqlite3.Error, UnicodeDecodeError, TypeError, ValueError) as e:
            # The log verified: whatever broke is derived, and rebuilt by repair.
            scan.findings.append(
                Finding(log.origin, "derived", "derived tables", None, f"unreadable: {e}")
            )
    if not keep:
        scan.release()
    return scan


RepairProgress = Callable[[str, int, int], None]
"""``progress(part, done, total)``: entries done in each part (``check ORIGIN``, ...)."""


def repair_derived(store: LedgerStore, progress: RepairProgress | None = None) -> list[LogScan]:
    """Rebuild every derived table from every held log, in one transaction, then check again.

    Every log must verify against its signed checkpoints first: derived data
    rebuilt from a damaged log would only copy the damage. ``progress`` is
    told of each part: ``check ORIGIN``, ``rebuild ORIGIN`` and ``check again
    ORIGIN``, with its entries done and its total.

    Returns:
        The scans made after the repair (their findings should be empty).

    Raises:
        StorageError: if a log does not verify (nothing is written), or the
            rebuild fails (rolled back).
    """
    logs = store.list_logs()
    scans = [
        check_log(store, log, progress=_part(progress, "check", store, log), keep=True)
        for log in logs
    ]
    damaged = [s for s in scans if s.log_damaged]
    if damaged:
        first = damaged[0]
        raise StorageError(
            f"log {first.log.origin} is damaged from entry {first.first_bad_index}: derived "
            "data is rebuilt only from a log that verifies; run `hashmesh repair --from-peers` "
            "first (nothing was written)"
        )
    with store.joined_transaction():
        store.restore_guards()
        with store.rebuilding(DERIVED_TABLES):
            for scan in scans:
                scan.rebuild(store, _part(progress, "rebuild", store, scan.log))
                scan.release()
    return [
        check_log(store, log, progress=_part(progress, "check again", store, log)) for log in logs
    ]


def _part(
    progress: RepairProgress | None, what: str, store: LedgerStore, log: LogRecord
) -> ScanProgress | None:
    return entries_part(progress, f"{what} {log.origin}", lambda: store.entry_count(log.log_id))


def entries_part(
    progress: RepairProgress | None, part: str, total: Callable[[], int]
) -> ScanProgress | None:
    """``progress`` narrowed to one part whose total is ``total()`` entries (None: no progress).

    The part is reported at 0 at once, so a bar shows it before the first batch.
    """
    if progress is None:
        return None
    entries = total()
    progress(part, 0, entries)
    return lambda done: progress(part, done, entries)


def iter_findings(scans: Sequence[LogScan]) -> Iterator[Finding]:
    """Every finding of the scans, in order."""
    for scan in scans:
        yield from scan.findings


# -- repair of the log itself from a peer's copy ---------------------------------


@dataclass(frozen=True, slots=True)
class RepairRange:
    """Entries of a damaged log to fetch again: ``[start, end)``, then checked.

    ``start`` is the size of the last checkpoint our entries still reproduce,
    ``end`` the size of the first one they no longer do (or the first after
    the damaged entry): fetched entries in between must give exactly the root
    our own signed checkpoint of size ``end`` commits to.
    """

    origin: str
    start: int
    end: int
    first_bad_index: int


def plan_repair(
    store: LedgerStore, log: LogRecord, progress: ScanProgress | None = None
) -> RepairRange | None:
    """The first range of ``log`` to fetch again, or None when its entries verify.

    ``progress`` is called after each batch scanned with the entries so far.

    Raises:
        StorageError: if the damage lies where no signed checkpoint covers it
            (past the latest one) or in the checkpoints themselves.
    """
    scan = LogScan(store, log)
    with store.read_snapshot():
        _scan_whole(store, scan, _BATCH, progress)
    if not scan.log_damaged:
        return None
    bad = scan.first_bad_index
    if bad is None or not any(f.table == "entries" for f in scan.findings):
        first = scan.findings[0]
        raise StorageError(
            f"{first}: only damaged entries are fetched from peers; restore the database "
            "from a backup"
        )
    end = next((size for size, _root in scan.sizes if size > bad), None)
    if end is None:
        raise StorageError(
            f"log {log.origin}: entry {bad} lies past the latest signed checkpoint; no peer's "
            "copy of it can be verified here"
        )
    return RepairRange(log.origin, scan.verified_size, end, bad)


def restore_entries(
    store: LedgerStore, log: LogRecord, plan: RepairRange, datas: Sequence[bytes]
) -> int:
    """Put a peer's copy of entries ``[plan.start, plan.end)`` in place of ours, if it verifies.

    Our entries up to ``plan.start`` reproduce our own checkpoint of that
    size (checked again here, from their bytes); extended with the peer's,
    they must give the root of our own signed checkpoint of size
    ``plan.end``. Only then are the differing rows rewritten, in the caller's
    transaction. Returns how many entries were rewritten.

    Raises:
        StorageError: if the peer's entries do not give our signed root (or
            are not entries): nothing is written.
    """
    if len(datas) != plan.end - plan.start:
        raise StorageError(f"expected {plan.end - plan.start} entries, got {len(datas)}")
    sizes = dict(LogScan(store, log).sizes)
    tree = CompactRange.empty()
    for start in range(0, plan.start, _BATCH):
        chunk = store.entries_by_index(log.log_id, range(start, min(plan.start, start + _BATCH)))
        tree.extend(hash_leaves([chunk[i] for i in sorted(chunk)]))
    if tree.size != plan.start or (plan.start and tree.root() != sizes.get(plan.start)):
        raise StorageError(
            f"log {log.origin}: our entries below {plan.start} no longer verify; "
            "nothing was written"
        )
    leaves = hash_leaves(datas)
    tree.extend(leaves)
    if tree.root() != sizes.get(plan.end):
        raise StorageError(
            f"the entries {plan.start}..{plan.end - 1} offered do not give the root of our "
            f"own signed checkpoint of size {plan.end}: refused, nothing was written"
        )
    for data in datas:
        parse_entry(data)  # the root matched: a failure here is a bug, not the peer
    ours = store.entries_by_index(log.log_id, range(plan.start, plan.end))
    changed = [
        (plan.start + i, data, leaf)
        for i, (data, leaf) in enumerate(zip(datas, leaves, strict=True))
        if ours.get(plan.start + i) != data
    ]
    store.rewrite_entries(log.log_id, changed)
    return len(changed)


def guard_findings(store: LedgerStore) -> list[Finding]:
    """One finding per missing append-only trigger (``fsck --repair`` makes them again)."""
    return [
        Finding("*", "derived", "schema", None, f"append-only trigger {name} is missing")
        for name in store.missing_guards()
    ]
