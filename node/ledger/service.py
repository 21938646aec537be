"""The ledger service: sequence entries, integrate them, sign checkpoints.

Layer: node.ledger. Uses :mod:`node.storage` for I/O and :mod:`protocol` for
every format and proof.

Every write follows one path, :class:`_Integration`: open a ``BEGIN
IMMEDIATE`` transaction, load the tree frontier, validate and sequence the
entries, extend the tree (storing the new perfect-subtree nodes), sign a
checkpoint over the new root, store it, commit. Either all of it is durable
(``synchronous=FULL``) or none of it happened; a checkpoint is returned to the
caller only after the commit.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from node.config import NodeConfig, load_config
from node.errors import (
    ConfigError,
    ImportRejectedError,
    LedgerError,
    LineError,
    RetractionError,
    StorageError,
)
from node.ledger.hashlist import ParsedLine
from node.ledger.leaf_index import LeafHashIndex
from node.storage.ledger_store import CheckpointRecord, LedgerStore, LogRecord
from node.storage.match_store import MatchStore
from node.storage.schema import TILE_LEVEL, active_key
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.entry import AddEntry, Entry, OpinionEntry, RetractEntry, RotateEntry, parse_entry
from protocol.errors import MalformedError
from protocol.hashing import hash_leaves
from protocol.keys import NoteSigner
from protocol.tree import (
    CompactRange,
    NodeId,
    NodeRun,
    compute_consistency_proof,
    compute_inclusion_proof,
)

if TYPE_CHECKING:
    from node.ledger.replica import Replica
    from node.ledger.rotation import RotationResult

__all__ = [
    "AppendResult",
    "Duplicate",
    "ImportResult",
    "Ledger",
    "LogStatus",
    "Proof",
    "bulk_allocation",
    "load_signer",
]

IMPORT_BATCH = 50_000  # entries per batch: bounds memory, amortises statements and B-tree walks


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An add that was not appended because the hash is already listed."""

    entry: AddEntry
    existing_index: int
    line: int | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one write transaction appended."""

    start: int
    count: int
    duplicates: tuple[Duplicate, ...]
    checkpoint: CheckpointRecord

    @property
    def indexes(self) -> range:
        """Indexes assigned to the appended entries."""
        return range(self.start, self.start + self.count)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """Outcome of :meth:`Ledger.import_lines`."""

    append: AppendResult
    lines_read: int
    skipped: tuple[LineError, ...]


@dataclass(frozen=True, slots=True)
class Proof:
    """An inclusion or consistency proof, in the shape the CLI prints."""

    hashes: tuple[bytes, ...]
    size: int
    index: int | None = None
    leaf_hash: bytes | None = None
    old_size: int | None = None


@dataclass(frozen=True, slots=True)
class LogStatus:
    """Summary of one log for ``hashmesh status``."""

    origin: str
    is_own: bool
    size: int
    root_hash: bytes
    checkpoint_recorded_at: str | None
    by_signal_type: dict[str, int]
    by_label: dict[str, int]
    retracted: int
    checkpoints: int = 0


@dataclass(frozen=True, slots=True)
class _Sequenced:
    """A validated batch, hashed into the tree but not yet written."""

    start: int
    entries: Sequence[Entry]
    datas: Sequence[bytes]
    leaf_hashes: list[bytes]
    runs: list[NodeRun]
    # Each entry's (signal type, value) if it is an add, else None, and the
    # active key of each identity: computed once per batch.
    identities: list[tuple[str, str] | None]
    keys: dict[tuple[str, str], int]


class _Integration:
    """One write transaction's worth of sequencing, hashing and storing.

    Both the own log (:meth:`Ledger.append`) and replicas
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
        # Retractions sequenced in this transaction, not yet visible in SQL.
        self._retracted_here: set[int] = set()

    @property
    def log_id(self) -> int:
        assert self.log is not None
        return self.log.log_id

    @property
    def next_index(self) -> int:
        return self.tree.size

    def append(self, entries: Sequence[Entry], lines: Sequence[int] | None = None) -> None:
        """Sequence and store a batch; duplicates are recorded, not appended."""
        identities = _identities(entries)
        keys = _active_keys(identities)
        listed = self.store.find_listed(self.log_id, keys)
        if not listed and len(keys) == len(entries):
            # Distinct adds, none listed yet: the common case of a bulk import.
            accepted: Sequence[Entry] = entries
            accepted_ids: list[tuple[str, str] | None] = identities
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
                elif isinstance(entry, RetractEntry):
                    self._check_retraction(entry, index, accepted)
                    # A hash retracted here may be listed again later in the batch.
                    target = self._target(entry.index, accepted, self.next_index)
                    if listed.get(target.identity) == entry.index:
                        del listed[target.identity]
                accepted.append(entry)
                accepted_ids.append(identity)
        if not accepted:
            return
        # Every accepted add was checked against the index just above.
        batch = self._hash(accepted, [e.to_bytes() for e in accepted], accepted_ids, keys)
        self.store_batch(batch, checked=True)

    def sequence(self, entries: Sequence[Entry], datas: Sequence[bytes]) -> _Sequenced:
        """Validate retractions and extend the tree with a batch, verbatim.

        ``datas`` are the exact encodings of ``entries`` (the leaf data). No
        duplicate is skipped: a replica must hold its origin's log exactly.

        Raises:
            RetractionError: if a retraction targets a missing, non-add or
                already retracted entry.
        """
        start = self.next_index
        for i, entry in enumerate(entries):
            if isinstance(entry, RetractEntry):
                self._check_retraction(entry, start + i, entries[:i])
        return self._hash(entries, datas)

    def _hash(
        self,
        entries: Sequence[Entry],
        datas: Sequence[bytes],
        identities: list[tuple[str, str] | None] | None = None,
        keys: dict[tuple[str, str], int] | None = None,
    ) -> _Sequenced:
        start = self.next_index
        leaf_hashes = hash_leaves(datas)
        runs = self.tree.extend(leaf_hashes, collect=True, min_level=TILE_LEVEL)
        if identities is None:
            identities = _identities(entries)
        if keys is None:
            keys = _active_keys(identities)
        return _Sequenced(start, entries, datas, leaf_hashes, runs, identities, keys)

    def store_batch(self, batch: _Sequenced, *, checked: bool = False) -> None:
        """Write a sequenced batch: entries, tree nodes, listed hashes, retractions.

        Args:
            batch: from :meth:`sequence` (or the own log's :meth:`append`).
            checked: the caller made sure no add of the batch is listed
                already, nor listed by an earlier add of the batch.
        """
        log_id = self.log_id
        start, entries = batch.start, batch.entries
        self.store.append_entries(log_id, start, batch.datas, batch.leaf_hashes, batch.runs)
        # Listed hashes and retractions are applied in log order, so a hash
        # added, retracted and added again in one batch ends up listed; an
        # add of a hash already listed keeps the first index.
        identities, keys = batch.identities, batch.keys
        if checked and len(keys) == len(entries) and not any(t == "pdq" for t, _v in keys):
            # Distinct adds of hashes not listed, none of them PDQ (the bulk
            # import case): each gets its own active row, nothing else.
            added = [keys[identity] for identity in identities if identity is not None]
            self.store.add_active(log_id, added, range(start, start + len(added)))
            return
        listed = None if checked else self.store.find_listed(log_id, keys)
        matching = MatchStore(self.store.conn)
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

    def _target(self, index: int, pending: Sequence[Entry], start: int) -> AddEntry:
        if index >= start:
            entry = pending[index - start]
        else:
            data = self.store.get_entry(self.log_id, index)
            if data is None:
                raise RetractionError(f"entry {index} does not exist")
            entry = parse_entry(data)
        if not isinstance(entry, AddEntry):
            raise RetractionError(f"entry {index} is a {entry.kind}, not an add")
        return entry

    def _check_retraction(self, entry: RetractEntry, index: int, pending: Sequence[Entry]) -> None:
        if entry.index >= index:
            raise RetractionError(
                f"entry {entry.index} does not exist (the log has {index} entries)"
            )
        self._target(entry.index, pending, self.next_index)
        by = self.store.retracted_by(self.log_id, entry.index)
        if by is not None or entry.index in self._retracted_here:
            where = f" by entry {by}" if by is not None else " earlier in this batch"
            raise RetractionError(f"entry {entry.index} is already retracted{where}")
        self._retracted_here.add(entry.index)

    def commit_checkpoint(self, signer: NoteSigner) -> CheckpointRecord:
        """Sign the new tree head and store it (still inside the transaction)."""
        assert self.log is not None
        root = self.tree.root()
        checkpoint = Checkpoint(origin=self.log.origin, size=self.tree.size, root_hash=root)
        note = sign_checkpoint(checkpoint, signer)
        latest = self.store.latest_checkpoint(self.log_id)
        if latest is not None and latest.size == self.tree.size:
            return latest
        self.store.put_checkpoint(self.log_id, self.tree.size, root, note)
        record = self.store.get_checkpoint(self.log_id, self.tree.size)
        assert record is not None
        return record


class Ledger:
    """A node's ledger: its own log (writable) and the logs it replicates."""

    def __init__(self, store: LedgerStore, config: NodeConfig, signer: NoteSigner | None) -> None:
        self.store = store
        self.config = config
        self._signer = signer

    @classmethod
    def open(cls, node_dir: Path, *, read_only: bool = False) -> Ledger:
        """Open the node in ``node_dir``.

        Args:
            node_dir: the node directory made by ``hashmesh init``.
            read_only: open the database read-only and do not load the key.

        Raises:
            ConfigError: if the directory, config or key is missing or bad.
            StorageError: if the database cannot be opened.
        """
        config = load_config(node_dir)
        signer = None if read_only else load_signer(config)
        if not config.database_path.exists():
            raise ConfigError(f"{config.database_path} is missing; the node is incomplete")
        store = LedgerStore.open(config.database_path, read_only=read_only)
        if signer is not None:
            from node.ledger.rotation import current_signer  # rotation imports this module

            try:
                signer = current_signer(store, config.origin, signer, config.signing_key_path)
            except BaseException:
                store.close()
                raise
        return cls(store, config, signer)

    def close(self) -> None:
        """Close the database."""
        self.store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def own_log(self) -> LogRecord:
        """The node's own log."""
        return self.store.own_log()

    def _require_signer(self) -> NoteSigner:
        if self._signer is None:
            raise LedgerError("this ledger was opened read-only; it cannot sign")
        return self._signer

    # -- writes -----------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> AppendResult:
        """Append entries to the own log in one transaction and sign a checkpoint.

        Hashes already listed are reported in ``duplicates`` and not appended.

        Raises:
            RetractionError: if a retraction is invalid (nothing is written).
            StorageError: if the database fails (nothing is written).
        """
        signer = self._require_signer()
        if any(isinstance(e, RotateEntry) for e in entries):
            raise LedgerError(
                "a rotate entry is appended only by `hashmesh key rotate`, which also "
                "switches the signing key"
            )
        with self.store.transaction():
            run = _Integration(self.store, self.own_log)
            run.append(entries)
            checkpoint = run.commit_checkpoint(signer)
        return AppendResult(
            run.start, run.next_index - run.start, tuple(run.duplicates), checkpoint
        )

    def rotate_key(self, reason: str, *, new_signer: NoteSigner | None = None) -> RotationResult:
        """Rotate the own log's signing key (see :mod:`node.ledger.rotation`).

        The rotate entry is committed under a checkpoint signed by the old
        key; every later checkpoint is signed by the new one.

        Raises:
            MalformedError: if the reason is not valid text.
            LedgerError: if the ledger is read-only or the key is unchanged.
        """
        from node.ledger.rotation import rotate_signing_key  # rotation imports this module

        signer = self._require_signer()
        result, self._signer = rotate_signing_key(
            self.store,
            self.config.origin,
            signer,
            self.config.signing_key_path,
            reason,
            new_signer=new_signer,
        )
        return result

    def retract(self, index: int, reason: str) -> AppendResult:
        """Append a retraction of entry ``index``.

        Raises:
            RetractionError: if the entry does not exist, is not an add, or is
                already retracted.
            MalformedError: if the reason is empty, too long or has control
                characters.
        """
        return self.append([RetractEntry(index=index, reason=reason)])

    def import_lines(
        self,
        lines: Iterable[ParsedLine],
        *,
        skip_invalid: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> ImportResult:
        """Append every valid line in one transaction, streaming in batches.

        The whole input is read even after an error so the report lists every
        invalid line. Unless ``skip_invalid`` is set, any invalid line rolls
        the transaction back and nothing is appended.

        Raises:
            ImportRejectedError: if lines were invalid and ``skip_invalid`` is
                false (nothing is written).
            StorageError: if the database fails (nothing is written).
        """
        signer = self._require_signer()
        errors: list[LineError] = []
        read = 0
        with bulk_allocation(), self.store.transaction():
            run = _Integration(self.store, self.own_log)
            batch: list[Entry] = []
            batch_lines: list[int] = []
            for parsed in lines:
                read += 1
                if parsed.error is not None:
                    errors.append(parsed.error)
                    continue
                if errors and not skip_invalid:
                    # Nothing will be written; keep reading only to report.
                    continue
                assert parsed.entry is not None
                batch.append(parsed.entry)
                batch_lines.append(parsed.line)
                if len(batch) >= IMPORT_BATCH:
                    run.append(batch, batch_lines)
                    batch, batch_lines = [], []
                    if progress is not None:
                        progress(read)
            if errors and not skip_invalid:
                raise ImportRejectedError(errors, total_lines=read)
            run.append(batch, batch_lines)
            checkpoint = run.commit_checkpoint(signer)
            if progress is not None:
                progress(read)
        result = AppendResult(
            run.start, run.next_index - run.start, tuple(run.duplicates), checkpoint
        )
        return ImportResult(result, read, tuple(errors))

    # -- reads ------------------------------------------------------------

    def log_for(self, origin: str | None) -> LogRecord:
        """The log with ``origin``, or the own log when ``origin`` is None."""
        return self.own_log if origin is None else self.store.get_log(origin)

    def latest_checkpoint(self, origin: str | None = None) -> CheckpointRecord:
        """The latest signed checkpoint of a log.

        Raises:
            UnknownLogError: if the log is not held.
            LedgerError: if the log has no checkpoint yet.
        """
        log = self.log_for(origin)
        record = self.store.latest_checkpoint(log.log_id)
        if record is None:
            raise LedgerError(f"log {log.origin} has no checkpoint yet")
        return record

    def status(self, origin: str | None = None) -> LogStatus:
        """Size, root and counts of a log."""
        log = self.log_for(origin)
        record = self.latest_checkpoint(log.origin)
        by_type, by_label = self.store.active_counts(log.log_id)
        return LogStatus(
            origin=log.origin,
            is_own=log.is_own,
            size=record.size,
            root_hash=record.root_hash,
            checkpoint_recorded_at=record.recorded_at,
            by_signal_type=by_type,
            by_label=by_label,
            retracted=self.store.retraction_count(log.log_id),
        )

    def _checked_size(self, log: LogRecord, size: int | None) -> int:
        latest = self.latest_checkpoint(log.origin).size
        if size is None:
            return latest
        if size < 0 or size > latest:
            raise MalformedError(
                f"size {size} is beyond the latest checkpoint size {latest}",
                field="size",
            )
        return size

    def prove_inclusion(
        self, index: int, size: int | None = None, *, origin: str | None = None
    ) -> Proof:
        """Inclusion proof of entry ``index`` in the tree of ``size`` (default latest).

        Raises:
            MalformedError: if index or size are out of range.
        """
        log = self.log_for(origin)
        tree_size = self._checked_size(log, size)
        if not 0 <= index < tree_size:
            raise MalformedError(
                f"index {index} is beyond the tree size {tree_size}", field="index"
            )
        return self._inclusion(log, index, tree_size)

    def _inclusion(self, log: LogRecord, index: int, tree_size: int) -> Proof:
        reader = self.store.reader(log.log_id)
        hashes = compute_inclusion_proof(index, tree_size, reader)
        (leaf_hash,) = reader.get_node_hashes([_leaf(index)])
        return Proof(tuple(hashes), tree_size, index=index, leaf_hash=leaf_hash)

    def prove_inclusion_of_leaf(
        self,
        leaf_hash: bytes,
        leaves: LeafHashIndex,
        size: int | None = None,
        *,
        origin: str | None = None,
    ) -> Proof | None:
        """Inclusion proof of the first entry below ``size`` with ``leaf_hash``.

        ``leaves`` is the process's index of leaf hashes (it is extended to
        ``size`` as needed). None if no such entry.

        Raises:
            MalformedError: if size is out of range.
        """
        log = self.log_for(origin)
        tree_size = self._checked_size(log, size)
        index = leaves.find(self.store, log.log_id, leaf_hash, tree_size)
        return None if index is None else self._inclusion(log, index, tree_size)

    def prove_consistency(
        self, old_size: int, new_size: int | None = None, *, origin: str | None = None
    ) -> Proof:
        """Consistency proof between two tree sizes of a log.

        Raises:
            MalformedError: if the sizes are out of range or reversed.
        """
        log = self.log_for(origin)
        size = self._checked_size(log, new_size)
        if not 0 <= old_size <= size:
            raise MalformedError(
                f"old size {old_size} must be between 0 and the new size {size}",
                field="old_size",
            )
        hashes = compute_consistency_proof(old_size, size, self.store.reader(log.log_id))
        return Proof(tuple(hashes), size, old_size=old_size)

    def root_at(self, origin: str | None, size: int) -> bytes:
        """Root of the first ``size`` entries of a log, from stored nodes (O(log n) reads).

        Raises:
            UnknownLogError: if the log is not held.
            MalformedError: if fewer than ``size`` entries are held.
        """
        log = self.log_for(origin)
        held = self.store.entry_count(log.log_id)
        if isinstance(size, bool) or not 0 <= size <= held:
            raise MalformedError(f"size {size} is beyond the {held} entries held", field="size")
        return self.store.load_compact_range(log.log_id, size).root()

    # -- federation ---------------------------------------------------------

    def follow(self, origin: str, vkey: str) -> None:
        """Replicate ``origin``, trusting only checkpoints signed by ``vkey``.

        Raises:
            ConfigError: see :meth:`node.storage.ledger_store.LedgerStore.add_follow`.
        """
        self.store.add_follow(origin, vkey)

    def replicas(self) -> list[Replica]:
        """One :class:`~node.ledger.replica.Replica` per followed origin."""
        from node.ledger.replica import (
            Replica,  # a cycle at import time: replica imports this module
        )

        return [Replica(self, f.origin) for f in self.store.list_follows()]

    def recompute_root(self, origin: str | None = None) -> tuple[int, bytes]:
        """Recompute a log's root from every stored leaf (an fsck check)."""
        log = self.log_for(origin)
        datas: list[bytes] = []
        tree = CompactRange.empty()
        # Hash the stored entry bytes rather than trusting stored leaf hashes.
        for _idx, data, _leaf_hash in self.store.iter_entries(log.log_id):
            datas.append(bytes(data))
            if len(datas) >= IMPORT_BATCH:
                tree.extend(hash_leaves(datas))
                datas.clear()
        tree.extend(hash_leaves(datas))
        return tree.size, tree.root()


_paused_lock = threading.Lock()
_paused_count = 0
_paused_was_enabled = False


@contextmanager
def bulk_allocation() -> Iterator[None]:
    """Pause Python's cyclic garbage collector around a bulk write.

    An import or a sync chunk allocates millions of short-lived objects that
    form no reference cycles (entries, tuples, bytes); with the collector on,
    its generation scans cost about an eighth of the write path
    (docs/benchmarks.md). Nothing is leaked: the collector runs again when
    the last concurrent bulk write ends, and collects any cycle made meanwhile.
    """
    global _paused_count, _paused_was_enabled
    with _paused_lock:
        if _paused_count == 0:
            _paused_was_enabled = gc.isenabled()
            gc.disable()
        _paused_count += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused_count -= 1
            if _paused_count == 0 and _paused_was_enabled:
                gc.enable()


def _identities(entries: Sequence[Entry]) -> list[tuple[str, str] | None]:
    """Each entry's ``(signal type, value)`` if it is an add, else None."""
    return [(e.signal_type, e.value) if type(e) is AddEntry else None for e in entries]


def _active_keys(identities: Iterable[tuple[str, str] | None]) -> dict[tuple[str, str], int]:
    """The ``active`` index key of every add identity (signal type, value)."""
    return {identity: active_key(*identity) for identity in identities if identity is not None}


def _leaf(index: int) -> NodeId:
    return NodeId(level=0, index=index)


def write_key_file(path: Path, signer: NoteSigner, *, replace: bool = False) -> None:
    """Write a private note key, readable by its owner only (0600), and fsync it.

    Args:
        path: where.
        signer: the key.
        replace: overwrite an existing file; by default the file must not
            exist (``FileExistsError``), so two processes never make two keys.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, (signer.to_text() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.chmod(path, 0o600)  # an existing file keeps its mode on O_TRUNC


def read_key_file(path: Path, what: str) -> NoteSigner:
    """Read a private note key that only its owner may read (mode 0600).

    Raises:
        ConfigError: if the file is missing, unreadable, readable by others
            or not a key; ``what`` names it in the message.
    """
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="ascii").strip()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} {path}: {e.strerror or e}") from e
    if mode & 0o077:
        raise ConfigError(
            f"{what} {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`"
        )
    try:
        return NoteSigner.from_text(text)
    except MalformedError as e:
        raise ConfigError(f"{what} {path} is not valid: {e}") from e


def load_signer(config: NodeConfig) -> NoteSigner:
    """Load the node's note signing key, checking it belongs to the origin.

    Raises:
        ConfigError: if the key file is missing, unreadable, too open or for
            another origin.
    """
    path = config.signing_key_path
    signer = read_key_file(path, "signing key")
    if signer.name != config.origin:
        raise ConfigError(
            f"signing key {path} is for {signer.name!r}, not this node's origin {config.origin!r}"
        )
    return signer
