"""One sync round with one peer: fetch, hand to the replica for verification, report.

Layer: node.sync. Network I/O through :class:`~node.sync.client.PeerClient`,
storage through the :class:`~node.storage.database.Database` facade.

For every origin we follow that the peer holds:

1. take the peer's latest checkpoint and verify it against the *origin's* key
   (never the peer's: a relayed log is trusted exactly as much as its author);
2. compare it with what we hold (:meth:`Replica.record_checkpoint`): ahead,
   same, behind, or a fork (evidence is stored and the origin frozen); a peer
   serving its *own* origin behind what we verified is marked as regressed;
3. when ahead, fetch the missing entries in chunks; each chunk is proven a
   prefix of the signed tree by a consistency proof from the chunk's end to the
   checkpoint, against the root we compute ourselves, and committed in one
   transaction. An interrupted sync therefore resumes from the last chunk.
4. when the head is signed by a key we do not know yet (the origin rotated
   its key), catch up first to the peer's last checkpoint that our key chain
   verifies (the one committing the rotation), then take the head.

Any failure rejects that batch (nothing of it is written), marks the peer with
the reason, and ends the round for that peer; other peers are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from node.errors import NodeError, PeerError, StorageError
from node.ledger.damage import DamageRegister
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.integration import Prepared
from node.ledger.replica import ReplicaState, prepare_chunk
from node.ledger.service import Ledger
from node.metrics import error_kind
from node.sync.client import PeerClient, RemoteLog
from node.sync.heads import peer_heads
from protocol.errors import ProtocolError, QuorumError, UnknownKeyError
from protocol.evidence import ForkEvidence, verify_fork_evidence
from protocol.keys import NoteVerifier
from protocol.rotation import KeyChain

logger = logging.getLogger("hashmesh.sync")

__all__ = [
    "CHUNK_ENTRIES",
    "OriginResult",
    "PeerSyncReport",
    "SyncProgress",
    "sync_origin",
    "sync_peer",
]

SyncProgress = Callable[[str, int, int], None]
"""``progress(origin, held, target)``: called after each verified chunk of a catch-up."""

CHUNK_ENTRIES = 50_000
"""Entries verified and committed per transaction during a catch-up."""

MAX_ROTATION_STEPS = 16
"""Key rotations one sync round follows for one origin before it gives up."""


@dataclass(slots=True)
class OriginResult:
    """What one sync round did for one origin."""

    origin: str
    verdict: str
    appended: int = 0
    size: int = 0
    cosigned: int = 0
    """Cosignature lines newly stored for a checkpoint already held."""
    waiting: str | None = None
    """Why the peer's checkpoint is held back (``verdict`` ``waiting``): it
    lacks cosignatures this node's witness policy requires. Not the peer's
    fault: the announcement of the cosigned copy (from this peer or another)
    brings it, so the peer is not marked failed and not backed off."""
    peer_size: int = 0
    """The size of the checkpoint the peer served (``size`` is ours after the round)."""


@dataclass(slots=True)
class PeerSyncReport:
    """What one sync round with one peer did."""

    peer: str
    origins: list[OriginResult] = field(default_factory=list)
    evidence_added: int = 0
    error: str | None = None
    error_kind: str | None = None
    """A bounded name for the error (``peer_unavailable``, ``bad_signature``): a metrics label."""

    @property
    def appended(self) -> int:
        """Entries committed in this round, over all origins."""
        return sum(r.appended for r in self.origins)


async def sync_peer(
    db: Database,
    client: PeerClient,
    *,
    hub: CheckpointHub | None = None,
    only_origin: str | None = None,
    chunk: int = CHUNK_ENTRIES,
    progress: SyncProgress | None = None,
) -> PeerSyncReport:
    """Pull every followed origin the peer holds; never raises for a peer's fault.

    Returns:
        The report; ``error`` holds the reason when the peer failed us (it is
        also recorded in the database for ``hashmesh peer list``).
    """
    report = PeerSyncReport(peer=client.name)
    try:
        follows = await db.read(lambda ledger: ledger.peers.list_follows())
        # Evidence first: an origin the peer proved forked is frozen before we
        # compare its checkpoints, and a fork we cannot prove ourselves (the
        # peer holds the longer history) is still learnt in this round.
        chains = await db.read(
            lambda ledger: {f.origin: ledger.key_chain(f.origin) for f in follows}
        )
        report.evidence_added = await _pull_evidence(db, client, chains)
        remote = {log.origin: log for log in await client.logs()}
        damaged = await db.read(lambda ledger: DamageRegister(ledger.config.node_dir).load())
        for follow in follows:
            if only_origin is not None and follow.origin != only_origin:
                continue
            log = remote.get(follow.origin)
            if log is None:
                continue
            if follow.origin in damaged:
                # Nothing is built on a replica that no longer verifies here
                # (node.ledger.damage); `hashmesh repair --from-peers` first.
                report.origins.append(OriginResult(origin=follow.origin, verdict="damaged"))
                logger.warning("%s: not synced until repaired", damaged[follow.origin])
                continue
            report.origins.append(
                await sync_origin(db, client, log, hub=hub, chunk=chunk, progress=progress)
            )
        await _mark_regression(db, client.name, report.origins)
    except (PeerError, ProtocolError, NodeError) as e:
        report.error = str(e) if isinstance(e, PeerError) else f"peer {client.name}: {e}"
        report.error_kind = error_kind(e)
        reason = report.error
        await db.write(lambda ledger: ledger.peers.record_peer_error(client.name, reason))
        return report
    await db.write(lambda ledger: ledger.peers.record_peer_ok(client.name))
    return report


async def _mark_regression(db: Database, peer: str, results: list[OriginResult]) -> None:
    """Fail the peer if its *own* log went backwards.

    A relay may lag behind (``behind`` is no fault), but an author always
    holds its whole log: serving a smaller checkpoint of its own origin than
    one we verified means its log was rolled back (restored from an old
    backup, say). Our state is untouched either way; the regression is named
    in the peer's status and the round's report.

    Raises:
        NodeError: naming the origin and both sizes.
    """

    def own_origin(ledger: Ledger) -> str | None:
        record = next((p for p in ledger.peers.list_peers() if p.name == peer), None)
        return None if record is None else NoteVerifier.from_text(record.vkey).name

    author_of = await db.read(own_origin)
    for result in results:
        if result.origin == author_of and result.verdict == "behind":
            result.verdict = "regressed"
            raise NodeError(
                f"peer {peer}: its own log {result.origin} went backwards: it serves size "
                f"{result.peer_size} after we verified size {result.size} (rolled back or "
                "restored from an old backup?); nothing was changed here"
            )


async def sync_origin(
    db: Database,
    client: PeerClient,
    log: RemoteLog,
    *,
    hub: CheckpointHub | None,
    chunk: int = CHUNK_ENTRIES,
    progress: SyncProgress | None = None,
) -> OriginResult:
    """Bring one origin up to the peer's checkpoint ``log.checkpoint``, verified.

    Steps 2-4 of the module docstring, through ``Ledger.replica(origin)``;
    used for followed origins and, after a restore, for the own log
    (:mod:`node.sync.recovery`).

    Raises:
        PeerError, ProtocolError, NodeError: what the peer or the replica
            refused; committed chunks stay.
    """
    origin = log.origin
    result = OriginResult(origin=origin, verdict="same")
    for _ in range(MAX_ROTATION_STEPS):
        try:
            await _catch_up(db, client, origin, log.checkpoint, result, chunk, progress)
            break
        except QuorumError as e:
            # Nothing was written; its good cosignatures are kept (the
            # replica's wait), and count with those another path brings.
            result.verdict, result.waiting = "waiting", str(e)
            logger.info("%s (via %s)", e, client.name)
            break
        except UnknownKeyError:
            # The head may be signed by a key the origin rotated to after our
            # size: first catch up to the checkpoint that commits the
            # rotation (signed by the key we know), then try the head again.
            step = await _rotation_checkpoint(db, client, origin)
            if step is None:
                raise
            await _catch_up(db, client, origin, step, result, chunk, progress)
    # New cosignatures of a held checkpoint are news too: a follower of ours
    # that requires them fetches the checkpoint again at once.
    if hub is not None and (result.appended or result.cosigned):
        hub.publish(origin, result.size)
    return result


async def _rotation_checkpoint(db: Database, client: PeerClient, origin: str) -> str | None:
    """The peer's largest checkpoint beyond our size that our key chain verifies.

    Checkpoints are scanned in size order up to the first one our chain does
    not verify; with an honest origin that is the one just after the
    checkpoint committing a rotation (``protocol.rotation``).
    """

    def read(ledger: Ledger) -> tuple[KeyChain, int]:
        replica = ledger.replica(origin)
        return replica.key_chain(), replica.state().size

    chain, have = await db.read(read)
    best: str | None = None
    start = have + 1
    while True:
        page = await client.checkpoints(origin, start)
        if not page:
            return best
        for _size, note in page:
            try:
                chain.open(note)
            except ProtocolError:
                return best
            best = note
        start = page[-1][0] + 1


async def _catch_up(
    db: Database,
    client: PeerClient,
    origin: str,
    note: str,
    result: OriginResult,
    chunk: int,
    progress: SyncProgress | None = None,
) -> None:
    """Verify ``note`` against what we hold and fetch what it adds, chunk by chunk."""

    def check(ledger: Ledger) -> tuple[str, int, int, int]:
        replica = ledger.replica(origin)
        verdict = replica.record_checkpoint(note)
        return verdict.kind, replica.state().size, verdict.size, verdict.cosigned

    kind, have, want, cosigned = await db.write(check)
    result.verdict, result.size, result.peer_size = kind, have, want
    result.cosigned += cosigned
    if kind in ("ahead", "same", "behind"):
        # Verified against the origin's key chain by record_checkpoint.
        peer_heads(db).record(client.name, origin, want)
    if kind == "fork":
        logger.error(
            "FORK: %s signed a checkpoint of size %d (via %s) that contradicts the log we "
            "hold; evidence stored, origin frozen (hashmesh evidence export %s)",
            origin,
            want,
            client.name,
            origin,
        )
    if kind != "ahead":
        return

    async def fetch(start: int) -> tuple[int, Prepared, tuple[bytes, ...] | None]:
        end = min(start + chunk, want)
        entries = await client.entries(origin, start, end)
        proof = None if end == want else (await client.consistency(origin, end, want)).hashes
        # Parsing and hashing need no database: on a thread of their own they
        # overlap the writer's SQLite work and commit of the chunk before.
        return start, await asyncio.to_thread(prepare_chunk, entries, start), proof

    # A catch-up of several chunks lets the WAL grow between checkpoints
    # (Ledger.defer_checkpoints): each chunk still commits durably on its own.
    # The writer runs its jobs in order: a resume queued after a defer whose
    # await was cancelled still ends it, and one with no defer does nothing.
    deferred = want - have > chunk
    pending: asyncio.Task[tuple[int, Prepared, tuple[bytes, ...] | None]] | None = None
    try:
        if deferred:
            await db.write(_defer_checkpoints)
        # Fetch chunk k+1 while chunk k is verified and stored on the writer
        # thread: the network and SQLite then overlap. A prefetched chunk is
        # only data; it is verified like any other when its turn comes, or dropped.
        pending = asyncio.create_task(fetch(have))
        while True:
            start, entries, proof = await pending
            end = start + len(entries.datas)
            if end < want:
                pending = asyncio.create_task(fetch(end))
            state = await db.write(_append(origin, note, start, entries, proof))
            result.appended += end - start
            have = state.size
            if progress is not None:
                progress(origin, have, want)
            if have != end or have >= want:  # done, or the replica moved under us
                break
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, PeerError):
                await pending
        if deferred:
            # A closed database (shutdown) has nothing left to checkpoint.
            with contextlib.suppress(StorageError):
                await db.write(_resume_checkpoints)
    result.size = have


def _defer_checkpoints(ledger: Ledger) -> None:
    ledger.defer_checkpoints()


def _resume_checkpoints(ledger: Ledger) -> None:
    ledger.resume_checkpoints()


def _append(
    origin: str,
    note: str,
    start: int,
    entries: Prepared,
    proof: tuple[bytes, ...] | None,
) -> Callable[[Ledger], ReplicaState]:
    def run(ledger: Ledger) -> ReplicaState:
        return ledger.replica(origin).append_verified(note, start, entries, proof)

    return run


async def _pull_evidence(db: Database, client: PeerClient, chains: dict[str, KeyChain]) -> int:
    """Store every fork evidence the peer holds for an origin we follow, once verified."""
    added = 0
    for evidence in await client.evidence():
        chain = chains.get(evidence.origin)
        if chain is None:
            continue
        verify_fork_evidence(evidence, chain)
        added += await db.write(_store_evidence(evidence, client.name))
    return added


def _store_evidence(evidence: ForkEvidence, source: str) -> Callable[[Ledger], int]:
    def run(ledger: Ledger) -> int:
        return 1 if ledger.peers.add_evidence(evidence.origin, evidence.to_json(), source) else 0

    return run
