"""Serving the API: mutual TLS site, limits, graceful shutdown.

Layer: node.api (uses node.sync for the sync runner ``hashmesh serve`` starts).

:func:`start_server` is the one path that opens the API's listening socket,
and it refuses a TLS context that does not require client certificates
(:func:`node.tls.check_server_context`), so no configuration mistake can serve
hash data to an anonymous client. :func:`start_public_server` serves without
client certificates, and only the public application
(:mod:`node.api.public`: checkpoint and hash tiles). :func:`run_server` is
``hashmesh serve``: open the database, build the context from the peers table,
start the public listener too when ``[public] listen`` is set, serve until
SIGINT or SIGTERM (SIGHUP reloads the TLS identity), then stop accepting, end
event streams, let running requests finish (up to :data:`SHUTDOWN_TIMEOUT`),
stop the sync runner and close the database.

The trust store follows the peers table while serving: a peer added by
``hashmesh peer add`` (another process) can connect within
:data:`OWN_LOG_POLL` seconds. A removed peer's certificate stays in the
context until restart, but every request it makes is refused with 403, since
authorisation is checked per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import resource
import signal
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from node.api.access import ACCESS_LOGGER, LISTENER_KEY, METRICS_KEY, AccessLog
from node.api.app import make_app
from node.api.connections import (
    ConnectionGate,
    HandshakeLog,
    LimitedSite,
    raise_open_file_limit,
)
from node.api.console import CONSOLE_MOUNT
from node.api.match import keep_current, match_service, verify_index_files
from node.api.ops import OPS_KEY, OpsContext, OpsMount, make_ops_app
from node.api.public import PUBLIC_KEY, PublicLimits, make_public_app
from node.api.state import LEAVES_KEY, ApiLimits
from node.api.workers import POOL_KEY
from node.config import ConnectionSettings, NodeConfig, load_config, parse_listen
from node.errors import ConfigError
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.scrub import IntegrityState, Scrubber
from node.ledger.service import Ledger
from node.metrics import NodeMetrics
from node.tls import (
    add_trusted_cert,
    check_server_context,
    check_tls_server_context,
    public_server_ssl_context,
    reload_identity,
    server_ssl_context,
)

__all__ = [
    "KEEPALIVE_TIMEOUT",
    "MAX_FIELD_SIZE",
    "MAX_HEADERS",
    "MAX_LINE_SIZE",
    "OPS_MOUNTS",
    "OWN_LOG_POLL",
    "SHUTDOWN_TIMEOUT",
    "RunningServer",
    "SyncFactory",
    "run_server",
    "start_ops_server",
    "start_public_server",
    "start_server",
]

log = logging.getLogger("hashmesh.api")

MAX_LINE_SIZE = 4096
"""Longest request line or header line accepted (our URLs are short)."""
MAX_FIELD_SIZE = 4096
MAX_HEADERS = 32
KEEPALIVE_TIMEOUT = ConnectionSettings().header_timeout
"""Seconds an idle keep-alive connection is kept open, and a request head may take
(``[connections] header_timeout``)."""
SHUTDOWN_TIMEOUT = 10.0
"""Seconds running requests get to finish after SIGINT/SIGTERM."""
OWN_LOG_POLL = 0.05
"""Seconds between checks for commits by other connections (the CLI, sync).

Half of it is, on average, the first hop's share of propagation latency
(docs/benchmarks.md); the check is one pragma on its own connection."""

OPS_MOUNTS: tuple[OpsMount, ...] = (CONSOLE_MOUNT,)
"""Sub-applications ``hashmesh serve`` mounts on the operations listener
(``[ops] listen``); see :mod:`node.api.ops` for how to add one."""

_SPARE_FILES = 64
"""File descriptors kept for the database, the sync client and the event loop."""

SyncFactory = Callable[[Database, CheckpointHub], AbstractAsyncContextManager[object]]
"""Builds what runs beside the server (normally the sync runner)."""


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A started server; :meth:`close` stops it gracefully.

    Attributes:
        gate: counts its connections (:meth:`ConnectionGate.counts`).
    """

    runner: web.AppRunner
    host: str
    port: int
    scheme: str = "https"
    gate: ConnectionGate | None = None

    @property
    def url(self) -> str:
        """``https://host:port`` (``http://`` for the ops listener) with the bound port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    async def close(self) -> None:
        """Stop accepting, end streams, wait for requests, run cleanups."""
        await self.runner.cleanup()


async def start_server(
    app: web.Application,
    ssl_context: ssl.SSLContext,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    keepalive_timeout: float | None = None,
    connections: ConnectionSettings | None = None,
) -> RunningServer:
    """Serve ``app`` over mutual TLS on ``host:port`` (port 0: any free port).

    ``keepalive_timeout`` (default: ``connections.header_timeout``) also
    bounds how long a connection may take to deliver a complete request head,
    its first one included: aiohttp closes a connection whose request has not
    started by then, however slowly its bytes trickle in (a slow-header client
    is cut off; tests/api/test_slow_clients.py). ``connections`` caps
    connections per address and in total and bounds TLS handshakes
    (:mod:`node.api.connections`; default :class:`ConnectionSettings`).

    Raises:
        ConfigError: if ``ssl_context`` does not require client certificates
            or allows TLS older than 1.2; nothing is started.
        OSError: if the address cannot be bound.
    """
    check_server_context(ssl_context)
    return await _serve(
        app, ssl_context, host, port, shutdown_timeout, keepalive_timeout, connections
    )


async def start_public_server(
    app: web.Application,
    ssl_context: ssl.SSLContext,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    keepalive_timeout: float | None = None,
    connections: ConnectionSettings | None = None,
) -> RunningServer:
    """Serve the public listener (:mod:`node.api.public`) over TLS without client certificates.

    Only an application made by :func:`~node.api.public.make_public_app` is
    accepted, so no mistake can serve the mutual-TLS API (entries, hash
    values) to anonymous clients.

    Raises:
        ConfigError: if ``app`` is not the public application, or the
            context is not a TLS 1.2+ server context; nothing is started.
        OSError: if the address cannot be bound.
    """
    if PUBLIC_KEY not in app:
        raise ConfigError(
            "only the public application (make_public_app) may be served without "
            "client certificates; refusing to serve"
        )
    check_tls_server_context(ssl_context)
    return await _serve(
        app, ssl_context, host, port, shutdown_timeout, keepalive_timeout, connections
    )


async def start_ops_server(
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
) -> RunningServer:
    """Serve the operations listener (:mod:`node.api.ops`) over plain HTTP.

    Only an application made by :func:`~node.api.ops.make_ops_app` is
    accepted, so no mistake can serve the peer API without TLS.

    Raises:
        ConfigError: if ``app`` is not the operations application.
        OSError: if the address cannot be bound.
    """
    if OPS_KEY not in app:
        raise ConfigError(
            "only the operations application (make_ops_app) may be served over plain "
            "HTTP; refusing to serve"
        )
    server = await _serve(app, None, host, port, shutdown_timeout, keepalive_timeout, None)
    return RunningServer(server.runner, server.host, server.port, scheme="http")


async def _serve(
    app: web.Application,
    ssl_context: ssl.SSLContext | None,
    host: str,
    port: int,
    shutdown_timeout: float,
    keepalive_timeout: float | None,
    connections: ConnectionSettings | None,
) -> RunningServer:
    connections = connections or ConnectionSettings()
    if keepalive_timeout is None:
        keepalive_timeout = connections.header_timeout
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        # The API and public listeners log every request (node.api.access);
        # the ops listener's probes and scrapes would only drown them.
        access_log_class=AccessLog,
        access_log=ACCESS_LOGGER if LISTENER_KEY in app else None,
        max_line_size=MAX_LINE_SIZE,
        max_field_size=MAX_FIELD_SIZE,
        max_headers=MAX_HEADERS,
        keepalive_timeout=keepalive_timeout,
        # A client that goes away cancels its handler instead of leaving it
        # running against the database.
        handler_cancellation=True,
    )
    await runner.setup()
    handshakes = None
    if ssl_context is not None:
        listener = app.get(LISTENER_KEY, "api")
        metrics = app.get(METRICS_KEY)
        counter = None if metrics is None else metrics.tls_handshake_failures
        handshakes = HandshakeLog(
            listener,
            None if counter is None else lambda reason: counter.labels(listener, reason).inc(),
        )
    gate = ConnectionGate(connections, handshakes)
    try:
        site = LimitedSite(runner, host, port, ssl_context=ssl_context, gate=gate)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    return RunningServer(runner, str(bound[0]), int(bound[1]), gate=gate)


def _sync_cleanup(
    factory: SyncFactory, db: Database, hub: CheckpointHub
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        async with factory(db, hub):
            yield

    return ctx


def _runner_factory(
    config: NodeConfig, poll_interval: float | None, metrics: NodeMetrics
) -> SyncFactory:
    # Imported here: serving without sync (and the API tests) need none of it.
    from node.sync.runner import SyncRunner

    settings = config.sync
    if poll_interval is not None:
        settings = dataclasses.replace(settings, poll_interval=poll_interval)
    cert_path, key_path = config.tls_cert_path, config.tls_key_path

    @contextlib.asynccontextmanager
    async def factory(db: Database, hub: CheckpointHub) -> AsyncIterator[object]:
        runner = SyncRunner(
            db, hub, cert_path=cert_path, key_path=key_path, settings=settings, metrics=metrics
        )
        runner.start()
        try:
            yield runner
        finally:
            await runner.stop()

    return factory


async def _watch(
    db: Database,
    hub: CheckpointHub,
    ctx: ssl.SSLContext,
    *,
    version: int,
    trusted: set[str],
    identity: Path,
    reload: Callable[[], None],
) -> None:
    """Trust newly added peers; announce writes to the own log (made by the CLI).

    ``data_version`` is polled every :data:`OWN_LOG_POLL` seconds (one cheap
    pragma); the peers table and the own log are read only when it changed.
    Cosignatures of the latest own checkpoint stored by another process
    (``hashmesh witness ask``) are announced too: followers that wait for
    them fetch the checkpoint again. Lines the server's own witness loop
    stored were announced by the loop already (the hub counts what it
    published since the last look), so they are not announced twice.
    A new certificate at ``identity`` (``hashmesh tls retire-old``) is
    presented from then on (``reload``), as after SIGHUP.
    """

    def state(ledger: Ledger) -> tuple[dict[str, str], str, tuple[int, int]]:
        certs = {p.spki: p.tls_cert for p in ledger.peers.list_peers()}
        own = ledger.own_log
        record = ledger.stored_checkpoint(own)
        if record is None:
            return certs, own.origin, (0, 0)
        cosigned = len(ledger.witnessing.cosignatures(own.log_id, record.size))
        return certs, own.origin, (record.size, cosigned)

    # Compare with what the context was built from, not with a later read:
    # a peer added in between must still be noticed.
    _certs, origin, last = await db.read(state)
    announced = hub.published(origin)
    presented = _mtime(identity)
    while True:
        await asyncio.sleep(OWN_LOG_POLL)
        if _mtime(identity) != presented:
            presented = _mtime(identity)
            reload()
        now = await db.data_version()
        if now == version:
            continue
        version = now
        certs, origin, head = await db.read(state)
        if head[0] != last[0] or (head != last and hub.published(origin) == announced):
            hub.publish(origin, head[0])
        last, announced = head, hub.published(origin)
        for spki, pem in certs.items():
            if spki not in trusted:
                add_trusted_cert(ctx, pem)
                log.info("now accepting TLS connections from sha256:%s", spki)
        trusted = set(certs)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


async def run_server(
    node_dir: Path,
    listen: str | None = None,
    *,
    sync: bool = True,
    poll_interval: float | None = None,
    sync_factory: SyncFactory | None = None,
    on_started: Callable[[RunningServer], None] | None = None,
    stop: asyncio.Event | None = None,
    limits: ApiLimits | None = None,
    on_public_started: Callable[[RunningServer], None] | None = None,
    on_ops_started: Callable[[RunningServer], None] | None = None,
    ops_mounts: Sequence[OpsMount] = OPS_MOUNTS,
    start_workers: bool = False,
) -> None:
    """``hashmesh serve``: serve the API until SIGINT/SIGTERM (or ``stop`` is set).

    Args:
        node_dir: the node directory.
        listen: HOST:PORT to bind (default: the config's ``listen``).
        sync: run the sync runner beside the server.
        poll_interval: seconds between polls of each peer (sync runner;
            default ``[sync] poll_interval``).
        sync_factory: replaces the default sync runner; called with the
            database and hub, entered for as long as the server runs.
        on_started: called once the socket is bound (tests: the real port).
        stop: an event that stops the server like a signal does.
        limits: API caps and timings (default: the config's ``[api]`` table).
        on_public_started: called once the public listener (``[public]
            listen`` in the config) is bound; not called when it is off.
        on_ops_started: the same for the operations listener (``[ops] listen``).
        ops_mounts: sub-applications served on the operations listener.
        start_workers: start the match worker processes now (``hashmesh
            serve`` does), not at the first match; then a first match does not
            wait for them and memory is steady from the start.

    Raises:
        ConfigError: if the node directory or TLS identity is unusable.
        OSError: if the address cannot be bound.
    """
    config = load_config(node_dir)
    host, port = parse_listen(listen or config.listen)
    _open_file_limit(config.connections, 1 if config.public.listen is None else 2)
    db = await Database.open(node_dir)
    try:
        version = await db.data_version()
        peers = await db.read(lambda ledger: ledger.peers.list_peers())
        ctx = server_ssl_context(
            config.tls_cert_path, config.tls_key_path, [p.tls_cert for p in peers]
        )
        hub = CheckpointHub()
        metrics = NodeMetrics()
        if sync_factory is None and sync:
            sync_factory = _runner_factory(config, poll_interval, metrics)
        extra = [] if sync_factory is None else [_sync_cleanup(sync_factory, db, hub)]
        integrity = IntegrityState(node_dir, enabled=config.scrub.entries_per_second > 0)
        app = make_app(
            db,
            hub,
            origin=config.origin,
            extra_cleanup=extra,
            limits=limits or config.limits,
            metrics=metrics,
            integrity=integrity,
        )
        # This process writes the index files (keep_current, below): from the
        # first request on, its match workers wait for a PDQ file at size.
        match_service(db).writable = True
        server = await start_server(app, ctx, host=host, port=port, connections=config.connections)
        if start_workers and POOL_KEY in app:
            app[POOL_KEY].start()
        public: RunningServer | None = None
        public_ctx: ssl.SSLContext | None = None
        if config.public.listen is not None:
            try:
                public_host, public_port = parse_listen(config.public.listen)
                public_ctx = public_server_ssl_context(config.tls_cert_path, config.tls_key_path)
                public = await start_public_server(
                    make_public_app(
                        db,
                        PublicLimits(rate=config.public.rate, burst=config.public.burst),
                        metrics,
                        integrity=integrity,
                        origin=config.origin,
                    ),
                    public_ctx,
                    host=public_host,
                    port=public_port,
                    connections=config.connections,
                )
            except BaseException:
                await server.close()
                raise
        ops: RunningServer | None = None
        if config.ops.listen is not None:
            try:
                ops_host, ops_port = parse_listen(config.ops.listen)
                ops = await start_ops_server(
                    make_ops_app(
                        OpsContext(
                            db=db,
                            hub=hub,
                            config=config,
                            metrics=metrics,
                            integrity=integrity,
                            pool=app.get(POOL_KEY),
                        ),
                        token=config.ops.token,
                        mounts=ops_mounts,
                    ),
                    host=ops_host,
                    port=ops_port,
                )
            except BaseException:
                if public is not None:
                    await public.close()
                await server.close()
                raise
        contexts = [c for c in (ctx, public_ctx) if c is not None]

        def reload() -> None:
            _reload(contexts, config)

        watcher = asyncio.create_task(
            _watch(
                db,
                hub,
                ctx,
                version=version,
                trusted={p.spki for p in peers},
                identity=config.tls_cert_path,
                reload=reload,
            ),
            name="hashmesh-watch",
        )
        # Matching: load the PDQ index now and extend it after every commit.
        indexer = asyncio.create_task(keep_current(db, hub), name="hashmesh-match-index")
        tasks = [watcher, indexer]
        if integrity.enabled:
            scrubber = Scrubber(
                db,
                node_dir,
                config.scrub,
                integrity,
                after_pass=functools.partial(verify_index_files, db, app[LEAVES_KEY]),
            )
            tasks.append(asyncio.create_task(scrubber.run(), name="hashmesh-scrub"))
        for damage in integrity.damaged.values():
            log.error("%s: not served until repaired", damage)
        try:
            # One line per listener, once it is bound (so `--listen :0` shows
            # the real port): `serve` prints nothing more about them.
            log.info("serving %s on %s (mutual TLS)", config.origin, server.url)
            if on_started is not None:
                on_started(server)
            if public is not None:
                log.info(
                    "serving the public tree of %s (checkpoint, hash tiles) on %s "
                    "(no client certificate)",
                    config.origin,
                    public.url,
                )
                if on_public_started is not None:
                    on_public_started(public)
            if ops is not None:
                log.info(
                    "serving /healthz, /readyz, /metrics%s on %s %s",
                    "".join(f" and {m.prefix}/ ({ops.url}{m.prefix}/)" for m in ops_mounts),
                    ops.url,
                    "(bearer token required)" if config.ops.token else "(no token; loopback only)",
                )
                if on_ops_started is not None:
                    on_ops_started(ops)
            await _until_stopped(stop, reload)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if ops is not None:
                await ops.close()
            if public is not None:
                await public.close()
            await server.close()
            hub.close()
    finally:
        await db.close()


def _open_file_limit(settings: ConnectionSettings, listeners: int) -> None:
    """Raise the open-file limit (``raise_open_files``); warn when the caps exceed it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if settings.raise_open_files:
        before, soft = raise_open_file_limit()
        if soft != before:
            log.info("raised the open-file limit from %d to %d", before, soft)
    # The database, its WAL, the readers and the event loop need some too.
    needed = listeners * (settings.max_connections + settings.max_handshakes) + _SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-file limit %d (hard %d) is below the %d the [connections] caps may "
            "need; lower max_connections or max_handshakes, or raise the limit",
            soft,
            hard,
            needed,
        )


def _reload(contexts: list[ssl.SSLContext], config: NodeConfig) -> None:
    """Present the TLS identity now on disk (SIGHUP, or ``hashmesh tls retire-old`` noticed)."""
    try:
        for ctx in contexts:
            reload_identity(ctx, config.tls_cert_path, config.tls_key_path)
    except ConfigError as e:
        log.error("kept the TLS identity in use: %s", e)
        return
    log.info("now presenting the TLS certificate in %s", config.tls_cert_path)


async def _until_stopped(stop: asyncio.Event | None, reload: Callable[[], None]) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signum in signals[:2]:
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
