"""Continuous sync: one task per peer, woken by its announcements, polling as fallback.

Layer: node.sync.

For each peer with role ``peer`` the runner keeps two tasks: a *listener* on
the peer's event stream, and a *syncer* that runs :func:`sync_peer` whenever
the listener hears of a new checkpoint, or when its timer runs out (polling
with jitter, the fallback when the stream is down). A peer that fails is
retried with exponential backoff and jitter, so a broken peer neither spins
nor stalls the others. The peer list is re-read every second, so ``peer add``
and ``peer remove`` take effect without a restart.

A :class:`~node.sync.witness_client.WitnessLoop` beside them asks the
configured witnesses to cosign each new own checkpoint, and on a node
restored from a backup a :class:`~node.sync.recovery.RecoveryLoop` recovers
the own log from peers and witnesses (it signs nothing until then).

Writes to the own log made by the CLI in another process are announced on
the hub by the server's watcher (:mod:`node.api.server`), which already polls
for commits by other connections; replicas are announced by the sync engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from node.config import SyncSettings
from node.errors import NodeError, PeerError
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.metrics import NodeMetrics
from node.storage.peer_store import PeerRecord
from node.sync.client import HttpPeerClient
from node.sync.engine import PeerSyncReport, SyncProgress, sync_peer
from node.sync.poll import Backoff, PollTiming, run_polling
from node.sync.recovery import RecoveryLoop
from node.sync.witness_client import WitnessLoop
from protocol.errors import ProtocolError

__all__ = ["SyncRunner", "SyncSettings", "sync_once"]

log = logging.getLogger("hashmesh.sync")


def _timing(settings: SyncSettings) -> PollTiming:
    """The poll interval and backoff bounds of the sync and witness loops."""
    return PollTiming(
        poll_interval=settings.poll_interval,
        min_backoff=settings.min_backoff,
        max_backoff=settings.max_backoff,
    )


def _client(peer: PeerRecord, cert_path: Path, key_path: Path) -> HttpPeerClient:
    return HttpPeerClient.for_peer(peer, cert_path=cert_path, key_path=key_path)


async def sync_once(
    db: Database,
    *,
    cert_path: Path,
    key_path: Path,
    hub: CheckpointHub | None = None,
    only_peer: str | None = None,
    progress: SyncProgress | None = None,
) -> list[PeerSyncReport]:
    """One round with every peer (for ``hashmesh sync --once`` and tests)."""
    peers = await db.read(lambda ledger: ledger.peers.list_peers())
    reports = []
    for peer in peers:
        if peer.role != "peer" or (only_peer is not None and peer.name != only_peer):
            continue
        async with _client(peer, cert_path, key_path) as client:
            reports.append(await sync_peer(db, client, hub=hub, progress=progress))
    return reports


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


class SyncRunner:
    """Keeps every peer synced until :meth:`stop`."""

    def __init__(
        self,
        db: Database,
        hub: CheckpointHub,
        *,
        cert_path: Path,
        key_path: Path,
        settings: SyncSettings | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._db = db
        self._metrics = metrics or NodeMetrics()
        self._hub = hub
        self._cert_path = cert_path
        self._key_path = key_path
        self._settings = settings or SyncSettings()
        self._tasks: dict[str, tuple[PeerRecord, list[asyncio.Task[None]]]] = {}
        self._background: list[asyncio.Task[None]] = []
        self.rounds = 0
        identity = {"cert_path": cert_path, "key_path": key_path}
        # Asks the [[witness.ask]] witnesses to cosign each new own checkpoint.
        self.witness = WitnessLoop(db, hub, **identity, timing=_timing(self._settings))
        # A restored node recovers its own log before it signs anything.
        self.recovery = RecoveryLoop(db, hub, **identity, timing=_timing(self._settings))

    def start(self) -> None:
        """Start the supervisor task, the witness loop and the recovery loop on the running loop."""
        self._background = [
            asyncio.create_task(self._supervise(), name="hashmesh-sync"),
            asyncio.create_task(self.witness.run(), name="hashmesh-witness"),
            asyncio.create_task(self.recovery.run(), name="hashmesh-recovery"),
        ]

    async def stop(self) -> None:
        """Cancel every task and wait for them."""
        tasks = [t for _, ts in self._tasks.values() for t in ts] + self._background
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def _supervise(self) -> None:
        identity = _mtime(self._cert_path)
        while True:
            now = _mtime(self._cert_path)
            if now != identity:
                # `hashmesh tls retire-old` put a new certificate in place:
                # new clients present it (the old one may be retired by peers).
                identity = now
                log.info("TLS identity changed; reconnecting to every peer with it")
                for _record, tasks in self._tasks.values():
                    for task in tasks:
                        task.cancel()
                self._tasks.clear()
            await self._reconcile()
            await asyncio.sleep(self._settings.peer_refresh)

    async def _reconcile(self) -> None:
        peers = await self._db.read(lambda ledger: ledger.peers.list_peers())
        wanted = {p.name: p for p in peers if p.role == "peer"}
        for name in list(self._tasks):
            record, tasks = self._tasks[name]
            if wanted.get(name) != record:
                for task in tasks:
                    task.cancel()
                del self._tasks[name]
                self._metrics.forget_peer(name)
        for name, peer in wanted.items():
            if name not in self._tasks:
                wake = asyncio.Event()
                client = _client(peer, self._cert_path, self._key_path)
                tasks = [
                    asyncio.create_task(self._sync_loop(client, wake), name=f"sync {name}"),
                    asyncio.create_task(self._listen(client, wake), name=f"listen {name}"),
                    asyncio.create_task(self._card_loop(client), name=f"card {name}"),
                ]
                self._tasks[name] = (peer, tasks)

    async def _sync_loop(self, client: HttpPeerClient, wake: asyncio.Event) -> None:
        metrics = self._metrics

        async def round_() -> bool:
            report = await sync_peer(self._db, client, hub=self._hub)
            self.rounds += 1
            for result in report.origins:
                if result.verdict == "fork":
                    metrics.forks_detected.labels(result.origin).inc()
            if report.error:
                log.warning("sync with %s failed: %s", client.name, report.error)
                metrics.sync_rounds.labels(client.name, "error").inc()
                metrics.sync_errors.labels(client.name, report.error_kind or "error").inc()
                metrics.peer_up.labels(client.name).set(0)
                return False
            metrics.sync_rounds.labels(client.name, "ok").inc()
            metrics.peer_up.labels(client.name).set(1)
            if report.appended:
                metrics.sync_entries.labels(client.name).inc(report.appended)
                log.info("synced %d entries from %s", report.appended, client.name)
            return True

        try:
            await run_polling(round_, wake, _timing(self._settings))
        finally:
            await client.close()

    async def _card_loop(self, client: HttpPeerClient) -> None:
        """Exchange signed cards with the peer now and then.

        Fetch the peer's and trust a renewed certificate it lists; present
        ours (once per card: the peer may not poll this node, as when it
        lists us as a subscriber) so it trusts our renewed certificate.
        """
        presented: list[str] = []  # the own card this peer last accepted or held

        async def round_() -> bool:
            try:
                note = await client.card()
                card = (
                    None
                    if note is None
                    else await self._db.write(
                        lambda ledger: ledger.accept_peer_card(client.name, note)
                    )
                )
            except (PeerError, ProtocolError, NodeError) as e:
                log.warning("signed card of %s refused: %s", client.name, e)
                return False
            if card is not None:
                log.info(
                    "trusting %d TLS certificate(s) of %s from its signed card (serial %d)",
                    len(card.certificates),
                    client.name,
                    card.serial,
                )
            mine = await self._db.read(lambda ledger: ledger.signed_card())
            if mine is None or presented == [mine]:
                return True
            try:
                answer = await client.present_card(mine)
            except PeerError as e:
                log.warning("our signed card was not taken by %s: %s", client.name, e.reason)
                return False
            presented[:] = [mine]
            if answer.accepted:
                log.info(
                    "%s trusts our renewed certificate (card serial %d)", client.name, answer.serial
                )
            return True

        await run_polling(round_, asyncio.Event(), _timing(self._settings))

    async def _listen(self, client: HttpPeerClient, wake: asyncio.Event) -> None:
        # Reconnects after the stream ends or fails, backing off while it keeps
        # failing. A failure is a WARNING when it happens (the stream was up, or
        # this is the first try); while it keeps failing, DEBUG, so a dead peer
        # does not fill the log; coming back is INFO.
        backoff = Backoff(_timing(self._settings))
        failing = False
        while True:
            try:
                async for _origin, _size in client.events():
                    if failing:
                        log.info("event stream of %s is back", client.name)
                        failing = False
                    backoff.reset()
                    wake.set()
            except PeerError as e:
                self._metrics.sync_errors.labels(client.name, "event_stream").inc()
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "event stream of %s failed: %s (retrying)", client.name, e)
                failing = True
            else:
                # It was up, then ended: the peer is restarting or shutting down.
                log.info("event stream of %s ended; reconnecting", client.name)
                failing = False
            await asyncio.sleep(backoff.failed())
