"""The write path: sequence entries, extend the tree, store them, sign a checkpoint.

Layer: node.ledger. Uses :mod:`node.storage` for I/O and :mod:`protocol` for
every format and proof.

Every write follows one path, :class:`Integration`: inside a ``BEGIN
IMMEDIATE`` transaction opened by the caller, load the tree frontier,
validate and sequence the entries, extend the tree (storing the new
perfect-subtree nodes), sign a checkpoint over the new root, store it. The
caller commits. Either all of it is durable (``synchronous=FULL``) or none of
it happened; a checkpoint is returned to the caller only after the commit.
The own log (:class:`node.ledger.service.Ledger`), replicas
(:class:`node.ledger.replica.Replica`) and key rotation
(:mod:`node.ledger.rotation`) all write through it.

Every entry the own log appends is written as version 2: :func:`salted`
encodes it with a fresh salt from the OS CSPRNG (whatever the caller
built), so its leaf hash cannot be recomputed from its value and labels.
Replicas store their origin's bytes verbatim, version 1 or 2.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy

from node.errors import RetractionError, StorageError
from node.storage.ledger_store import CheckpointRecord, LedgerStore, LogRecord
from node.storage.schema import TILE_LEVEL, active_keys
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.entry import (
    SALT_BYTES,
    AddEntry,
    AddFamily,
    AddRun,
    Entry,
    OpinionEntry,
    RetractEntry,
    parse_entry,
    salt_entries,
    salt_values,
)
from protocol.errors import InvalidRetractionError
from protocol.hashing import hash_leaves
from protocol.keys import NoteSigner
from protocol.rules import LogRules
from protocol.signal import each_canonical
from protocol.tree import CompactRange, NodeRun

__all__ = ["Duplicate", "Integration", "Prepared", "Sequenced", "prepare", "salted"]


def salted(entries: Sequence[Entry]) -> list[bytes]:
    """The version 2 encodings of the entries, each with a fresh salt from the OS CSPRNG.

    One ``os.urandom`` call per batch, sliced: a bulk import pays no
    system call per entry.
    """
    return salt_entries(entries, os.urandom(SALT_BYTES * len(entries)))


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An add that was not appended because the hash is already listed."""

    entry: AddEntry
    existing_index: int
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """What hashing a batch needs no database for: leaf hashes and active keys.

    Made by :func:`prepare`; a replica prepares a chunk on another thread
    while the writer stores the one before it (``node.sync.engine``).
    """

    entries: Sequence[Entry]
    datas: Sequence[bytes]
    leaf_hashes: list[bytes]
    identities: list[tuple[str, str] | None]
    keys: dict[tuple[str, str], int]


def prepare(entries: Sequence[Entry], datas: Sequence[bytes]) -> Prepared:
    """The leaf hashes of ``datas`` (the encodings of ``entries``) and the adds' active keys."""
    identities = _identities(entries)
    return Prepared(entries, datas, hash_leaves(datas), identities, _active_keys(identities))


@dataclass(frozen=True, slots=True)
class Sequenced:
    """A validated batch, hashed into the tree but not yet written.

    ``datas`` are the leaf data written. For the own log they are the
    salted (version 2) encodings of ``entries``, which may be unsalted
    drafts: nothing but the encoding depends on the salt.
    """

    start: int
    entries: Sequence[Entry]
    datas: Sequence[bytes]
    leaf_hashes: list[bytes]
    runs: list[NodeRun]
    # Each entry's (signal type, value) if it is an add, else None, and the
    # active key of each identity: computed once per batch.
    identities: list[tuple[str, str] | None]
    keys: dict[tuple[str, str], int]


class Integration:
    """One write transaction's worth of sequencing, hashing and storing.

    Both the own log (:meth:`node.ledger.service.Ledger.append`) and replicas
    (:class:`node.ledger.replica.Replica`) go through :meth:`sequence` then
    :meth:`store`; between the two a replica checks the new root against the
    origin's signed checkpoint, so nothing is written unless it verifies.
    """

    def __init__(self, store: LedgerStore, log: LogRecord | None, *, replica: bool = False) -> None:
        self.store = store
        self.log = log
        size = 0 if log is None else store.entry_count(log.log_id)
        if log is not None:
            checkpoint = store.latest_checkpoint(log.log_id)
            # A replica may hold entries beyond its latest stored checkpoint:
            # a catch-up commits chunks proven against a larger checkpoint
            # whose note is stored only with its last chunk.
            if checkpoint is not None and (
                checkpoint.size > size if replica else checkpoint.size != size
            ):
                raise StorageError(
                    f"log {log.origin} holds {size} entries but its latest checkpoint "
                    f"has size {checkpoint.size}; the database is damaged"
                )
        self.tree: CompactRange = (
            CompactRange.empty() if log is None else store.load_compact_range(log.log_id, size)
        )
        self.start = size
        self.duplicates: list[Duplicate] = []
        self.rules = LogRules(size, None if log is None else _StoredLog(store, log.log_id))
        """The log's entry rules (protocol.rules), shown every entry sequenced here."""
        self._deferred = _DeferredActive()

    @property
    def log_id(self) -> int:
        """The id of the log being written (not for a brand-new own log)."""
        assert self.log is not None
        return self.log.log_id

    @property
    def next_index(self) -> int:
        """The index the next sequenced entry gets: the tree's size so far."""
        return self.tree.size

    def append(self, entries: Sequence[Entry], lines: Sequence[int] | None = None) -> None:
        """Sequence and store a batch; duplicates are recorded, not appended."""
        self.flush_active()
        identities = _identities(entries)
        keys = _active_keys(identities)
        listed = self.store.find_listed(self.log_id, keys)
        if not listed and len(keys) == len(entries):
            # Distinct adds, none listed yet: the common case of a bulk import.
            accepted: Sequence[Entry] = entries
            accepted_ids: list[tuple[str, str] | None] = identities
            self.rules.extend_adds(len(entries))
        else:
            accepted, accepted_ids = [], []
            for position, entry in enumerate(entries):
                index = self.next_index + len(accepted)
                identity = identities[position]
                if identity is not None:
                    assert isinstance(entry, AddEntry)
                    existing = listed.get(identity)
                    if existing is not None:
                        line = lines[position] if lines is not None else None
                        self.duplicates.append(Duplicate(entry, existing, line))
                        continue
                    listed[identity] = index
                self._take(entry)
                if isinstance(entry, RetractEntry):
                    # A hash retracted here may be listed again later in the batch.
                    target = self._target(entry.index, accepted, self.next_index)
                    if listed.get(target.identity) == entry.index:
                        del listed[target.identity]
                accepted.append(entry)
                accepted_ids.append(identity)
        if not accepted:
            return
        # Every accepted add was checked against the index just above. The
        # salts live in the encodings only: nothing below reads them.
        batch = self._hash(accepted, salted(accepted), accepted_ids, keys)
        self.store_batch(batch, checked=True)

    def append_values(
        self, families: Sequence[AddFamily], values: Sequence[str], lines: Sequence[int]
    ) -> None:
        """Sequence and store the adds ``families[i].entry(values[i])`` (a bulk import's batch).

        The same outcome as :meth:`append` of those entries, without an entry
        object per value when the batch is the common case (distinct hashes,
        none listed, none PDQ); any other batch is handed to :meth:`append`.

        Raises:
            MalformedError: if a value is not canonical for its family (the
                reader should have said so: nothing of the batch is written).
        """
        n = len(values)
        if not n:
            return
        if len(families) != n or len(lines) != n:
            raise ValueError(f"{n} values but {len(families)} families and {len(lines)} lines")
        types = [f.signal_type for f in families]
        identities = list(zip(types, values, strict=True))
        key_list = active_keys(identities)
        keys = dict(zip(identities, key_list, strict=True))
        if (
            len(keys) != n
            or "pdq" in types
            or not each_canonical(types, values)
            or self._deferred.may_hold(key_list)
            # The log's rows in the index: at most one per entry not held back.
            or self.store.find_listed(
                self.log_id, keys, at_most=self.next_index - self._deferred.count
            )
        ):
            # Duplicates, PDQ rows or a value to explain: the general path
            # (which validates each value and names one that is not canonical).
            self.append([f.entry(v) for f, v in zip(families, values, strict=True)], lines)
            return
        self.rules.extend_adds(n)
        start = self.next_index
        datas = salt_values(families, values, os.urandom(SALT_BYTES * n))
        leaf_hashes = hash_leaves(datas)
        runs = self.tree.extend(leaf_hashes, collect=True, min_level=TILE_LEVEL)
        self.store.append_entries(self.log_id, start, datas, leaf_hashes, runs)
        if self._deferred.add(key_list, start) >= _DEFERRED_ACTIVE:
            self.flush_active()

    def flush_active(self) -> None:
        """Write the ``active`` rows :meth:`append_values` deferred (any other write does first).

        :meth:`commit_checkpoint` calls it: a caller of :meth:`append_values`
        commits through it, as every writer does.
        """
        keys, indexes = self._deferred.take()
        # One sorted pass over the index, in slices: Python ints for all the
        # rows at once would cost 80 bytes a row.
        order = numpy.argsort(keys, kind="stable")
        for at in range(0, len(order), _FLUSH_SLICE):
            part = order[at : at + _FLUSH_SLICE]
            self.store.add_active(self.log_id, keys[part].tolist(), indexes[part].tolist())

    def sequence(self, entries: Sequence[Entry], datas: Sequence[bytes]) -> Sequenced:
        """Validate retractions and extend the tree with a batch, verbatim.

        ``datas`` are the exact encodings of ``entries`` (the leaf data). No
        duplicate is skipped: a replica must hold its origin's log exactly.

        Raises:
            RetractionError: if a retraction targets a missing, non-add or
                already retracted entry.
        """
        return self.sequence_prepared(prepare(entries, datas))

    def sequence_prepared(self, batch: Prepared) -> Sequenced:
        """:meth:`sequence` of a batch whose hashing was done beforehand (:func:`prepare`)."""
        entries = batch.entries
        if isinstance(entries, AddRun):
            # Adds only, checked in bulk (a replica's chunk): no entry object is built.
            self.rules.extend_adds(len(entries))
        else:
            try:
                self.rules.extend(entries)
            except InvalidRetractionError as e:
                raise RetractionError(str(e)) from e
        return self._extend(batch)

    def _hash(
        self,
        entries: Sequence[Entry],
        datas: Sequence[bytes],
        identities: list[tuple[str, str] | None],
        keys: dict[tuple[str, str], int],
    ) -> Sequenced:
        return self._extend(Prepared(entries, datas, hash_leaves(datas), identities, keys))

    def _extend(self, batch: Prepared) -> Sequenced:
        start = self.next_index
        runs = self.tree.extend(batch.leaf_hashes, collect=True, min_level=TILE_LEVEL)
        return Sequenced(
            start,
            batch.entries,
            batch.datas,
            batch.leaf_hashes,
            runs,
            batch.identities,
            batch.keys,
        )

    def store_batch(self, batch: Sequenced, *, checked: bool = False) -> None:
        """Write a sequenced batch: entries, tree nodes, listed hashes, retractions.

        Args:
            batch: from :meth:`sequence` (or the own log's :meth:`append`).
            checked: the caller made sure no add of the batch is listed
                already, nor listed by an earlier add of the batch.
        """
        self.flush_active()
        log_id = self.log_id
        start, entries = batch.start, batch.entries
        self.store.append_entries(log_id, start, batch.datas, batch.leaf_hashes, batch.runs)
        # Listed hashes and retractions are applied in log order, so a hash
        # added, retracted and added again in one batch ends up listed; an
        # add of a hash already listed keeps the first index.
        identities, keys = batch.identities, batch.keys
        listed = None if checked else self.store.find_listed(log_id, keys)
        if not listed and len(keys) == len(entries) and not any(t == "pdq" for t, _v in keys):
            # Distinct adds of hashes not listed, none of them PDQ (a bulk
            # import, or a replica's chunk of one): each gets its own active
            # row, nothing else.
            added = [keys[identity] for identity in identities if identity is not None]
            self.store.add_active(log_id, added, range(start, start + len(added)))
            return
        matching = self.store.matching
        pending_keys: list[int] = []
        pending_indexes: list[int] = []
        # The matching tables (node.storage.match_store) mirror `active` for
        # PDQ hashes and record opinions; both are flushed with the pending active rows.
        pdq: list[tuple[int, bytes]] = []
        opinions: list[tuple[int, str, int, bytes, str]] = []
        for i, e in enumerate(entries):
            identity = identities[i]
            if identity is not None:
                if listed is not None:
                    if identity in listed:
                        continue
                    listed[identity] = start + i
                pending_keys.append(keys[identity])
                pending_indexes.append(start + i)
                if identity[0] == "pdq":
                    pdq.append((start + i, bytes.fromhex(identity[1])))
            elif isinstance(e, RetractEntry):
                self.store.add_active(log_id, pending_keys, pending_indexes)
                matching.add_pdq(log_id, pdq)
                pending_keys, pending_indexes, pdq = [], [], []
                target = self._target(e.index, entries, start)
                self.store.add_retraction(log_id, e.index, start + i, target.identity)
                if target.signal_type == "pdq":
                    matching.remove_pdq(log_id, e.index)
                if listed is not None and listed.get(target.identity) == e.index:
                    del listed[target.identity]
            elif isinstance(e, OpinionEntry):
                opinions.append((start + i, e.origin, e.index, e.leaf_hash, e.verdict))
        self.store.add_active(log_id, pending_keys, pending_indexes)
        matching.add_pdq(log_id, pdq)
        matching.add_opinions(log_id, opinions)

    def _take(self, entry: Entry) -> None:
        try:
            self.rules.append(entry)
        except InvalidRetractionError as e:
            raise RetractionError(str(e)) from e

    def _target(self, index: int, pending: Sequence[Entry], start: int) -> AddEntry:
        """The add a retraction the rules accepted names (for its listed hash)."""
        if index >= start:
            entry = pending[index - start]
        else:
            data = self.store.get_entry(self.log_id, index)
            assert data is not None, "the rules found this entry"
            entry = parse_entry(data)
        assert isinstance(entry, AddEntry), "the rules found an add"
        return entry

    def commit_checkpoint(self, signer: NoteSigner) -> CheckpointRecord:
        """Sign the new tree head and store it (still inside the transaction).

        When nothing was appended the latest checkpoint is returned and
        nothing is signed.
        """
        assert self.log is not None
        self.flush_active()
        latest = self.store.latest_checkpoint(self.log_id)
        if latest is not None and latest.size == self.tree.size:
            # Nothing appended: nothing to sign (the latest checkpoint stands).
            return latest
        root = self.tree.root()
        checkpoint = Checkpoint(origin=self.log.origin, size=self.tree.size, root_hash=root)
        note = sign_checkpoint(checkpoint, signer)
        self.store.put_checkpoint(self.log_id, self.tree.size, root, note)
        record = self.store.get_checkpoint(self.log_id, self.tree.size)
        assert record is not None
        return record


def _identities(entries: Sequence[Entry]) -> list[tuple[str, str] | None]:
    """Each entry's ``(signal type, value)`` if it is an add, else None."""
    if isinstance(entries, AddRun):
        signal_type = entries.signal_type
        return [(signal_type, value) for value in entries.values]
    return [(e.signal_type, e.value) if type(e) is AddEntry else None for e in entries]


def _active_keys(identities: Iterable[tuple[str, str] | None]) -> dict[tuple[str, str], int]:
    """The ``active`` index key of every add identity (signal type, value)."""
    adds = [identity for identity in identities if identity is not None]
    return dict(zip(adds, active_keys(adds), strict=True))


# Active rows of a bulk import held back before they are written: 16 bytes each.
_DEFERRED_ACTIVE = 2_000_000
_NO_KEYS = numpy.empty(0, dtype=numpy.int64)
_FLUSH_SLICE = 65_536


class _DeferredActive:
    """The ``active`` rows of a bulk import's batches, written together later.

    Written batch by batch, the keys of each batch (random over the whole
    key space) walk the whole index B-tree again; written together at the
    end they are one sorted pass, and the duplicate look-ups of the batches
    in between search a smaller tree. A batch whose keys meet a held-back
    one is a possible duplicate: the caller writes the held rows first and
    takes the general path, which confirms or refutes it from the entries.
    """

    __slots__ = ("_indexes", "_keys", "_sorted")

    def __init__(self) -> None:
        self._keys: list[numpy.ndarray] = []
        self._indexes: list[numpy.ndarray] = []
        self._sorted = _NO_KEYS

    @property
    def count(self) -> int:
        """How many rows are held back."""
        return len(self._sorted)

    def may_hold(self, keys: Sequence[int]) -> bool:
        """Whether any of ``keys`` is held back."""
        if not len(self._sorted):
            return False
        wanted = numpy.fromiter(keys, dtype=numpy.int64, count=len(keys))
        at = numpy.searchsorted(self._sorted, wanted)
        at[at == len(self._sorted)] = 0
        return bool((self._sorted[at] == wanted).any())

    def add(self, keys: Sequence[int], start: int) -> int:
        """Hold back the rows of entries ``start, start + 1, ...``; how many are held."""
        array = numpy.fromiter(keys, dtype=numpy.int64, count=len(keys))
        self._keys.append(array)
        self._indexes.append(numpy.arange(start, start + len(keys), dtype=numpy.int64))
        # Two sorted runs: the stable sort merges them in linear time.
        self._sorted = numpy.sort(numpy.concatenate((self._sorted, array)), kind="stable")
        return len(self._sorted)

    def take(self) -> tuple[numpy.ndarray, numpy.ndarray]:
        """The held rows (keys and entry indexes), no longer held."""
        if not self._keys:
            return _NO_KEYS, _NO_KEYS
        keys, indexes = numpy.concatenate(self._keys), numpy.concatenate(self._indexes)
        self._keys, self._indexes, self._sorted = [], [], _NO_KEYS
        return keys, indexes


class _StoredLog:
    """The entries of a stored log before a write, as the entry rules ask about them."""

    __slots__ = ("_log_id", "_store")

    def __init__(self, store: LedgerStore, log_id: int) -> None:
        self._store = store
        self._log_id = log_id

    def kind_at(self, index: int) -> str | None:
        data = self._store.get_entry(self._log_id, index)
        return None if data is None else parse_entry(data).kind

    def retracted_by(self, index: int) -> int | None:
        return self._store.retracted_by(self._log_id, index)
