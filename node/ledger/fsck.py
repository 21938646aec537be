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
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy

from node.errors import StorageError
from node.ledger.rotation import load_key_chain
from node.storage.ledger_store import LedgerStore, LogRecord
from node.storage.schema import TILE_LEVEL, active_key
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
    """Derived rows rebuilt from the entries scanned so far."""

    add_keys: array[int] = field(default_factory=lambda: array("q"))
    add_indexes: array[int] = field(default_factory=lambda: array("q"))
    retractions: dict[int, int] = field(default_factory=dict)  # target -> retracting index
    pdq: dict[int, bytes] = field(default_factory=dict)  # every PDQ add, listed or not
    opinions: list[tuple[int, str, int, bytes, str]] = field(default_factory=list)
    leaf_fixes: list[tuple[int, bytes]] = field(default_factory=list)  # index, true leaf hash


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
        self._expected = _Expected()
        self._counts: dict[str, int] = {}
        self._sizes = _checkpoint_sizes(store, log, self)
        self.size = store.entry_count(log.log_id)
        """Entries held when the scan started (a replica may hold more than it has signed)."""
        self._held = self.size  # entries held when the derived tables are compared
        self.signed_size = self._sizes[-1][0] if self._sizes else 0
        """Size of the latest checkpoint whose signature verifies."""
        if 0 < resume_from <= self.size:
            self._resume(store, resume_from)
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
        add_keys, add_indexes = expected.add_keys, expected.add_indexes
        for offset, entry in enumerate(entries):
            if type(entry) is AddEntry:
                add_keys.append(active_key(entry.signal_type, entry.value))
                add_indexes.append(start + offset)
                if entry.signal_type == "pdq":
                    expected.pdq[start + offset] = bytes.fromhex(entry.value)
            elif isinstance(entry, RetractEntry):
                expected.retractions[entry.index] = start + offset
            elif isinstance(entry, OpinionEntry):
                expected.opinions.append(
                    (start + offset, entry.origin, entry.index, entry.leaf_hash, entry.verdict)
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
        if not self.done or self.log_damaged or self.partial:
            return []
        before = len(self.findings)
        log_id = self.log.log_id
        self._held = store.entry_count(log_id)
        later = {
            target
            for target, by in store.derived_rows(log_id, "retractions")
            if isinstance(by, int) and by >= self.size
        }
        listed_idx, listed_key = self.expected_listed(store)
        self._compare_active(store, listed_idx, listed_key, later)
        listed = set(listed_idx.tolist())
        self._compare_rows(
            "pdq",
            {idx: h for idx, h in self._expected.pdq.items() if idx in listed},
            store.derived_rows(log_id, "pdq"),
            later,
            lambda want: f"listed PDQ hash {'missing from' if want else 'wrongly in'} the index",
        )
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

    def expected_listed(
        self, store: LedgerStore
    ) -> tuple[
        numpy.ndarray[Any, numpy.dtype[numpy.int64]], numpy.ndarray[Any, numpy.dtype[numpy.int64]]
    ]:
        """The listing add of each listed hash and its active key, as the write path leaves them.

        Returns two arrays (entry index, active key), by index. A hash is
        listed by its first add not yet retracted; a later add of the same
        hash (kept verbatim by a replica) lists nothing. Adds whose key is
        shared by another add, and retracted adds, are replayed exactly from
        the entries; the rest (nearly all) are listed as they stand, in numpy,
        so a log of ten million adds costs arrays, not Python objects.
        """
        keys = numpy.frombuffer(self._expected.add_keys, dtype=numpy.int64)
        indexes = numpy.frombuffer(self._expected.add_indexes, dtype=numpy.int64)
        _unique, inverse, counts = numpy.unique(keys, return_inverse=True, return_counts=True)
        retracted = numpy.fromiter(self._expected.retractions, dtype=numpy.int64)
        special = (counts[inverse] > 1) | numpy.isin(indexes, retracted)
        out_idx = indexes[~special]
        out_key = keys[~special]
        if special.any():
            replayed = self._replay_listing(store, indexes[special].tolist())
            out_idx = numpy.concatenate(
                [out_idx, numpy.fromiter(replayed, dtype=numpy.int64, count=len(replayed))]
            )
            out_key = numpy.concatenate(
                [
                    out_key,
                    numpy.fromiter(replayed.values(), dtype=numpy.int64, count=len(replayed)),
                ]
            )
            order = numpy.argsort(out_idx, kind="stable")
            out_idx, out_key = out_idx[order], out_key[order]
        return out_idx, out_key

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
        self,
        store: LedgerStore,
        want_idx: numpy.ndarray[Any, numpy.dtype[numpy.int64]],
        want_key: numpy.ndarray[Any, numpy.dtype[numpy.int64]],
        later: set[int],
    ) -> None:
        have_idx, have_key = store.active_arrays(self.log.log_id)
        # Rows of entries appended since the scan began are not judged; rows
        # naming entries that do not exist at all are wrong.
        keep = (have_idx < self.size) | (have_idx >= self._held)
        if later:
            skip = numpy.fromiter(later, dtype=numpy.int64, count=len(later))
            keep &= ~numpy.isin(have_idx, skip)
            wanted = ~numpy.isin(want_idx, skip)
            want_idx, want_key = want_idx[wanted], want_key[wanted]
        have_idx, have_key = have_idx[keep], have_key[keep]
        order = numpy.argsort(have_idx, kind="stable")
        have_idx, have_key = have_idx[order], have_key[order]
        problems: list[tuple[int, str]] = []
        twice = have_idx[1:][numpy.diff(have_idx) == 0]
        problems += [(int(i), "entry listed twice in the active index") for i in twice[:_SHOWN]]
        missing = numpy.setdiff1d(want_idx, have_idx)
        problems += [
            (int(i), "listed hash missing from the active index: it would not match")
            for i in missing[:_SHOWN]
        ]
        extra = numpy.setdiff1d(have_idx, want_idx)
        problems += [
            (int(i), "active index names an entry that lists nothing") for i in extra[:_SHOWN]
        ]
        _both, at_want, at_have = numpy.intersect1d(
            want_idx, have_idx, assume_unique=False, return_indices=True
        )
        wrong = want_idx[at_want[want_key[at_want] != have_key[at_have]]]
        problems += [
            (int(i), "active index holds the wrong key: the hash would not match")
            for i in wrong[:_SHOWN]
        ]
        total = len(twice) + len(missing) + len(extra) + len(wrong)
        for idx, detail in sorted(problems)[:_SHOWN]:
            self._derived("active", idx, detail)
        # The rest are counted, not listed.
        self._counts["active"] = self._counts.get("active", 0) + max(0, total - _SHOWN)

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

    # -- repair ------------------------------------------------------------

    def rebuild(self, store: LedgerStore, progress: Callable[[int], None] | None = None) -> None:
        """Write this log's derived rows as the scan computed them (inside a transaction).

        ``progress`` is called with the entries whose tree nodes are rewritten so far.
        """
        if not self.done or self.log_damaged or self.partial:
            raise StorageError(
                f"log {self.log.origin} was not replayed whole and verified; its derived "
                "data is not rebuilt"
            )
        log_id = self.log.log_id
        listed_idx, listed_key = self.expected_listed(store)
        listed = set(listed_idx.tolist())
        store.fill_derived(
            log_id,
            active=(listed_key.tolist(), listed_idx.tolist()),
            pdq=sorted((idx, h) for idx, h in self._expected.pdq.items() if idx in listed),
            opinions=self._expected.opinions,
            retractions=sorted(self._expected.retractions.items()),
            leaf_fixes=self._expected.leaf_fixes,
        )
        tree = CompactRange.empty()
        for start in range(0, self.size, _BATCH):
            datas = [bytes(d) for _i, d, _h in store.iter_entries(log_id, start, start + _BATCH)]
            runs = tree.extend(hash_leaves(datas), collect=True, min_level=TILE_LEVEL)
            store.append_entries(log_id, start, [], [], runs)
            if progress is not None:
                progress(start + len(datas))


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
) -> LogScan:
    """Scan a whole log and its derived data; the returned scan holds the findings.

    ``progress`` is called after each batch with the entries scanned so far
    (out of ``LogScan.size``).
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
    scans = [check_log(store, log, progress=_part(progress, "check", store, log)) for log in logs]
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
