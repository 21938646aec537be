"""Asking witnesses to cosign this node's own checkpoints (C2SP tlog-witness client).

Layer: node.sync. Network I/O to the witnesses through
:mod:`node.sync.transport` (mutual TLS); storage through the
:class:`~node.ledger.database.Database` facade.

The witnesses asked are the ``[[witness.ask]]`` entries of ``config.toml``:
a peer (its URL and TLS certificate come from ``peers``) and the witness's
cosignature/v1 key, which every answer is checked against (lines by other
keys are ignored, as the spec requires). For the latest own checkpoint
``N``, a request carries the consistency proof from the size ``M`` the
witness last cosigned: what we last got from it (the ``cosignatures``
table), else 0. A 409 answer names the witness's size, and the request is
made again from there. The cosignature lines are stored in
``cosignatures``; the API serves them appended to the checkpoint's note.

:class:`WitnessLoop` runs beside the sync runner, one task per witness: it
asks whenever the own log announces a new checkpoint (the server's watcher
publishes on the hub), polls as a fallback, backs off on failure, and
announces the checkpoint again as soon as a witness's cosignature is stored,
so followers fetch it with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.config import WitnessAsk
from node.errors import NodeError, PeerError, PeerProtocolError
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.service import Ledger
from node.ledger.witness import verified_cosignatures
from node.storage.peer_store import PeerRecord
from node.sync.poll import ClientLoop, PollTiming, run_polling
from node.sync.transport import Transport
from node.tls import client_ssl_context
from protocol.errors import MalformedError, ProtocolError
from protocol.keys import NoteVerifier
from protocol.note import NoteSignature, parse_note
from protocol.witness import (
    TLOG_SIZE_MEDIA_TYPE,
    AddCheckpointRequest,
    parse_cosignature_lines,
    parse_size_body,
)

__all__ = [
    "ADD_CHECKPOINT_PATH",
    "CosignOutcome",
    "WitnessAnswer",
    "WitnessClient",
    "WitnessLoop",
    "cosign_latest",
    "cosign_once",
]

log = logging.getLogger("hashmesh.witness")

ADD_CHECKPOINT_PATH = "/v1/witness/add-checkpoint"
"""The witness's submission prefix (``/v1/witness``) plus ``/add-checkpoint``."""

MAX_ANSWER_BYTES = 16 * 1024
"""Largest answer body read from a witness (a few signature lines, or an error)."""

MAX_CONFLICT_RETRIES = 2
"""How many times one round follows a 409 to the size the witness names."""


@dataclass(frozen=True, slots=True)
class WitnessAnswer:
    """A witness's answer: its cosignature lines (200), or its size (409)."""

    signatures: tuple[NoteSignature, ...] = ()
    conflict_size: int | None = None


@dataclass(frozen=True, slots=True)
class CosignOutcome:
    """What asking one witness did.

    Attributes:
        peer: the witness's peer name.
        size: the own checkpoint's size asked for (None if not read).
        added: new cosignature lines stored (0 when already held).
        witness_size: the size the witness is known to have cosigned last.
        error: why it failed, or None.
    """

    peer: str
    size: int | None
    added: int = 0
    witness_size: int | None = None
    error: str | None = None


class WitnessClient:
    """``POST add-checkpoint`` to one witness over mutual TLS, through one :class:`Transport`."""

    def __init__(
        self,
        peer: PeerRecord,
        *,
        cert_path: Path,
        key_path: Path,
        timeout: float = 30.0,
    ) -> None:
        self.name = peer.name
        self.transport = Transport(
            peer.name,
            peer.url,
            ssl_context=client_ssl_context(cert_path, key_path, peer.tls_cert),
            timeout=timeout,
            connections=2,
        )

    async def __aenter__(self) -> WitnessClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self.transport.close()

    async def add_checkpoint(self, request: AddCheckpointRequest) -> WitnessAnswer:
        """Send one request and parse the answer strictly.

        Raises:
            PeerUnavailableError: connection, TLS, timeout or a 5xx answer.
            PeerProtocolError: any other refusal (naming the status and the
                witness's message), or a malformed answer.
        """
        path = ADD_CHECKPOINT_PATH
        reply = await self.transport.request(
            "POST",
            path,
            body=request.to_bytes(),
            content_type="text/plain; charset=utf-8",
            cap=MAX_ANSWER_BYTES,
            accepted=(200, 409),
        )
        try:
            if reply.status == 200:
                return WitnessAnswer(signatures=parse_cosignature_lines(reply.body))
            if reply.media_type == TLOG_SIZE_MEDIA_TYPE:
                return WitnessAnswer(conflict_size=parse_size_body(reply.body))
        except MalformedError as e:
            raise PeerProtocolError(self.name, f"{path} answered {reply.status}: {e}") from e
        raise self.transport.refusal(path, reply)


@dataclass(frozen=True, slots=True)
class _Own:
    log_id: int
    size: int
    note: str
    held: bool
    witness_size: int | None


async def cosign_latest(
    db: Database, client: WitnessClient, key: NoteVerifier, *, known_size: int | None = None
) -> CosignOutcome:
    """Get ``key``'s cosignature of the latest own checkpoint; never raises for the witness.

    Args:
        db: the node's database.
        client: the witness's client.
        key: the witness's cosignature/v1 key.
        known_size: the size the witness last cosigned, if known from an
            earlier answer (else taken from the stored cosignatures).
    """

    def read(ledger: Ledger) -> _Own:
        own = ledger.own_log
        record = ledger.latest_checkpoint()
        store = ledger.witnessing
        held = any(
            c.witness == key.name and c.key_id == f"{key.key_id:08x}"
            for c in store.cosignatures(own.log_id, record.size)
        )
        return _Own(
            own.log_id,
            record.size,
            record.note,
            held,
            store.latest_cosigned_size(own.log_id, key.name, key.key_id),
        )

    own = await db.read(read)
    if own.held:
        return CosignOutcome(client.name, own.size, witness_size=own.size)
    old = known_size if known_size is not None else (own.witness_size or 0)
    try:
        for _ in range(MAX_CONFLICT_RETRIES + 1):
            if old > own.size:
                raise PeerProtocolError(
                    client.name,
                    f"the witness cosigned size {old} of our log, beyond our latest checkpoint "
                    f"{own.size}: this log was rolled back or forked (restored from an old "
                    "backup?); do not sign anything until that is resolved",
                )
            proof = await db.read(_proof(old, own.size))
            answer = await client.add_checkpoint(
                AddCheckpointRequest(old_size=old, proof=proof, note=own.note)
            )
            if answer.conflict_size is None:
                added = await _store(db, own, answer.signatures, key, client.name)
                return CosignOutcome(client.name, own.size, added=added, witness_size=own.size)
            if answer.conflict_size == old:
                raise PeerProtocolError(
                    client.name,
                    f"the witness holds another checkpoint of size {old} of our log (409 for "
                    "the same size): this log was forked; do not sign anything until that is "
                    "resolved",
                )
            old = answer.conflict_size
        raise PeerProtocolError(client.name, "add-checkpoint kept answering 409; giving up")
    except (PeerError, ProtocolError, NodeError) as e:
        reason = str(e) if isinstance(e, PeerError) else f"witness {client.name}: {e}"
        return CosignOutcome(client.name, own.size, witness_size=old, error=reason)


def _proof(old: int, new: int) -> Callable[[Ledger], tuple[bytes, ...]]:
    def run(ledger: Ledger) -> tuple[bytes, ...]:
        return ledger.prove_consistency(old, new).hashes

    return run


async def _store(
    db: Database,
    own: _Own,
    signatures: tuple[NoteSignature, ...],
    key: NoteVerifier,
    peer: str,
) -> int:
    good = verified_cosignatures(parse_note(own.note), signatures, [key])
    if not good:
        raise PeerProtocolError(
            peer, f"the answer holds no valid cosignature by the configured key {key.to_text()}"
        )
    lines = [(s.name, s.key_id, s.to_line()[:-1]) for s in good]

    def write(ledger: Ledger) -> int:
        with ledger.transaction():
            return ledger.witnessing.add_cosignatures(own.log_id, own.size, lines)

    return await db.write(write)


async def _ask(
    db: Database,
    ask: WitnessAsk,
    peers: dict[str, PeerRecord],
    *,
    cert_path: Path,
    key_path: Path,
    known_size: int | None = None,
) -> CosignOutcome:
    peer = peers.get(ask.peer)
    if peer is None:
        return CosignOutcome(
            ask.peer, None, error=f"witness {ask.peer}: no such peer; add its card first"
        )
    async with WitnessClient(peer, cert_path=cert_path, key_path=key_path) as client:
        return await cosign_latest(
            db, client, NoteVerifier.from_text(ask.key), known_size=known_size
        )


async def cosign_once(db: Database, *, cert_path: Path, key_path: Path) -> list[CosignOutcome]:
    """Ask every configured witness once (``hashmesh witness ask`` and tests)."""
    asks, peers = await db.read(_asks_and_peers)
    return list(
        await asyncio.gather(
            *(_ask(db, a, peers, cert_path=cert_path, key_path=key_path) for a in asks)
        )
    )


def _asks_and_peers(ledger: Ledger) -> tuple[tuple[WitnessAsk, ...], dict[str, PeerRecord]]:
    return ledger.config.witness.ask, {p.name: p for p in ledger.peers.list_peers()}


class WitnessLoop(ClientLoop):
    """Keeps the own log's latest checkpoint cosigned by every configured witness.

    One task per witness: a slow or down witness holds up only the
    followers that need its cosignature, never the other witnesses' (nor
    the log's writes, which never wait for this loop). Each cosignature is
    announced on the hub as soon as it is stored, so followers waiting for
    it fetch the cosigned checkpoint at once. A witness that failed is asked
    again only after its backoff, and then only for the latest checkpoint,
    whose cosignature covers every earlier size (C2SP tlog-witness): a
    witness that comes back gets one request, not one per checkpoint missed.
    """

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
        self._known: dict[str, int] = {}
        self.rounds = 0
        self.last: dict[str, CosignOutcome] = {}
        """The latest outcome per witness peer (for tests and monitoring)."""

    async def run(self) -> None:
        """Ask the witnesses until cancelled (returns at once when none is configured)."""
        asks, _peers = await self._db.read(_asks_and_peers)
        if not asks:
            return
        origin = await self._db.read(lambda ledger: ledger.own_log.origin)
        wakes = [asyncio.Event() for _ in asks]
        tasks = [
            asyncio.create_task(self._listen(origin, wakes), name="hashmesh-witness-wake"),
            *(
                asyncio.create_task(
                    run_polling(
                        functools.partial(self._round, ask, origin),
                        wake,
                        self._timing,
                        wake_in_backoff=False,
                    ),
                    name=f"hashmesh-witness {ask.peer}",
                )
                for ask, wake in zip(asks, wakes, strict=True)
            ),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _round(self, ask: WitnessAsk, origin: str) -> bool:
        try:
            _asks, peers = await self._db.read(_asks_and_peers)
            outcome = await _ask(
                self._db,
                ask,
                peers,
                cert_path=self._cert_path,
                key_path=self._key_path,
                known_size=self._known.get(ask.peer),
            )
        except NodeError as e:  # the database, say: retry later, never die
            outcome = CosignOutcome(ask.peer, None, error=str(e))
        if outcome.witness_size is not None:
            self._known[ask.peer] = outcome.witness_size
        self.rounds += 1
        self.last[ask.peer] = outcome
        if outcome.error:
            log.warning("%s", outcome.error)
            return False
        if outcome.added and outcome.size is not None:
            log.info(
                "checkpoint %d of %s cosigned by %s; announcing it again",
                outcome.size,
                origin,
                ask.peer,
            )
            self._hub.publish(origin, outcome.size)
        return True

    async def _listen(self, origin: str, wakes: list[asyncio.Event]) -> None:
        async for event_origin, _size in self._hub.subscribe():
            if event_origin == origin:
                for wake in wakes:
                    wake.set()
