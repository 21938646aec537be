"""The ledger service: a node's own log and the logs it replicates.

Layer: node.ledger. Uses :mod:`node.storage` for I/O and :mod:`protocol` for
every format and proof.

Every write goes through the write path, :class:`node.ledger.integration.Integration`,
inside one ``BEGIN IMMEDIATE`` transaction opened here: either all of it is
durable (``synchronous=FULL``) or none of it happened; a checkpoint is
returned to the caller only after the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from node.config import NodeConfig, load_config
from node.errors import (
    ConfigError,
    EntryNotFoundError,
    ImportRejectedError,
    LedgerError,
    LineError,
    RecoveringError,
    UnknownLogError,
)
from node.ledger.active_levels import MergeResult, merge_active_if_due
from node.ledger.backup import RecoveryMark, clear_recovery_mark, read_recovery_mark
from node.ledger.cards import (
    CertificateExpiry,
    accept_peer_card,
    certificate_expiries,
    read_own_card,
    read_own_card_note,
    write_own_card_note,
)
from node.ledger.damage import DamageRegister
from node.ledger.fsck import (
    Finding,
    LogScan,
    RepairProgress,
    RepairRange,
    ScanProgress,
    check_log,
    guard_findings,
    plan_repair,
    repair_derived,
    restore_entries,
)
from node.ledger.gc_pause import bulk_allocation
from node.ledger.hashlist import ParsedLine, ParsedValues
from node.ledger.index_files import IndexFile, build_index_files, check_index_files
from node.ledger.integration import Duplicate, Integration
from node.ledger.key_files import load_signer
from node.ledger.leaf_index import LeafHashIndex
from node.ledger.replica import Replica
from node.ledger.rotation import (
    RotationResult,
    finish_rotation,
    load_key_chain,
    rotate_signing_key,
)
from node.ledger.witness import (
    QuorumWait,
    Witness,
    load_witness_signer,
    quorum_waits,
    served_note,
)
from node.storage.ledger_store import CheckpointRecord, LedgerStore, LogRecord
from node.storage.match_store import MatchStore
from node.storage.peer_store import PeerStore
from node.storage.segment_file import INDEX_DIR
from node.storage.witness_store import WitnessStore
from protocol.card import SignedCard, sign_card
from protocol.entry import AddFamily, Entry, RetractEntry, RotateEntry
from protocol.errors import MalformedError
from protocol.hashing import hash_leaves
from protocol.keys import NoteSigner, NoteVerifier
from protocol.rotation import KeyChain
from protocol.tiles import TileId
from protocol.tree import (
    CompactRange,
    NodeId,
    compute_consistency_proof,
    inclusion_proof_nodes,
)

__all__ = [
    "CATCH_UP_WAL_BYTES",
    "AppendResult",
    "ImportResult",
    "Ledger",
    "LogStatus",
    "Proof",
]

IMPORT_BATCH = 50_000  # entries per batch: bounds memory, amortises statements and B-tree walks


CATCH_UP_WAL_BYTES = 1024 * 1024 * 1024
"""How far the WAL may grow during a catch-up before it is checkpointed
(:meth:`Ledger.defer_checkpoints`): several chunks of a 10M-entry log."""


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
    merged: MergeResult | None = None
    """The merge of ``active``'s levels the import ended with, when one was due."""


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


class Ledger:
    """A node's ledger: its own log (writable) and the logs it replicates."""

    def __init__(self, store: LedgerStore, config: NodeConfig, signer: NoteSigner | None) -> None:
        self.store = store
        self.config = config
        self._signer = signer
        self._deferred_checkpoints = 0

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
            try:
                signer = finish_rotation(store, config.origin, signer, config.signing_key_path)
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
    def index_directory(self) -> Path:
        """Where the node's index files live (PDQ and leaf-hash indexes)."""
        return self.config.node_dir / INDEX_DIR

    @property
    def own_log(self) -> LogRecord:
        """The node's own log."""
        return self.store.own_log()

    def _require_signer(self) -> NoteSigner:
        """The signing key, once nothing forbids signing with it.

        The one gate of every signature by the own log's key (appends,
        imports, retractions, opinions, rotations).

        Raises:
            LedgerError: if the ledger is read-only, or the log's current
                key (its chain may have grown while recovering) is not ours.
            RecoveringError: if the node was restored and has not recovered.
        """
        if self._signer is None:
            raise LedgerError("this ledger was opened read-only; it cannot sign")
        # A checkpoint over a damaged tree would commit us to a history we
        # never had (node.ledger.damage).
        DamageRegister(self.config.node_dir).check_writable(self.config.origin)
        self._refuse_while_recovering("sign")
        current = self.key_chain(self.config.origin).current
        if self._signer.verifier() != current:
            raise LedgerError(
                f"the log's current key is {current.to_text()}, not this node's signing key: "
                "the log rotated its key after the backup this node was restored from; "
                "restore signing.key from a backup made after the rotation"
            )
        return self._signer

    @property
    def recovering(self) -> RecoveryMark | None:
        """The recovering mark of a restored node (:mod:`node.ledger.backup`), or None."""
        return read_recovery_mark(self.config)

    def end_recovery(self) -> None:
        """Remove the recovering mark: the node may sign again.

        Called by :func:`node.sync.recovery.recover_own_log` once its peers
        and witnesses hold nothing of the own log beyond what it holds.
        """
        clear_recovery_mark(self.config)

    def _refuse_while_recovering(self, what: str) -> None:
        mark = self.recovering
        if mark is not None:
            raise RecoveringError(
                f"this node was restored from a backup (own log size {mark.log_size:,}, made "
                f"{mark.backup_created_at}) and is recovering: it will not {what} anything "
                "until `hashmesh recover` (or `hashmesh serve`) has fetched what its peers and "
                "witnesses hold of its own log (docs/operations.md)"
            )

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
            run = Integration(self.store, self.own_log)
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
        lines: Iterable[ParsedLine | ParsedValues],
        *,
        skip_invalid: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> ImportResult:
        """Append every valid line in one transaction, streaming in batches.

        The whole input is read even after an error so the report lists every
        invalid line. Unless ``skip_invalid`` is set, any invalid line rolls
        the transaction back and nothing is appended. Readers hand over runs
        of lines that read well as :class:`ParsedValues` (no entry object per
        line), the rest one :class:`ParsedLine` at a time.

        Raises:
            ImportRejectedError: if lines were invalid and ``skip_invalid`` is
                false (nothing is written).
            StorageError: if the database fails (nothing is written).
        """
        signer = self._require_signer()
        errors: list[LineError] = []
        read = 0
        with bulk_allocation(), self.store.transaction():
            run = Integration(self.store, self.own_log)
            batch: list[Entry] = []
            batch_lines: list[int] = []
            # A batch is either entries or values (runs of ParsedValues);
            # a change of kind writes what is pending, so order is kept.
            families: list[AddFamily] = []
            values: list[str] = []
            value_lines: list[int] = []
            last_line = -1
            for parsed in lines:
                if type(parsed) is ParsedValues:
                    read += parsed.rows - (parsed.lines[0] == last_line)
                    last_line = parsed.lines[-1]
                    if errors and not skip_invalid:
                        continue
                    if batch:
                        run.append(batch, batch_lines)
                        batch, batch_lines = [], []
                    families += parsed.families
                    values += parsed.values
                    value_lines += parsed.lines
                    if len(values) >= IMPORT_BATCH:
                        run.append_values(families, values, value_lines)
                        families, values, value_lines = [], [], []
                        if progress is not None:
                            progress(read)
                    continue
                assert type(parsed) is ParsedLine
                # A CSV row or a VICS media item may give several entries.
                if parsed.line != last_line:
                    read += 1
                    last_line = parsed.line
                if parsed.error is not None:
                    errors.append(parsed.error)
                    continue
                if errors and not skip_invalid:
                    # Nothing will be written; keep reading only to report.
                    continue
                assert parsed.entry is not None
                if values:
                    run.append_values(families, values, value_lines)
                    families, values, value_lines = [], [], []
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
            run.append_values(families, values, value_lines)
            checkpoint = run.commit_checkpoint(signer)
            if progress is not None:
                progress(read)
        result = AppendResult(
            run.start, run.next_index - run.start, tuple(run.duplicates), checkpoint
        )
        # Committed: the new rows are durable whether or not a merge follows.
        merged = merge_active_if_due(self.store)
        return ImportResult(result, read, tuple(errors), merged)

    def sign_card(self, card: SignedCard) -> str:
        """Sign ``card`` with the log's key and serve it from now on (``GET /v1/card``).

        Raises:
            RecoveringError, LedgerError: as every signature (:meth:`append`).
        """
        note = sign_card(card, self._require_signer())
        write_own_card_note(self.config, note)
        return note

    def signed_card(self) -> str | None:
        """The signed card this node serves, or None before its first ``tls renew``."""
        return read_own_card_note(self.config)

    def own_card_serial(self) -> int:
        """The serial of the signed card this node serves (0 before its first ``tls renew``)."""
        card = read_own_card(self.config)
        return 0 if card is None else card.serial

    def accept_peer_card(self, name: str, note: str) -> SignedCard | None:
        """Check a peer's signed card and trust its certificates (:mod:`node.ledger.cards`).

        Returns:
            The card, or None if it is not newer than the one held.

        Raises:
            ConfigError: if ``name`` is not a peer, or a key is another peer's.
            MalformedError, VerificationError: if the card does not verify.
        """
        with self.store.transaction():
            peer = next((p for p in self.peers.list_peers() if p.name == name), None)
            if peer is None:
                raise ConfigError(f"no peer named {name!r}")
            return accept_peer_card(self.store, peer, note)

    def certificate_expiries(self) -> list[CertificateExpiry]:
        """Expiry of the own and every peer's TLS certificates (warnings 30 days ahead)."""
        return certificate_expiries(self.config, self.peers.list_peers())

    # -- reads ------------------------------------------------------------

    def log_for(self, origin: str | None) -> LogRecord:
        """The log with ``origin``, or the own log when ``origin`` is None."""
        return self.own_log if origin is None else self.store.get_log(origin)

    def logs(self) -> list[LogRecord]:
        """Every log held: the own log and each replica with entries, by origin."""
        return self.store.list_logs()

    def stored_checkpoint(self, log: LogRecord, size: int | None = None) -> CheckpointRecord | None:
        """The stored checkpoint of ``log`` of ``size`` (default: the latest), or None."""
        if size is None:
            return self.store.latest_checkpoint(log.log_id)
        return self.store.get_checkpoint(log.log_id, size)

    def stored_checkpoints(self, log: LogRecord, start: int = 0) -> Iterator[CheckpointRecord]:
        """The stored checkpoints of ``log`` of size ``start`` or more, by size."""
        return self.store.iter_checkpoints(log.log_id, start)

    def served_note(self, log: LogRecord, record: CheckpointRecord) -> str:
        """A stored checkpoint's note with the witness cosignatures held for it, as served."""
        return served_note(self.store, log.log_id, record)

    def entries(
        self, log: LogRecord, start: int = 0, end: int | None = None
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """``(index, data, leaf hash)`` of the stored entries of ``log`` in ``[start, end)``."""
        return self.store.iter_entries(log.log_id, start, end)

    def entry(self, log: LogRecord, index: int) -> bytes | None:
        """The exact bytes of entry ``index`` of ``log``, or None if not held."""
        return self.store.get_entry(log.log_id, index)

    def hash_tile(self, log: LogRecord, tile: TileId, size: int) -> bytes:
        """The bytes of a C2SP hash tile of ``log``'s tree of ``size`` leaves.

        Hash tiles are public (docs/protocol.md): they hold leaf and node
        hashes only. One range read of stored hashes, no hashing.

        Raises:
            EntryNotFoundError: if the tree of ``size`` has no such tile
                (a tile past the tree); ``field`` is ``"tile"``.
            StorageError: if ``size`` is beyond what is stored, or the
                database is damaged.
        """
        if not tile.is_within(size):
            raise EntryNotFoundError(
                f"tile {tile.to_path()} lies beyond the tree of size {size}", field="tile"
            )
        return self.store.hash_tile(log.log_id, tile)

    def retracted_targets(self, log: LogRecord, start: int, end: int) -> dict[int, int]:
        """Entry index -> index of its retraction, for retracted entries in ``[start, end)``."""
        return self.store.retracted_targets(log.log_id, start, end)

    def recent_checkpoints(self, log: LogRecord, limit: int) -> list[CheckpointRecord]:
        """The ``limit`` latest stored checkpoints of ``log``, latest first (one per write)."""
        return self.store.recent_checkpoints(log.log_id, limit)

    def size_by_day(self, log: LogRecord, since: str) -> list[tuple[str, int]]:
        """``(UTC day, size at that day's last checkpoint)`` from ``since`` (``YYYY-MM-DD``) on.

        Preceded by the last day before ``since`` that has a checkpoint, if any,
        so growth on the first day can be told.
        """
        return self.store.size_by_day(log.log_id, since)

    def recent_retractions(self, log: LogRecord, limit: int) -> list[tuple[int, int]]:
        """The ``limit`` latest retractions of ``log``: ``(target, retracting index)``."""
        return self.store.recent_retractions(log.log_id, limit)

    def key_chain(self, origin: str) -> KeyChain:
        """The stored key chain of ``origin`` (see :func:`node.ledger.rotation.load_key_chain`)."""
        return load_key_chain(self.store, origin)

    def rotation_indexes(self, origin: str) -> list[int]:
        """Indexes of the rotate entries applied to ``origin``'s key chain, ascending."""
        return sorted(
            r.rotated_by for r in self.store.key_chain(origin) if r.rotated_by is not None
        )

    def transaction(self) -> AbstractContextManager[None]:
        """Run the block in one write transaction (``BEGIN IMMEDIATE``), all or nothing.

        Writes of the ledger and of its stores (:attr:`peers`,
        :attr:`witnessing`) made in the block join it.
        """
        return self.store.transaction()

    def data_version(self) -> int:
        """Changes whenever another connection commits (SQLite ``data_version``)."""
        return self.store.data_version()

    def defer_checkpoints(self) -> None:
        """Let the WAL grow to :data:`CATCH_UP_WAL_BYTES` before commits copy it into the database.

        For a catch-up of many chunks (:mod:`node.sync.engine`), each its own
        verified, durable transaction: with SQLite's default (a checkpoint
        after every commit of more than 8 MB) each chunk's pages were written
        twice, and the pages of the ``active`` index, which nearly every
        chunk touches again, twice per chunk. Deferred, a page changed by
        several chunks reaches the database file once per checkpoint: a 1M
        sync into an empty node wrote 987 bytes an entry, 783 with no
        checkpoint until the end; 4 chunks of 50,000 into a 10M-entry log
        8,427 against 5,445 (docs/benchmarks.md). Calls nest (one per running
        catch-up); :meth:`resume_checkpoints` ends each.
        """
        self._deferred_checkpoints += 1
        if self._deferred_checkpoints == 1:
            self.store.set_wal_limit(CATCH_UP_WAL_BYTES)

    def resume_checkpoints(self) -> None:
        """End one :meth:`defer_checkpoints`; the last one checkpoints the WAL (PASSIVE)."""
        if self._deferred_checkpoints == 0:
            return
        self._deferred_checkpoints -= 1
        if self._deferred_checkpoints == 0:
            self.store.set_wal_limit(None)

    def integrity_check(self) -> list[str]:
        """SQLite's ``PRAGMA integrity_check`` result lines (["ok"] when sound)."""
        return self.store.integrity_check()

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
        record = self.store.latest_checkpoint(log.log_id)
        if record is None:
            raise LedgerError(f"log {log.origin} has no checkpoint yet")
        latest = record.size
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
        # The leaf is fetched with the proof's nodes: its tile is the one the
        # lowest proof hashes fold from, so it costs no extra read.
        plan = inclusion_proof_nodes(index, tree_size)
        *nodes, leaf_hash = self.store.get_node_hashes(log.log_id, [*plan.node_ids, _leaf(index)])
        return Proof(tuple(plan.fold(nodes)), tree_size, index=index, leaf_hash=leaf_hash)

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
        index = leaves.find(
            self.store, log.log_id, leaf_hash, tree_size, directory=self.index_directory
        )
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

    def held_entries(self, origin: str | None = None) -> int:
        """Entries of a log held (a replica mid catch-up may hold more than its checkpoint).

        Raises:
            UnknownLogError: if the log is not held.
        """
        return self.store.entry_count(self.log_for(origin).log_id)

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

    @property
    def peers(self) -> PeerStore:
        """Peers, their sync status, followed origins and fork evidence."""
        return self.store.peers

    @property
    def witnessing(self) -> WitnessStore:
        """This node's witness state and the cosignatures it holds."""
        return self.store.witnessing

    @property
    def matching(self) -> MatchStore:
        """The PDQ hashes and opinions that matching reads."""
        return self.store.matching

    def follow(self, origin: str, vkey: str) -> None:
        """Replicate ``origin``, trusting only checkpoints signed by ``vkey``.

        Idempotent for the same key. The log row itself is created by the
        first successful replication, so a followed origin shows up in
        :meth:`logs` only once it has a signed checkpoint here. Joins an
        open transaction, if any.

        Raises:
            ConfigError: if the key is invalid or not named ``origin``, the
                origin is followed with another key, or it is this node's own
                log or a log held under another key.
        """
        try:
            verifier = NoteVerifier.from_text(vkey)
        except MalformedError as e:
            raise ConfigError(f"verifier key for {origin!r} is not valid: {e}") from e
        if verifier.name != origin:
            raise ConfigError(f"verifier key is for {verifier.name!r}, not {origin!r}")
        with self.store.joined_transaction():
            existing = self.peers.get_follow(origin)
            if existing is not None:
                # A card made after a rotation carries the newer key: fine
                # when our chain (protocol.rotation) already holds it.
                if vkey == existing.vkey or vkey in {p.vkey for p in self.store.key_chain(origin)}:
                    return
                raise ConfigError(
                    f"{origin!r} is already followed with another key ({existing.vkey}); "
                    "a log changes its key only by a rotate entry, which followers read from "
                    "the log itself"
                )
            try:
                held: LogRecord | None = self.store.get_log(origin)
            except UnknownLogError:
                held = None
            if held is not None and held.is_own:
                raise ConfigError(f"{origin!r} is this node's own log; it cannot be followed")
            if held is not None and held.verifier_key != vkey:
                raise ConfigError(
                    f"{origin!r} is held here under another key ({held.verifier_key})"
                )
            self.peers.add_follow(origin, vkey)
            if not self.store.key_chain(origin):
                self.store.add_key_period(origin, 0, vkey, None)

    def replica(self, origin: str) -> Replica:
        """The :class:`~node.ledger.replica.Replica` of a followed origin.

        It applies the witness policy of this node's config to the origin.
        While the node recovers from a restore, its own origin has one too:
        what its peers hold of its own log beyond the backup comes back
        through the same verification as any replicated log.

        Raises:
            UnknownLogError: if ``origin`` is not followed.
            ConfigError: if the stored verifier key is invalid.
        """
        own = origin == self.config.origin and self.recovering is not None
        return Replica(self.store, origin, witness=self.config.witness, own=own)

    def replicas(self) -> list[Replica]:
        """One :class:`~node.ledger.replica.Replica` per followed origin."""
        return [self.replica(f.origin) for f in self.peers.list_follows()]

    def witness_waits(self) -> list[QuorumWait]:
        """Followed origins' checkpoints held back until enough witnesses cosign them."""
        return quorum_waits(self.store, self.config)

    def witness(self) -> Witness:
        """This node as a witness (:mod:`node.ledger.witness`), its key made on first use.

        Raises:
            ConfigError: if the witness key is unreadable or not this node's.
            RecoveringError: if the node was restored and has not recovered
                (its witness state is the backup's: cosigning now could
                cosign two histories of one origin).
        """
        self._refuse_while_recovering("cosign")
        return Witness(self.store, load_witness_signer(self.config))

    def check(self, log: LogRecord, progress: ScanProgress | None = None) -> LogScan:
        """Check a log against its checkpoints and its derived data against it (``fsck``).

        ``progress`` is called after each batch with the entries scanned so far.
        """
        return check_log(self.store, log, progress=progress)

    def guard_findings(self) -> list[Finding]:
        """Missing append-only triggers, as fsck findings."""
        return guard_findings(self.store)

    def repair_derived(self, progress: RepairProgress | None = None) -> list[LogScan]:
        """Rebuild every derived table from the verified logs (node.ledger.fsck)."""
        return repair_derived(self.store, progress)

    def check_index_files(self) -> list[Finding]:
        """The index files (PDQ, leaf hashes) checked against the log, as fsck findings."""
        return check_index_files(
            self.store, self.index_directory, self.config.match.min_quality, self.config.origin
        )

    def build_index_files(self) -> list[IndexFile]:
        """Write every index file afresh from the tables (``fsck --repair``, ``index build``)."""
        return build_index_files(self.store, self.index_directory, self.config.match.min_quality)

    def plan_repair(self, origin: str, progress: ScanProgress | None = None) -> RepairRange | None:
        """The first damaged range of a log to fetch from peers, or None if it verifies."""
        return plan_repair(self.store, self.log_for(origin), progress)

    def restore_entries(self, plan: RepairRange, datas: Sequence[bytes]) -> int:
        """Put a peer's copy of a damaged range in place, if it gives our signed root.

        One transaction; returns the entries rewritten (see
        :func:`node.ledger.fsck.restore_entries`).
        """
        with self.store.transaction():
            return restore_entries(self.store, self.log_for(plan.origin), plan, datas)

    def recompute_root(
        self, origin: str | None = None, size: int | None = None
    ) -> tuple[int, bytes]:
        """Recompute a log's root from its stored entry bytes (a quick check).

        ``hashmesh fsck`` goes further (:mod:`node.ledger.fsck`): every
        checkpoint's root, every stored node and the derived tables.

        Covers the first ``size`` entries, or every entry held when ``size``
        is None; returns the number of entries hashed and their root.
        """
        log = self.log_for(origin)
        datas: list[bytes] = []
        tree = CompactRange.empty()
        # Hash the stored entry bytes rather than trusting stored leaf hashes.
        for _idx, data, _leaf_hash in self.store.iter_entries(log.log_id, 0, size):
            datas.append(bytes(data))
            if len(datas) >= IMPORT_BATCH:
                tree.extend(hash_leaves(datas))
                datas.clear()
        tree.extend(hash_leaves(datas))
        return tree.size, tree.root()


def _leaf(index: int) -> NodeId:
    return NodeId(level=0, index=index)
