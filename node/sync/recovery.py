"""Recovering a restored node's own log from its peers and witnesses.

Layer: node.sync. Network I/O through :class:`~node.sync.client.HttpPeerClient`
and :class:`~node.sync.witness_client.WitnessClient`; storage through the
:class:`~node.ledger.database.Database` facade.

A node restored from a backup (:mod:`node.ledger.backup`) may be behind its
own history: after the backup it signed checkpoints that its peers hold and
its witnesses cosigned. Signing anything on top of the backup's head would
show them a second history of the same origin, which they must treat as a
fork. So the restored node signs nothing (``Ledger`` refuses while the
``RECOVERING`` mark is there) until :func:`recover_own_log` has:

1. asked every peer (role ``peer``) for its latest checkpoint of the own
   origin and brought the own log up to it through the one replica path
   (:func:`node.sync.engine.sync_origin`: signature under the own key chain,
   consistency, chunks proven against the signed root, key rotations), so
   the entries come back byte for byte, verified;
2. asked every ``[[witness.ask]]`` witness which size of the own log it last
   cosigned (an add-checkpoint request for the head now held, which signs
   nothing new: a witness at that size cosigns it again, any other answers
   409 with its size);
3. removed the mark, if every peer and witness answered and none holds or
   cosigned more than the log now holds.

A peer or witness that cannot be reached could hold more; recovery then
names it and leaves the mark, unless the operator accepts that risk
explicitly (``hashmesh recover --accept-fork-risk``). A witness that
cosigned more than any reachable peer holds is never overridden: the
entries it saw are lost to this node, and writing would fork at that
witness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from node.config import WitnessAsk
from node.errors import NodeError, PeerError
from node.ledger.backup import RecoveryMark
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.service import Ledger
from node.storage.peer_store import PeerRecord
from node.sync.client import HttpPeerClient
from node.sync.engine import CHUNK_ENTRIES, SyncProgress, sync_origin
from node.sync.poll import ClientLoop, PollTiming, run_polling
from node.sync.witness_client import WitnessClient
from protocol.errors import ProtocolError
from protocol.witness import AddCheckpointRequest

__all__ = ["RecoveryAnswer", "RecoveryLoop", "RecoveryReport", "recover_own_log"]

log = logging.getLogger("hashmesh.recovery")


@dataclass(frozen=True, slots=True)
class RecoveryAnswer:
    """What one peer or witness said about the own log.

    Attributes:
        name: the peer's name.
        kind: ``peer`` or ``witness``.
        size: the peer's latest checkpoint size of the own log (None: it
            holds none), or the size the witness last cosigned.
        error: why it could not be asked, or None.
    """

    name: str
    kind: str
    size: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :func:`recover_own_log` did.

    Attributes:
        origin: the own origin.
        backup_size: the own log's size when recovery started.
        size: its size now.
        answers: every peer's and witness's answer.
        recovered: the mark is gone: the node may sign again.
        reason: why it is still recovering (when not ``recovered``).
        was_recovering: the node was marked recovering when this began
            (False: there was nothing to do).
    """

    origin: str
    backup_size: int
    size: int
    answers: tuple[RecoveryAnswer, ...]
    recovered: bool
    reason: str | None = None
    was_recovering: bool = True

    @property
    def unreachable(self) -> tuple[str, ...]:
        """The peers and witnesses that could not be asked."""
        return tuple(a.name for a in self.answers if a.error is not None)


@dataclass(frozen=True, slots=True)
class _Start:
    origin: str
    mark: RecoveryMark | None
    size: int
    peers: tuple[PeerRecord, ...]
    asks: tuple[WitnessAsk, ...]
    all_peers: dict[str, PeerRecord]


def _start(ledger: Ledger) -> _Start:
    peers = ledger.peers.list_peers()
    return _Start(
        origin=ledger.own_log.origin,
        mark=ledger.recovering,
        size=ledger.latest_checkpoint().size,
        peers=tuple(p for p in peers if p.role == "peer"),
        asks=ledger.config.witness.ask,
        all_peers={p.name: p for p in peers},
    )


def _head(ledger: Ledger) -> tuple[int, int, str]:
    """Entries held, latest checkpoint size and its note, of the own log."""
    own = ledger.own_log
    record = ledger.latest_checkpoint()
    held = ledger.held_entries(own.origin)
    return held, record.size, record.note


async def _ask_peer(
    db: Database,
    peer: PeerRecord,
    origin: str,
    cert_path: Path,
    key_path: Path,
    chunk: int,
    progress: SyncProgress | None,
) -> RecoveryAnswer:
    try:
        async with HttpPeerClient.for_peer(peer, cert_path=cert_path, key_path=key_path) as client:
            remote = {held.origin: held for held in await client.logs()}
            held = remote.get(origin)
            if held is None:
                return RecoveryAnswer(peer.name, "peer")
            result = await sync_origin(db, client, held, hub=None, chunk=chunk, progress=progress)
    except (PeerError, ProtocolError, NodeError) as e:
        reason = str(e) if isinstance(e, PeerError) else f"peer {peer.name}: {e}"
        return RecoveryAnswer(peer.name, "peer", error=reason)
    if result.verdict == "fork":
        return RecoveryAnswer(
            peer.name,
            "peer",
            error=f"peer {peer.name} holds a checkpoint of this log that contradicts it: the "
            "log was already forked (see `hashmesh evidence list`)",
        )
    if result.appended:
        log.info("recovered %d entries of %s from %s", result.appended, origin, peer.name)
    return RecoveryAnswer(peer.name, "peer", size=held.size)


async def _ask_witness(
    db: Database,
    ask: WitnessAsk,
    peers: dict[str, PeerRecord],
    cert_path: Path,
    key_path: Path,
) -> RecoveryAnswer:
    peer = peers.get(ask.peer)
    if peer is None:
        return RecoveryAnswer(ask.peer, "witness", error=f"witness {ask.peer}: no such peer")
    _held, size, note = await db.read(_head)
    try:
        async with WitnessClient(peer, cert_path=cert_path, key_path=key_path) as client:
            # A request from the size we hold to itself: the witness cosigns
            # it again if that is its size, else answers 409 with its size.
            answer = await client.add_checkpoint(
                AddCheckpointRequest(old_size=size, proof=(), note=note)
            )
    except (PeerError, ProtocolError, NodeError) as e:
        reason = str(e) if isinstance(e, PeerError) else f"witness {ask.peer}: {e}"
        return RecoveryAnswer(ask.peer, "witness", error=reason)
    witnessed = size if answer.conflict_size is None else answer.conflict_size
    return RecoveryAnswer(ask.peer, "witness", size=witnessed)


async def recover_own_log(
    db: Database,
    *,
    cert_path: Path,
    key_path: Path,
    accept_fork_risk: bool = False,
    chunk: int = CHUNK_ENTRIES,
    progress: SyncProgress | None = None,
) -> RecoveryReport:
    """Recover the own log of a restored node (see the module docstring).

    Args:
        db: the node's database.
        cert_path: our TLS certificate (client identity towards peers).
        key_path: our TLS key.
        accept_fork_risk: remove the mark even if some peers or witnesses
            could not be asked (they may hold checkpoints this node will
            contradict by its next write).
        chunk: entries fetched and committed per transaction.
        progress: told the entries held of the own log after each verified
            chunk fetched from a peer (``progress(origin, held, target)``).

    Returns:
        The report; ``recovered`` says whether the node may sign again.
        A node that is not recovering is reported recovered at once.
    """
    start = await db.read(_start)
    if start.mark is None:
        return RecoveryReport(
            start.origin, start.size, start.size, (), recovered=True, was_recovering=False
        )
    # One peer after another: each catch-up starts from what the one before
    # brought, so no two write the own log at once.
    answers = [
        await _ask_peer(db, p, start.origin, cert_path, key_path, chunk, progress)
        for p in start.peers
    ]
    answers += await asyncio.gather(
        *(_ask_witness(db, a, start.all_peers, cert_path, key_path) for a in start.asks)
    )
    held, size, _note = await db.read(_head)

    def report(recovered: bool, reason: str | None = None) -> RecoveryReport:
        return RecoveryReport(
            start.origin,
            start.mark.log_size if start.mark else size,
            size,
            tuple(answers),
            recovered=recovered,
            reason=reason,
        )

    ahead = [a for a in answers if a.size is not None and a.size > size]
    if ahead:
        names = ", ".join(f"{a.name} ({a.kind}, size {a.size:,})" for a in ahead)
        return report(
            False,
            f"{names} hold(s) more of this log than could be fetched and verified (size "
            f"{size:,}); writing now would fork it",
        )
    if held != size:
        return report(False, f"{held - size:,} entries beyond the latest checkpoint {size:,}")
    failed = [a for a in answers if a.error is not None]
    if failed and not accept_fork_risk:
        names = ", ".join(a.name for a in failed)
        return report(
            False,
            f"could not ask {names}; they may hold checkpoints of this log beyond size "
            f"{size:,}. Retry when they are reachable, or accept that risk with "
            "--accept-fork-risk",
        )
    await db.write(lambda ledger: ledger.end_recovery())
    if failed:
        log.warning(
            "recovered %s at size %d WITHOUT asking %s (--accept-fork-risk)",
            start.origin,
            size,
            ", ".join(a.name for a in failed),
        )
    return report(True)


class RecoveryLoop(ClientLoop):
    """``hashmesh serve`` on a restored node: recover, retrying with backoff, then stop."""

    def __init__(
        self,
        db: Database,
        hub: CheckpointHub,
        *,
        cert_path: Path,
        key_path: Path,
        timing: PollTiming | None = None,
    ) -> None:
        super().__init__(db, hub, cert_path=cert_path, key_path=key_path, timing=timing)
        self.last: RecoveryReport | None = None
        self.done = asyncio.Event()

    async def run(self) -> None:
        """Try until the node has recovered (returns at once when it is not recovering)."""
        wake = asyncio.Event()

        async def round_() -> bool:
            try:
                self.last = await recover_own_log(
                    self._db, cert_path=self._cert_path, key_path=self._key_path
                )
            except NodeError as e:  # the database, say: retry later, never die
                log.warning("recovery of the own log failed: %s", e)
                return False
            if not self.last.recovered:
                log.warning("still recovering (signing nothing): %s", self.last.reason)
                return False
            self.done.set()
            raise _Recovered

        with contextlib.suppress(_Recovered):
            await run_polling(round_, wake, self._timing)
        last = self.last
        if last is not None and last.backup_size != last.size:
            log.info(
                "recovered %s from size %d to %d; signing again",
                last.origin,
                last.backup_size,
                last.size,
            )
            self._hub.publish(last.origin, last.size)


class _Recovered(Exception):  # noqa: N818 - control flow, not an error
    """Ends the polling loop once the node has recovered."""
