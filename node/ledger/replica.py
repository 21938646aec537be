"""Replicas: verified copies of other origins' logs, and fork detection.

Layer: node.ledger. Uses :mod:`node.storage` for I/O and :mod:`protocol` for
every signature, proof and entry format. Performs no network I/O: the sync
engine fetches, this module verifies and writes.

A followed origin is pinned to its verifier key (``follows``). Every
checkpoint is opened with that key, never with the key of the peer that
relayed it, so a replica is trusted exactly as much as its author. A batch of
entries is written only when the tree it produces is proven to be a prefix of
(or equal to) a checkpoint the origin signed, and every batch is one
transaction: a rejected batch leaves the database as it was.

Whether a checkpoint agrees with what we hold is decided by
:func:`protocol.judgement.judge_checkpoint` (:meth:`Replica.judge_checkpoint`
reads, :meth:`Replica.record_checkpoint` also stores what follows). One that
contradicts what we hold (same size and another root, or a smaller size whose
root is not our root at that size) is a fork: its
:class:`protocol.evidence.ForkEvidence`, built from the stored tree, is
stored and the origin is frozen: no more of its entries are accepted, and the
evidence can be checked by anyone with ``python -m protocol verify-evidence``.

Fork detection needs a signed note on our side. Entries committed beyond the
latest stored checkpoint (the chunks of an unfinished catch-up) are proven
against a checkpoint whose note is stored only with the last chunk; a
conflict inside that range is refused with :class:`ReplicationError` rather
than frozen, because we hold no signed note to prove it with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from node.config import WitnessSettings
from node.errors import (
    ConfigError,
    FrozenLogError,
    ReplicationError,
    RetractionError,
    UnknownLogError,
)
from node.ledger.active_levels import SYNC_CHECK_ROWS, merge_active_if_due
from node.ledger.gc_pause import bulk_allocation
from node.ledger.integration import Integration, Prepared, prepare
from node.ledger.rotation import load_key_chain, save_rotations
from node.ledger.witness import save_cosignatures, weigh_cosignatures
from node.storage.ledger_store import CheckpointRecord, LedgerStore, LogRecord
from protocol.checkpoint import Checkpoint, CheckpointNote, VerifiedCheckpoint
from protocol.entry import Entry, parse_add_run, parse_entries
from protocol.errors import MalformedError, QuorumError, RootMismatchError
from protocol.evidence import ForkEvidence
from protocol.hashing import EMPTY_ROOT
from protocol.judgement import CheckpointJudgement, HeldTree, judge_checkpoint
from protocol.keys import NoteVerifier
from protocol.merkle import verify_consistency
from protocol.note import Note
from protocol.rotation import KeyChain
from protocol.tree import compute_consistency_proof

__all__ = ["CheckpointKind", "CheckpointVerdict", "Replica", "ReplicaState", "prepare_chunk"]

logger = logging.getLogger("hashmesh.witness")

CheckpointKind = Literal["ahead", "same", "behind", "fork", "frozen"]

LOCAL_SOURCE = "local"
"""The ``source`` of evidence this node detected itself."""


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What we hold of an origin's log.

    Attributes:
        origin: the followed origin.
        size: entries held (may exceed the latest checkpoint's size during a
            catch-up).
        root_hash: the root of those entries.
        checkpoint: the latest stored signed checkpoint, or None.
        frozen: fork evidence is held; nothing more is accepted.
    """

    origin: str
    size: int
    root_hash: bytes
    checkpoint: CheckpointRecord | None
    frozen: bool


@dataclass(frozen=True, slots=True)
class CheckpointVerdict:
    """How a verified checkpoint of the origin compares with what we hold.

    Attributes:
        kind: ``ahead`` (fetch entries ``[our size, size)``), ``same``,
            ``behind`` (a consistent older checkpoint), ``fork`` (evidence
            stored, origin frozen) or ``frozen`` (not compared).
        size: the checkpoint's tree size.
        root_hash: the checkpoint's root hash.
        evidence: the fork evidence, for ``fork``.
        cosigned: cosignature lines newly stored for a checkpoint we already
            held (``same``, ``behind``): worth announcing to our followers.
    """

    kind: CheckpointKind
    size: int
    root_hash: bytes
    evidence: ForkEvidence | None = None
    cosigned: int = 0


def prepare_chunk(entries: Sequence[bytes], start: int) -> Prepared:
    """Parse and hash entries ``[start, start + len(entries))`` of an origin's log.

    Needs no database, so the sync engine runs it on another thread while
    the writer stores the chunk before (:meth:`Replica.append_verified`
    takes the result). Proves nothing about the entries' place in the log:
    the write transaction checks the tree against the signed checkpoint.

    Raises:
        MalformedError: if an entry is not canonical (the field names its index).
    """
    with bulk_allocation():
        datas = [bytes(d) for d in entries]
        # A chunk is usually one family of adds: checked in bulk, else entry by entry.
        parsed: Sequence[Entry] | None = parse_add_run(datas)
        if parsed is None:
            parsed = parse_entries(datas, start)
        return prepare(parsed, datas)


class Replica:
    """One followed origin's log in this node's database."""

    def __init__(
        self,
        store: LedgerStore,
        origin: str,
        *,
        witness: WitnessSettings | None = None,
        own: bool = False,
    ) -> None:
        """Bind to a followed origin.

        Args:
            store: the node's store.
            origin: the followed origin.
            witness: the node's witness settings (``[witness]`` in
                ``config.toml``, :mod:`node.ledger.witness`), whose policy
                for ``origin`` is applied; none when omitted.
            own: ``origin`` is this node's own log, being recovered after
                a restore (:mod:`node.sync.recovery`): its checkpoints are
                opened with its own key chain, and entries its peers hold
                beyond ours are appended verbatim, verified like any other.

        Raises:
            UnknownLogError: if ``origin`` is not followed (nor, with
                ``own``, the own log).
            ConfigError: if the stored verifier key is invalid.
        """
        self.store = store
        self.origin = origin
        self.own = own
        if own:
            log = store.own_log()
            if log.origin != origin:
                raise UnknownLogError(f"{origin!r} is not this node's own log")
            vkey = log.verifier_key
        else:
            follow = self.store.peers.get_follow(origin)
            if follow is None:
                raise UnknownLogError(
                    f"origin {origin!r} is not followed; run `hashmesh follow` or "
                    "`hashmesh peer add`"
                )
            vkey = follow.vkey
        try:
            self.verifier = NoteVerifier.from_text(vkey)
        except MalformedError as e:
            raise ConfigError(f"stored verifier key of {origin!r} is invalid: {e}") from e
        self.vkey = vkey
        self.witness_requirement = None if witness is None else witness.requirement_for(origin)
        self.witness_keys = () if witness is None else witness.known_keys(origin)

    def _log(self) -> LogRecord | None:
        try:
            log = self.store.get_log(self.origin)
        except UnknownLogError:
            return None
        if log.is_own and not self.own:
            raise ConfigError(f"{self.origin!r} is this node's own log, not a replica")
        return log

    def state(self) -> ReplicaState:
        """Size, root, latest checkpoint and frozen flag of the replica."""
        log = self._log()
        frozen = self.store.peers.is_frozen(self.origin)
        if log is None:
            return ReplicaState(self.origin, 0, EMPTY_ROOT, None, frozen)
        size = self.store.entry_count(log.log_id)
        root = self.store.load_compact_range(log.log_id, size).root()
        latest = self.store.latest_checkpoint(log.log_id)
        return ReplicaState(self.origin, size, root, latest, frozen)

    def root_at(self, size: int) -> bytes:
        """Root of the first ``size`` entries held, from stored nodes.

        Raises:
            MalformedError: if fewer than ``size`` entries are held.
        """
        log = self._log()
        held = 0 if log is None else self.store.entry_count(log.log_id)
        if not 0 <= size <= held:
            raise MalformedError(f"size {size} is beyond the {held} entries held", field="size")
        if log is None:
            return EMPTY_ROOT
        return self.store.load_compact_range(log.log_id, size).root()

    def key_chain(self) -> KeyChain:
        """The origin's key chain as stored (the pinned key, then its rotations)."""
        return load_key_chain(self.store, self.origin)

    def _open(self, note: CheckpointNote, *, keep: bool = True) -> VerifiedCheckpoint:
        # The key depends on the checkpoint's size once the origin has rotated
        # its key (protocol.rotation); the chain is re-read because another
        # replica object may have extended it since this one was made.
        chain = self.key_chain()
        requirement = self.witness_requirement
        if requirement is None:
            return chain.open(note)
        # Cosignatures of one checkpoint may reach us on different paths (k
        # of n witnesses, each relaying its own line): the lines collected
        # while waiting count with the ones this copy carries.
        wait = self.store.witnessing.get_wait(self.origin)
        weighed = weigh_cosignatures(
            chain, note, requirement, collected=None if wait is None else wait.note
        )
        if weighed.met:
            return weighed.opened
        larger = wait is not None and wait.size > weighed.opened.size
        since = self._wait_for(weighed.opened, larger) if keep else None
        reason = weighed.refusal()
        if since is not None:
            reason += f"; waiting since {since} for {', '.join(weighed.missing)}"
        raise QuorumError(reason)

    def _wait_for(self, opened: VerifiedCheckpoint, larger_waiting: bool) -> str | None:
        """Keep a checkpoint short of the policy, with its good cosignatures, until it is met.

        Only a checkpoint beyond what we hold, and not smaller than one
        already waited for, is kept. Committed at once (its own transaction,
        or the caller's): the refusal that follows must not roll it back.

        Returns:
            Since when we wait, or None if it was not kept.
        """
        if larger_waiting:
            return None
        cp = opened.checkpoint
        log = self._log()
        held = None if log is None else self.store.latest_checkpoint(log.log_id)
        if held is not None and held.size >= cp.size:
            return None
        with self.store.joined_transaction():
            return self.store.witnessing.save_wait(
                self.origin, cp.size, cp.root_hash, opened.note.to_text()
            )

    def _kept_note(self, opened: VerifiedCheckpoint, note: CheckpointNote) -> str:
        """The note to store for a checkpoint: as received, unless a policy applies.

        Under a policy, the note as weighed: a line under a required key that
        did not verify (a relay's junk) is dropped, so it cannot shadow the
        good line collected elsewhere when the checkpoint is served on.
        """
        return note if self.witness_requirement is None else opened.note.to_text()

    def _end_wait(self, cp: Checkpoint) -> None:
        ended = self.store.witnessing.end_wait(self.origin, cp.size)
        if ended is not None:
            logger.info(
                "%s: checkpoint of size %d is held, cosigned as the policy requires "
                "(waited since %s for size %d)",
                self.origin,
                cp.size,
                ended.since,
                ended.size,
            )

    def _save_cosignatures(self, cp: Checkpoint, note: CheckpointNote | Note) -> int:
        # Cosignatures by witnesses we know, for a checkpoint we hold, are
        # kept so they are served with it even when it reached us without.
        log = self._log()
        if log is None:
            return 0
        return save_cosignatures(self.store, log.log_id, cp, note, self.witness_keys)

    def judge_checkpoint(self, note: CheckpointNote) -> CheckpointJudgement:
        """Verify a checkpoint of the origin and judge it against what we hold; writes nothing.

        The decision is :func:`protocol.judgement.judge_checkpoint`'s; a
        fork's evidence is built from our stored tree and verified.

        Raises:
            MalformedError: if the note is malformed.
            VerificationError: if the origin's key did not sign it, or it is
                for another origin; QuorumError if the witness policy for the
                origin ([[witness.require]]) is not met.
        """
        return self._judge(self._open(note, keep=False))

    def _judge(self, opened: VerifiedCheckpoint) -> CheckpointJudgement:
        state = self.state()
        signed = state.checkpoint
        held = HeldTree(
            size=state.size,
            root_hash=state.root_hash,
            signed_size=None if signed is None else signed.size,
            signed_note=None if signed is None else signed.note,
        )
        log = self._log()

        def held_proof(old_size: int, new_size: int) -> list[bytes]:
            assert log is not None  # a fork needs a stored signed checkpoint
            return compute_consistency_proof(old_size, new_size, self.store.reader(log.log_id))

        return judge_checkpoint(
            opened, held, self.key_chain(), root_at=self.root_at, held_proof=held_proof
        )

    def record_checkpoint(
        self, note: CheckpointNote, *, source: str = LOCAL_SOURCE
    ) -> CheckpointVerdict:
        """Judge a checkpoint of the origin (:meth:`judge_checkpoint`) and store what follows.

        In one transaction: a ``fork`` stores the evidence, which freezes the
        origin; a ``same`` checkpoint whose note we do not hold yet is stored,
        completing a catch-up whose last chunk was committed without it; a
        ``same`` or ``behind`` one leaves the cosignatures of witnesses we
        know. A frozen origin's checkpoints are not judged.

        Args:
            note: the exact signed checkpoint note.
            source: who showed us the note (a peer name), kept with evidence.

        Raises:
            MalformedError, VerificationError: as :meth:`judge_checkpoint`.
            ReplicationError: if it conflicts with entries we hold beyond our
                latest signed checkpoint (no evidence can be built).
        """
        opened = self._open(note)
        cp = opened.checkpoint
        with self.store.transaction():
            if self.store.peers.is_frozen(self.origin):
                return CheckpointVerdict("frozen", cp.size, cp.root_hash)
            judged = self._judge(opened)
            relation = judged.relation
            if relation == "unprovable":
                raise ReplicationError(
                    f"{self.origin}: {judged.reason}; the batch that added them was proven "
                    "against another signed checkpoint, so the origin or a peer misbehaves"
                )
            if relation == "fork":
                assert judged.evidence is not None
                self.store.peers.add_evidence(self.origin, judged.evidence.to_json(), source)
                return CheckpointVerdict("fork", cp.size, cp.root_hash, judged.evidence)
            if relation == "same":
                log = self._log()
                if log is not None and self.store.get_checkpoint(log.log_id, cp.size) is None:
                    self.store.put_checkpoint(
                        log.log_id, cp.size, cp.root_hash, self._kept_note(opened, note)
                    )
                self._end_wait(cp)
            cosigned = 0
            if relation != "ahead":
                cosigned = self._save_cosignatures(cp, opened.note)
            assert relation in ("ahead", "same", "behind")
            return CheckpointVerdict(relation, cp.size, cp.root_hash, cosigned=cosigned)

    def append_verified(
        self,
        checkpoint_note: CheckpointNote,
        start: int,
        entries: Sequence[bytes] | Prepared,
        proof: Sequence[bytes] | None,
    ) -> ReplicaState:
        """Append entries ``[start, start + len(entries))`` of the origin, verified.

        With ``b = start + len(entries)`` and ``n`` the checkpoint's size: if
        ``b == n`` the new root must be the checkpoint's root, and the note is
        stored with the entries; if ``b < n``, ``proof`` must be the
        consistency proof ``b -> n`` from our computed root to the
        checkpoint's root. Every entry must be canonical, retractions must
        target an earlier, not yet retracted add. Entries are stored verbatim.
        All of it is one transaction. ``entries`` may come parsed and hashed
        by :func:`prepare_chunk` (done outside the transaction, on any thread).

        Returns:
            The replica's state after the commit.

        Raises:
            MalformedError: if the note or an entry is malformed (the field
                names the entry index).
            VerificationError: if the note's signature or origin, the root or
                the proof fail.
            ReplicationError: if ``start`` is not our size, the batch runs
                past the checkpoint, a proof is missing or a retraction is
                invalid.
            FrozenLogError: if the origin is frozen.
        """
        opened = self._open(checkpoint_note)
        cp = opened.checkpoint
        datas = entries.datas if isinstance(entries, Prepared) else entries
        end = start + len(datas)
        if end > cp.size:
            raise ReplicationError(
                f"{self.origin}: batch ends at {end}, past the checkpoint size {cp.size}"
            )
        if end < cp.size and not datas:
            raise ReplicationError(f"{self.origin}: empty batch below the checkpoint size")
        if end < cp.size and proof is None:
            raise ReplicationError(
                f"{self.origin}: a batch ending at {end} below the checkpoint size {cp.size} "
                "needs a consistency proof"
            )
        # Parsing and writing a chunk allocate millions of short-lived objects.
        with bulk_allocation():
            chunk = entries if isinstance(entries, Prepared) else prepare_chunk(entries, start)
            state = self._append_verified(opened, checkpoint_note, start, end, chunk, proof)
        # Committed; merging (when due) keeps `active` small for the next chunks.
        merge_active_if_due(self.store, every=SYNC_CHECK_ROWS)
        return state

    def _append_verified(
        self,
        opened: VerifiedCheckpoint,
        checkpoint_note: CheckpointNote,
        start: int,
        end: int,
        chunk: Prepared,
        proof: Sequence[bytes] | None,
    ) -> ReplicaState:
        cp = opened.checkpoint
        with self.store.transaction():
            if self.store.peers.is_frozen(self.origin):
                raise FrozenLogError(
                    f"{self.origin} is frozen: fork evidence is held; see `hashmesh evidence list`"
                )
            log = self._log()
            if log is None:
                log = self.store.create_log(self.origin, self.vkey, is_own=False)
            run = Integration(self.store, log, replica=True)
            if start != run.next_index:
                raise ReplicationError(
                    f"{self.origin}: batch starts at {start}, but {run.next_index} entries "
                    "are held (start must equal our size)"
                )
            try:
                batch = run.sequence_prepared(chunk)
            except RetractionError as e:
                raise ReplicationError(f"{self.origin}: {e}") from e
            root = run.tree.root()
            # Rotations take effect only once the entries are proven (below).
            chain = self.key_chain()
            if end == cp.size:
                if root != cp.root_hash:
                    raise RootMismatchError(
                        f"{self.origin}: entries [{start}, {end}) do not lead to the "
                        f"checkpoint's root at size {cp.size}",
                        expected=cp.root_hash,
                        calculated=root,
                    )
            else:
                assert proof is not None
                verify_consistency(end, cp.size, root, cp.root_hash, list(proof))
            save_rotations(self.store, chain, run.rules.rotations, cp.size)
            run.store_batch(batch)
            if end == cp.size and self.store.get_checkpoint(log.log_id, end) is None:
                self.store.put_checkpoint(
                    log.log_id, end, cp.root_hash, self._kept_note(opened, checkpoint_note)
                )
            if end == cp.size:
                # With the cosignatures collected on other paths, if any.
                self._save_cosignatures(cp, opened.note)
                self._end_wait(cp)
            return self.state()
