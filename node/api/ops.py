"""The operations listener: health, readiness and metrics for the people running a node.

Layer: node.api.

A plain-HTTP aiohttp application, separate from the peer API (which needs a
peer certificate for every request), meant for localhost or a private
network: ``[ops] listen = "127.0.0.1:PORT"`` in ``config.toml`` turns it on;
it is off by default. With ``[ops] token`` (or ``token_file``) every request
must carry ``Authorization: Bearer TOKEN``; the config refuses a listen
address that is not loopback without one (:func:`node.config.load_config`).

Endpoints:

* ``GET /healthz``: 200 while the process and its event loop answer.
* ``GET /readyz``: 200 ``{"ready": true, ...}`` when every
  :data:`READINESS_CHECKS` check passes, else 503 with ``reasons``: one
  line each (database not writable, PDQ index not loaded, a peer failing for
  longer than ``[ops] peer_failing_after``, the own certificate expiring
  within ``[ops] certificate_warn_days``). Peer certificates that expire
  soon are listed under ``warnings`` without failing the check.
* ``GET /metrics``: Prometheus text format (:mod:`node.metrics` for what
  is counted as it happens; :func:`snapshot` for what is read from the
  database at each scrape).

A check is an ``async`` function of the :class:`OpsContext` returning the
reasons it fails (empty: passes); add one to :data:`READINESS_CHECKS`.
Gauges read at scrape time come from :data:`SNAPSHOT_READERS`, functions of
the ledger (run in a reader thread) returning metric families.

Other parts of the node add pages here through :class:`OpsMount`: a prefix
and a function that builds a sub-application from the :class:`OpsContext`
(database, checkpoint hub, config). ``hashmesh serve`` mounts
:data:`node.api.server.OPS_MOUNTS`; to add one, append to that tuple::

    def build_console(context: OpsContext) -> web.Application:
        app = web.Application()
        app.router.add_get("/", index)   # served at /console/
        return app

    OPS_MOUNTS = (..., OpsMount("/console", build_console, own_auth=True))

A sub-application with ``own_auth=True`` authenticates its users itself (the
bearer token is not asked of it, since browsers cannot send one); every other
path of the listener needs the token when one is set.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node.api.app import error_middleware
from node.api.handlers import error_response
from node.api.match import match_service
from node.api.workers import WorkerPool
from node.config import NodeConfig
from node.errors import ConfigError, NodeError
from node.ledger.cards import CertificateExpiry, holder_expiries
from node.ledger.damage import DamageRegister
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.scrub import IntegrityState
from node.ledger.service import Ledger
from node.metrics import NodeMetrics
from node.sync.heads import peer_heads
from protocol.keys import NoteVerifier

__all__ = [
    "OPS_CONTEXT_KEY",
    "OPS_KEY",
    "READINESS_CHECKS",
    "SNAPSHOT_READERS",
    "OpsContext",
    "OpsMount",
    "ReadinessCheck",
    "make_ops_app",
    "snapshot",
]

log = logging.getLogger("hashmesh.ops")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsContext:
    """What the operations listener and its mounted sub-applications may use.

    Attributes:
        db: the node's database facade (owned by ``serve``; do not close it).
        hub: checkpoint announcements (own log and replicas).
        config: the node's settings.
        metrics: the counters of this serving node (``/metrics`` renders
            them beside the gauges read from the database).
        integrity: scrub progress and damaged logs of the serving node
            (:mod:`node.ledger.scrub`; read it, do not change it); None: the
            damage record is read from the node directory instead.
        pool: the API's match worker processes, which the console's look-up
            uses too; None: it matches in the database's reader threads.
    """

    db: Database
    hub: CheckpointHub
    config: NodeConfig
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    integrity: IntegrityState | None = None
    pool: WorkerPool | None = None


@dataclass(frozen=True, slots=True)
class OpsMount:
    """A sub-application served on the operations listener under ``prefix``.

    Attributes:
        prefix: where it is mounted, like ``/console`` (no trailing slash).
        build: makes the sub-application; called once per listener.
        own_auth: True when the sub-application authenticates its users
            itself; the listener's bearer token is then not asked for it.
    """

    prefix: str
    build: Callable[[OpsContext], web.Application]
    own_auth: bool = False


OPS_KEY = web.AppKey("ops", str)
"""Set on every application :func:`make_ops_app` builds (and only there), so
:func:`node.api.server.start_ops_server` can refuse to serve anything else
over plain HTTP."""
OPS_CONTEXT_KEY = web.AppKey("ops_context", OpsContext)
_TOKEN_KEY = web.AppKey("ops_token", str)
_OPEN_PREFIXES_KEY = web.AppKey("ops_open_prefixes", tuple[str, ...])
_MOUNT_PREFIXES_KEY = web.AppKey("ops_mount_prefixes", tuple[str, ...])


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The listener's own routes answer errors as JSON; mounted pages keep theirs.
    mounts = request.app[_MOUNT_PREFIXES_KEY]
    if any(_under(request.path, p) for p in mounts):
        return await handler(request)
    unmatched = request.match_info.http_exception
    if unmatched is not None and unmatched.status == 404:
        # The peer API's 404 points at docs/api.md; this listener has its own paths.
        paths = ", ".join(("/healthz", "/readyz", "/metrics", *(p + "/" for p in mounts)))
        return error_response(
            404,
            f"no endpoint {request.path} on the operations listener ({paths}; docs/monitoring.md)",
        )
    return await error_middleware(request, handler)


@web.middleware
async def _bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    token = app.get(_TOKEN_KEY)
    if token is None or any(_under(request.path, p) for p in app[_OPEN_PREFIXES_KEY]):
        return await handler(request)
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    # Constant-time comparison: the token is the listener's only secret.
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
        log.warning(
            "refused %s %s from %s: bad or missing token",
            request.method,
            request.path,
            request.remote,
        )
        raise web.HTTPUnauthorized(
            text="this listener needs 'Authorization: Bearer TOKEN' ([ops] token in config.toml)",
            headers={"WWW-Authenticate": 'Bearer realm="hashmesh-ops"'},
        )
    return await handler(request)


async def healthz(_request: web.Request) -> web.Response:
    """``GET /healthz``: the process is alive and its event loop answers."""
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


# -- readiness ------------------------------------------------------------------

ReadinessCheck = Callable[[OpsContext], Awaitable[list[str]]]
"""A readiness check: the reasons the node is not ready (empty when it is)."""

PROBE_TIMEOUT = 5.0
"""Seconds a readiness probe of the database may take before it counts as failed."""


def _parse_time(text: str) -> float:
    """Seconds since the epoch of a stored ``*_at`` timestamp (``...Z``, UTC)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def database_writable(context: OpsContext) -> list[str]:
    """The writer can open a write transaction (lock free, file writable) within the timeout."""

    def probe(ledger: Ledger) -> None:
        with ledger.transaction():
            pass  # BEGIN IMMEDIATE takes the write lock; committing nothing changes nothing

    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await context.db.write(probe)
    except TimeoutError:
        return [f"database: no write transaction within {PROBE_TIMEOUT:g} s"]
    except NodeError as e:
        return [f"database: not writable: {e}"]
    return []


async def indexes_loaded(context: OpsContext) -> list[str]:
    """The PDQ index has been loaded (``serve`` loads it at start): PDQ queries are answered.

    Until then PDQ queries are answered 503 where the table is large (the
    match workers wait for the server's index file, ``[match]
    worker_read_max``), exact look-ups are answered; once it is loaded the
    server answers PDQ queries itself until its index file is written and
    the workers map it (docs/matching.md "First start of a large node").
    """
    if not match_service(context.db).loaded:
        return ["indexes: the PDQ index is still loading"]
    return []


async def peers_syncing(context: OpsContext) -> list[str]:
    """No peer has failed every sync round for longer than ``[ops] peer_failing_after``."""
    limit = context.config.ops.peer_failing_after

    def read(ledger: Ledger) -> list[str]:
        peers = {p.name: p for p in ledger.peers.list_peers() if p.role == "peer"}
        now = time.time()
        reasons = []
        for status in ledger.peers.peer_statuses():
            peer = peers.get(status.name)
            if peer is None or status.failures == 0:
                continue
            since = _parse_time(status.last_ok_at or peer.added_at)
            if now - since > limit:
                reasons.append(
                    f"peer {status.name}: failing for {now - since:.0f} s "
                    f"({status.failures} rounds): {status.last_error}"
                )
        return reasons

    return await context.db.read(read)


def _expiring(ledger: Ledger, own: bool) -> list[CertificateExpiry]:
    """The own (or the peers') certificates within ``[ops] certificate_warn_days`` of expiry."""
    return [
        e for e in ledger.certificate_expiries() if e.warning and e.holder.startswith("own") == own
    ]


def _days(expiry: CertificateExpiry) -> str:
    left = (expiry.not_after - datetime.now(UTC)).total_seconds() / 86400
    return f"{left:.1f} days ({expiry.not_after:%Y-%m-%d})"


async def certificate_valid(context: OpsContext) -> list[str]:
    """The own TLS certificate does not expire within ``[ops] certificate_warn_days``."""
    try:
        expiring = await context.db.read(lambda ledger: _expiring(ledger, own=True))
    except ConfigError as e:
        return [f"certificate: {e}"]
    return [
        f"certificate: the node's TLS certificate expires in {_days(e)}; {e.advice}"
        for e in expiring
        if e.holder == "own"
    ]


async def logs_sound(context: OpsContext) -> list[str]:
    """No held log is recorded as damaged (by ``hashmesh fsck`` or the scrub; docs/integrity.md)."""
    if context.integrity is not None:
        return context.integrity.readiness_reasons()
    try:
        damaged = DamageRegister(context.config.node_dir).load()
    except ConfigError as e:
        return [f"damage record: {e}"]
    return [f"{d}: not served until repaired" for d in damaged.values()]


READINESS_CHECKS: tuple[ReadinessCheck, ...] = (
    database_writable,
    indexes_loaded,
    peers_syncing,
    certificate_valid,
    logs_sound,
)
"""What ``/readyz`` checks, in order."""


def _peer_certificate_warnings(ledger: Ledger) -> list[str]:
    try:
        expiring = _expiring(ledger, own=False)
    except ConfigError as e:
        return [f"certificates: {e}"]
    return [f"peer {e.holder}: its TLS certificate expires in {_days(e)}" for e in expiring]


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 when every readiness check passes, else 503 with the reasons."""
    app = request.app
    context = app[OPS_CONTEXT_KEY]
    results = await asyncio.gather(*(check(context) for check in app[_CHECKS_KEY]))
    reasons = [reason for result in results for reason in result]
    warnings = await context.db.read(_peer_certificate_warnings)
    body = {"ready": not reasons, "reasons": reasons, "warnings": warnings}
    return web.json_response(
        body, status=503 if reasons else 200, headers={"Cache-Control": "no-store"}
    )


# -- metrics --------------------------------------------------------------------

SnapshotReader = Callable[[Ledger, OpsContext], Iterable[Metric]]
"""Reads gauges from the database at scrape time (in a reader thread)."""


def _log_gauges(ledger: Ledger, _context: OpsContext) -> Iterator[Metric]:
    entries = GaugeMetricFamily(
        "hashmesh_log_entries",
        "Entries in a held log's latest checkpoint.",
        labels=["origin", "kind"],
    )
    age = GaugeMetricFamily(
        "hashmesh_log_checkpoint_age_seconds",
        "Seconds since the latest checkpoint of a held log was stored.",
        labels=["origin"],
    )
    now = time.time()
    for log in ledger.logs():
        record = ledger.stored_checkpoint(log)
        if record is None:
            continue
        entries.add_metric([log.origin, "own" if log.is_own else "replica"], record.size)
        age.add_metric([log.origin], max(0.0, now - _parse_time(record.recorded_at)))
    yield entries
    yield age


def _peer_gauges(ledger: Ledger, _context: OpsContext) -> Iterator[Metric]:
    failures = GaugeMetricFamily(
        "hashmesh_peer_sync_consecutive_failures",
        "Sync rounds with a peer that failed in a row (0: the last one succeeded).",
        labels=["peer"],
    )
    last_ok = GaugeMetricFamily(
        "hashmesh_peer_last_sync_timestamp_seconds",
        "When the last sync round with a peer succeeded (Unix time).",
        labels=["peer"],
    )
    peers = ledger.peers.list_peers()
    known = {p.name for p in peers}
    for status in ledger.peers.peer_statuses():
        if status.name not in known:
            continue
        failures.add_metric([status.name], status.failures)
        if status.last_ok_at is not None:
            last_ok.add_metric([status.name], _parse_time(status.last_ok_at))
    evidence = GaugeMetricFamily(
        "hashmesh_fork_evidence",
        "Fork evidence records held (each freezes its origin), by origin.",
        labels=["origin"],
    )
    counts: dict[str, int] = {}
    for record in ledger.peers.list_evidence():
        counts[record.origin] = counts.get(record.origin, 0) + 1
    for origin, n in sorted(counts.items()):
        evidence.add_metric([origin], n)
    yield from (failures, last_ok, evidence)


def _certificate_gauges(ledger: Ledger, _context: OpsContext) -> Iterator[Metric]:
    """Certificate expiry by the ledger's one rule (``Ledger.certificate_expiries``)."""
    own = GaugeMetricFamily(
        "hashmesh_tls_certificate_expiry_timestamp_seconds",
        "When this node's own TLS certificate in use expires (Unix time).",
    )
    peer = GaugeMetricFamily(
        "hashmesh_peer_tls_certificate_expiry_timestamp_seconds",
        "When the longest-lasting TLS certificate trusted for a peer expires (Unix time).",
        labels=["peer"],
    )
    expiring = GaugeMetricFamily(
        "hashmesh_tls_certificate_expiring",
        "1 when a certificate of this holder (own, own (renewed), or a peer) expires within "
        "[ops] certificate_warn_days, as status and /readyz warn; else 0.",
        labels=["holder"],
    )
    try:
        expiries = ledger.certificate_expiries()
    except ConfigError:
        return  # an unreadable certificate: /readyz says which
    for holder, last in holder_expiries(expiries).items():
        if holder == "own":
            own.add_metric([], last.not_after.timestamp())
        elif not holder.startswith("own"):
            peer.add_metric([holder], last.not_after.timestamp())
        warned = any(e.warning for e in expiries if e.holder == holder)
        expiring.add_metric([holder], 1 if warned else 0)
    yield from (own, peer, expiring)


def _witness_gauges(ledger: Ledger, context: OpsContext) -> Iterator[Metric]:
    family = GaugeMetricFamily(
        "hashmesh_witness_cosignatures",
        "Cosignatures of the own log's latest checkpoint from the witnesses asked "
        "([[witness.ask]]), collected or missing.",
        labels=["state"],
    )
    asked = {NoteVerifier.from_text(a.key).name for a in context.config.witness.ask}
    own = ledger.own_log
    record = ledger.stored_checkpoint(own)
    collected = 0
    if record is not None and asked:
        held = {c.witness for c in ledger.witnessing.cosignatures(own.log_id, record.size)}
        collected = len(asked & held)
    family.add_metric(["collected"], collected)
    family.add_metric(["missing"], len(asked) - collected)
    yield family


def _integrity_gauges(_ledger: Ledger, context: OpsContext) -> Iterator[Metric]:
    integrity = context.integrity
    if integrity is None:
        return
    passes = GaugeMetricFamily(
        "hashmesh_scrub_passes",
        "Complete scrub passes over every held log since serve started.",
    )
    passes.add_metric([], integrity.passes)
    checked = GaugeMetricFamily(
        "hashmesh_scrub_entries_checked",
        "Entries of a log the scrub has checked in its current pass.",
        labels=["origin"],
    )
    held = GaugeMetricFamily(
        "hashmesh_scrub_entries_held",
        "Entries of a log when the scrub's current pass over it began.",
        labels=["origin"],
    )
    for progress in integrity.logs.values():
        checked.add_metric([progress.origin], progress.position)
        held.add_metric([progress.origin], progress.size)
    findings = GaugeMetricFamily(
        "hashmesh_scrub_findings",
        "Problems the scrub found (the last 50 kept), by log.",
        labels=["origin"],
    )
    counts: dict[str, int] = {}
    for finding in integrity.findings:
        counts[finding.origin] = counts.get(finding.origin, 0) + 1
    for origin, n in sorted(counts.items()):
        findings.add_metric([origin], n)
    damaged = GaugeMetricFamily(
        "hashmesh_log_damaged",
        "1 for a log recorded as damaged (not served or signed until repaired).",
        labels=["origin"],
    )
    for origin in sorted(integrity.damaged):
        damaged.add_metric([origin], 1)
    yield from (passes, checked, held, findings, damaged)


def _witness_wait_gauges(ledger: Ledger, _context: OpsContext) -> Iterator[Metric]:
    # Checkpoints of followed origins held back for missing cosignatures
    # ([[witness.require]]); an origin not waiting has no sample.
    since = GaugeMetricFamily(
        "hashmesh_witness_wait_since_timestamp_seconds",
        "When this node started holding back a followed origin's checkpoints for missing "
        "witness cosignatures (Unix time).",
        labels=["origin"],
    )
    size = GaugeMetricFamily(
        "hashmesh_witness_wait_checkpoint_size",
        "Tree size of the followed origin's checkpoint held back for cosignatures.",
        labels=["origin"],
    )
    missing = GaugeMetricFamily(
        "hashmesh_witness_wait_missing",
        "1 for each required witness whose cosignature of the checkpoint held back is missing.",
        labels=["origin", "witness"],
    )
    for wait in ledger.witness_waits():
        since.add_metric([wait.origin], wait.since_unix)
        size.add_metric([wait.origin], wait.size)
        for witness in wait.missing:
            missing.add_metric([wait.origin, witness], 1)
    yield from (since, size, missing)


def _lag_gauges(ledger: Ledger, context: OpsContext) -> Iterator[Metric]:
    entries = GaugeMetricFamily(
        "hashmesh_peer_lag_entries",
        "Entries a peer has proved it holds of an origin (a verified checkpoint) that "
        "this node does not hold yet.",
        labels=["peer", "origin"],
    )
    seconds = GaugeMetricFamily(
        "hashmesh_peer_lag_seconds",
        "Seconds since the peer showed that checkpoint, while this node is behind it (else 0).",
        labels=["peer", "origin"],
    )
    held = {log.origin: log for log in ledger.logs()}
    now = time.time()
    for head in peer_heads(context.db).all():
        log = held.get(head.origin)
        record = None if log is None else ledger.stored_checkpoint(log)
        behind = max(0, head.size - (0 if record is None else record.size))
        entries.add_metric([head.peer, head.origin], behind)
        seconds.add_metric([head.peer, head.origin], max(0.0, now - head.seen_at) if behind else 0)
    yield entries
    yield seconds


SNAPSHOT_READERS: tuple[SnapshotReader, ...] = (
    _log_gauges,
    _peer_gauges,
    _certificate_gauges,
    _lag_gauges,
    _witness_gauges,
    _integrity_gauges,
    _witness_wait_gauges,
)
"""What ``/metrics`` reads at each scrape (in a reader thread)."""


async def snapshot(context: OpsContext) -> list[Metric]:
    """The gauges of one scrape: every :data:`SNAPSHOT_READERS` reader, plus in-memory state."""

    def read(ledger: Ledger) -> list[Metric]:
        return [m for reader in SNAPSHOT_READERS for m in reader(ledger, context)]

    metrics = await context.db.read(read)
    pdq = GaugeMetricFamily("hashmesh_pdq_index_hashes", "PDQ hashes in the in-memory index.")
    pdq.add_metric([], len(match_service(context.db).pdq))
    metrics.append(pdq)
    return metrics


class _Scraped(Collector):
    """The gauges read for one scrape, as a collector of a registry of their own."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


async def metrics_endpoint(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format, the counters then this scrape's gauges."""
    context = request.app[OPS_CONTEXT_KEY]
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Scraped(await snapshot(context)))
    body = generate_latest(context.metrics.registry) + generate_latest(scrape)
    response = web.Response(body=body, headers={"Cache-Control": "no-store"})
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


_CHECKS_KEY = web.AppKey("ops_checks", tuple[ReadinessCheck, ...])


def make_ops_app(
    context: OpsContext,
    *,
    token: str | None = None,
    mounts: Sequence[OpsMount] = (),
    checks: Sequence[ReadinessCheck] = READINESS_CHECKS,
) -> web.Application:
    """Build the operations application.

    Args:
        context: the node's database, hub and config.
        token: the bearer token every request must present (None: none).
        mounts: sub-applications to serve beside the listener's own routes.
        checks: what ``/readyz`` checks.

    Returns:
        The application, to be served by :func:`node.api.server.start_ops_server`.
    """
    app = web.Application(middlewares=[_errors, _bearer])
    app[OPS_KEY] = context.config.origin
    app[OPS_CONTEXT_KEY] = context
    if token is not None:
        app[_TOKEN_KEY] = token
    app[_OPEN_PREFIXES_KEY] = tuple(m.prefix for m in mounts if m.own_auth)
    app[_MOUNT_PREFIXES_KEY] = tuple(m.prefix for m in mounts)
    app[_CHECKS_KEY] = tuple(checks)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics_endpoint, allow_head=False)
    for mount in mounts:
        # `/console` typed without its slash would reach the sub-application as
        # a path it has no route for; send the browser to its root instead.
        # Registered before the sub-application, so it is matched first.
        app.router.add_get(mount.prefix, _to_mount_root, allow_head=True)
        app.add_subapp(mount.prefix, mount.build(context))
    return app


async def _to_mount_root(request: web.Request) -> web.StreamResponse:
    location = request.path + "/"
    if request.query_string:
        location += "?" + request.query_string
    raise web.HTTPFound(location)
