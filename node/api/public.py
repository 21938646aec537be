"""The public read listener: the own log's tree as C2SP tlog-tiles, to anyone.

Layer: node.api.

Off by default; ``[public] listen = "HOST:PORT"`` in ``config.toml`` turns it
on, and ``hashmesh serve`` runs it beside the mutual-TLS API
(:func:`node.api.server.start_public_server`): HTTPS with the node's own
certificate and no client certificate. It serves exactly what ``hashmesh
publish`` writes, and nothing else::

    GET|HEAD /checkpoint            the latest signed checkpoint, with held cosignatures
    GET|HEAD /tile/<L>/<N>[.p/<W>]  hash tiles (protocol.tiles), tile height 8
    GET|HEAD /rotations             the log's key rotations, proven (404 if it never rotated)

Hash tiles hold leaf and node hashes only. Entry bundles
(``/tile/entries/...``) hold hash values and are never served here (404);
peers and subscribers read them over the mutual-TLS API
(``/v1/tile/entries/...``, :func:`node.api.handlers.entry_bundle`).

Paths are read from the raw request target (never percent-decoded or
normalised) and must be the one canonical spelling
(:func:`protocol.tiles.parse_tile_path`), so a non-canonical path is a 400
naming what is wrong and there is no file system behind them to escape
into. Every tile within the tree is immutable: full tiles are served with
``Cache-Control: public, max-age=31536000, immutable``; partial tiles (a
later size replaces them by a wider one) and the checkpoint with a short
max-age. Tiles read are kept in a bounded in-memory cache, so a full tile
is answered without the database. Each client IP has its own token bucket
(429 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from node.api.access import LISTENER_KEY, METRICS_KEY, facts_middleware
from node.api.app import error_middleware
from node.api.handlers import raw_target_path
from node.api.state import INTEGRITY_KEY, ORIGIN_KEY, PeerRateLimiter, refuse_damaged
from node.errors import UnknownLogError
from node.ledger.database import Database
from node.ledger.rotation_proofs import proven_rotations
from node.ledger.scrub import IntegrityState
from node.ledger.service import Ledger
from node.metrics import NodeMetrics
from protocol.tiles import EntryBundleId, TileId, parse_tile_path

__all__ = [
    "CHECKPOINT_CACHE_CONTROL",
    "FULL_TILE_CACHE_CONTROL",
    "PARTIAL_TILE_CACHE_CONTROL",
    "PUBLIC_KEY",
    "PublicLimits",
    "PublicState",
    "make_public_app",
]

log = logging.getLogger("hashmesh.public")

FULL_TILE_CACHE_CONTROL = "public, max-age=31536000, immutable"
PARTIAL_TILE_CACHE_CONTROL = "public, max-age=60"
CHECKPOINT_CACHE_CONTROL = "public, max-age=5"
_TILE_TYPE = "application/octet-stream"
_CHECKPOINT_TYPE = "text/plain; charset=utf-8"
_JSON_TYPE = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicLimits:
    """Caps of the public listener; the defaults are the documented ones."""

    rate: float = 50.0
    """Requests per second each client IP may sustain; more get 429."""
    burst: int = 200
    """Requests a client IP may make at once before :attr:`rate` applies."""
    max_clients: int = 100_000
    """Client IPs whose buckets are kept (refilled ones are dropped first)."""
    cached_tiles: int = 4096
    """Tiles kept in memory (a full tile is 8 KiB: 32 MiB at most)."""
    handler_timeout: float = 10.0
    """Seconds a request may take before it is answered 503."""


class PublicState:
    """What the public application keeps: the database, buckets and the tile cache."""

    def __init__(self, db: Database, limits: PublicLimits) -> None:
        self.db = db
        self.limits = limits
        self.rate = PeerRateLimiter(limits.rate, limits.burst, max_keys=limits.max_clients)
        self._tiles: OrderedDict[TileId, bytes] = OrderedDict()

    async def tile(self, tile: TileId) -> bytes:
        """A hash tile of the own log, if within its latest checkpoint's tree.

        Raises:
            EntryNotFoundError: if the tile lies beyond the tree.
            UnknownLogError: if the log has no checkpoint yet.
        """
        data = self._tiles.get(tile)
        if data is not None:
            self._tiles.move_to_end(tile)
            return data

        def read(ledger: Ledger) -> bytes:
            own = ledger.own_log
            record = ledger.stored_checkpoint(own)
            if record is None:
                raise UnknownLogError(f"log {own.origin!r} has no checkpoint yet")
            return ledger.hash_tile(own, tile, record.size)

        data = await self.db.read(read)
        # A tile within a checkpointed tree never changes (the log is append-only).
        self._tiles[tile] = data
        if len(self._tiles) > self.limits.cached_tiles:
            self._tiles.popitem(last=False)
        return data

    async def checkpoint(self) -> str:
        """The own log's latest signed checkpoint, with the cosignatures held.

        Raises:
            UnknownLogError: if the log has no checkpoint yet.
        """

        def read(ledger: Ledger) -> str:
            own = ledger.own_log
            record = ledger.stored_checkpoint(own)
            if record is None:
                raise UnknownLogError(f"log {own.origin!r} has no checkpoint yet")
            return ledger.served_note(own, record)

        return await self.db.read(read)

    async def rotations(self) -> bytes | None:
        """The own log's rotations below its latest checkpoint (JSON), or None if none.

        Raises:
            UnknownLogError: if the log has no checkpoint yet.
        """

        def read(ledger: Ledger) -> bytes | None:
            own = ledger.own_log
            record = ledger.stored_checkpoint(own)
            if record is None:
                raise UnknownLogError(f"log {own.origin!r} has no checkpoint yet")
            listed = proven_rotations(ledger, own.origin, record.size)
            return listed.to_json() if listed.rotations else None

        return await self.db.read(read)


PUBLIC_KEY = web.AppKey("public", PublicState)
"""Marks an application made by :func:`make_public_app` (the only one served without mTLS)."""


async def _serve(request: web.Request) -> web.StreamResponse:
    state = request.app[PUBLIC_KEY]
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
    integrity = request.app.get(INTEGRITY_KEY)
    if integrity is not None:
        refuse_damaged(integrity, request.app[ORIGIN_KEY])
    path = raw_target_path(request)
    if path == "/checkpoint":
        note = await state.checkpoint()
        return web.Response(
            body=note.encode("utf-8"),
            headers={"Content-Type": _CHECKPOINT_TYPE, "Cache-Control": CHECKPOINT_CACHE_CONTROL},
        )
    if path == "/rotations":
        body = await state.rotations()
        if body is None:
            raise web.HTTPNotFound(text="this log never rotated its signing key")
        return web.Response(
            body=body,
            headers={"Content-Type": _JSON_TYPE, "Cache-Control": CHECKPOINT_CACHE_CONTROL},
        )
    if not path.startswith("/tile/"):
        raise web.HTTPNotFound()
    parsed = parse_tile_path(path[1:])  # MalformedError: 400 naming the field
    if isinstance(parsed, EntryBundleId):
        raise web.HTTPNotFound(
            text=(
                f"{path} is an entry bundle: entry bundles hold hash values and are never "
                "public; peers and subscribers read them over the mutual-TLS API "
                "(GET /v1/tile/entries/...?origin=O)"
            )
        )
    data = await state.tile(parsed)
    cache = FULL_TILE_CACHE_CONTROL if parsed.is_full else PARTIAL_TILE_CACHE_CONTROL
    return web.Response(body=data, headers={"Content-Type": _TILE_TYPE, "Cache-Control": cache})


@web.middleware
async def _limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[PUBLIC_KEY]
    client = request.remote or "unknown"
    wait = state.rate.take(client)
    if wait > 0:
        log.info("refused %s %s to %s: rate limit", request.method, request.path, client)
        raise web.HTTPTooManyRequests(
            text=f"more than {state.limits.rate:g} requests/s from {client}; retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    async with asyncio.timeout(state.limits.handler_timeout):
        return await handler(request)


def make_public_app(
    db: Database,
    limits: PublicLimits | None = None,
    metrics: NodeMetrics | None = None,
    *,
    integrity: IntegrityState | None = None,
    origin: str | None = None,
) -> web.Application:
    """Build the public read application (see the module docs).

    Args:
        db: the node's database facade (the app does not close it).
        limits: rate limit, cache and timeout (defaults: :class:`PublicLimits`).
        metrics: where its requests are counted (listener ``public``).
        integrity: damaged logs; with ``origin`` (the own log's), a damaged
            own log is answered 503.
        origin: the own log's origin.

    Returns:
        The application, for :func:`node.api.server.start_public_server`.
    """
    state = PublicState(db, limits or PublicLimits())
    # Requests have no body: a small cap refuses any that send one.
    app = web.Application(
        middlewares=[facts_middleware("public"), error_middleware, _limit], client_max_size=1024
    )
    app[PUBLIC_KEY] = state
    app[LISTENER_KEY] = "public"
    app[METRICS_KEY] = metrics or NodeMetrics()
    if integrity is not None and origin is not None:
        app[INTEGRITY_KEY] = integrity
        app[ORIGIN_KEY] = origin
    app.router.add_route("*", "/{tail:.*}", _serve)
    return app
