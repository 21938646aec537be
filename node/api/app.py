"""The API application: routes, per-request authorisation, error mapping.

Layer: node.api.

Every request passes two middlewares, outermost first:

1. **errors** turns every failure into ``{"error": ..., "field": ...}`` with a
   4xx status (or 503 for a busy database or a slow handler), so bad input
   never produces a 500 or an HTML page.
2. **authorise** refuses oversized requests (413), then maps the client
   certificate's SPKI fingerprint to a peer record *on every request* (403
   when unknown: a peer removed while its keep-alive connection is open is
   refused on its next request), then answers unknown paths and methods
   (404/405), then checks the caller's role against the route (403) before the
   handler touches the database, and bounds the handler's run time.

There is no write endpoint: the local operator writes through the CLI.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from node.api import handlers, sse
from node.api.state import (
    DB_KEY,
    HUB_KEY,
    LIMITS_KEY,
    ORIGIN_KEY,
    STREAMS_KEY,
    ApiLimits,
    StreamGate,
)
from node.errors import StorageError, UnknownLogError
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.storage.ledger_store import PEER_ROLES
from node.tls import peer_spki
from protocol.encoding import dumps_canonical
from protocol.errors import MalformedError

__all__ = [
    "ALL_ROLES",
    "ENTRY_READERS",
    "ROUTES",
    "Route",
    "make_app",
]

log = logging.getLogger("hashmesh.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CleanupContext = Callable[[web.Application], AsyncIterator[None]]

ALL_ROLES = frozenset(PEER_ROLES)
ENTRY_READERS = frozenset({"peer", "subscriber"})
"""Roles that may see entry bytes, hash values and labels (never auditors)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: its path, handler and the roles allowed to call it."""

    path: str
    handler: Handler
    roles: frozenset[str]
    streaming: bool = False


ROUTES: tuple[Route, ...] = (
    Route("/v1/health", handlers.health, ALL_ROLES),
    Route("/v1/logs", handlers.logs, ALL_ROLES),
    Route("/v1/checkpoint", handlers.checkpoint, ALL_ROLES),
    Route("/v1/entries", handlers.entries, ENTRY_READERS),
    Route("/v1/leaf-hashes", handlers.leaf_hashes, ALL_ROLES),
    Route("/v1/proof/inclusion", handlers.inclusion_proof, ALL_ROLES),
    Route("/v1/proof/consistency", handlers.consistency_proof, ALL_ROLES),
    Route("/v1/evidence", handlers.evidence, ALL_ROLES),
    Route("/v1/events", sse.events, ALL_ROLES, streaming=True),
)

_POLICY_KEY = web.AppKey("policy", dict[str, Route])

_RETRY_AFTER = "1"


def _error(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=dumps_canonical({"error": message, "field": field}),
        content_type="application/json",
        headers=headers,
    )


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    headers: dict[str, str] = {}
    for name in ("Allow", "Retry-After"):
        if name in exc.headers:
            headers[name] = exc.headers[name]
    if exc.status == 404:
        message = f"no endpoint {request.path}; see docs/api.md"
    elif exc.status == 405:
        message = f"method {request.method} is not allowed on {request.path}; the API is read-only"
    elif exc.text and not exc.text.startswith(f"{exc.status}:"):
        message = exc.text
    else:
        message = exc.reason.lower()
    return _error(exc.status, message, None, headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _http_error(request, e)
    except MalformedError as e:
        return _error(400, e.reason, e.field)
    except UnknownLogError as e:
        return _error(404, str(e), "origin")
    except StorageError as e:
        log.warning("database unavailable for %s: %s", request.path, e)
        return _error(503, "the database is busy; retry shortly", None, {"Retry-After": "1"})
    except TimeoutError:
        return _error(503, "the request took too long; retry shortly", None, {"Retry-After": "1"})
    except Exception:
        # A bug, not bad input: keep the JSON shape and log the traceback.
        log.exception("internal error answering %s %s", request.method, request.path)
        return _error(500, "internal error; the node's log has the details")


@web.middleware
async def _authorise(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    limits = app[LIMITS_KEY]
    length = request.content_length
    if length is not None and length > limits.client_max_size:
        raise web.HTTPRequestEntityTooLarge(
            max_size=limits.client_max_size,
            actual_size=length,
            text=f"request body of {length} bytes exceeds {limits.client_max_size}",
        )
    spki = peer_spki(request)
    if spki is None:
        log.warning("refused %s %s: no client certificate", request.method, request.path)
        raise web.HTTPForbidden(text="a client certificate is required")
    peer = await app[DB_KEY].read(lambda ledger: ledger.store.peer_by_spki(spki))
    if peer is None:
        log.warning(
            "refused %s %s: unknown certificate sha256:%s", request.method, request.path, spki
        )
        raise web.HTTPForbidden(text="this certificate does not belong to a known peer")
    match = request.match_info
    if match.http_exception is not None:
        raise match.http_exception
    resource = match.route.resource
    route = app[_POLICY_KEY].get(resource.canonical if resource is not None else "")
    if route is None:
        raise web.HTTPNotFound()
    if peer.role not in route.roles:
        log.warning("refused %s to %s (role %s)", request.path, peer.name, peer.role)
        raise web.HTTPForbidden(text=f"role {peer.role!r} may not read {route.path}")
    if route.streaming:
        return await handler(request)
    async with asyncio.timeout(limits.handler_timeout):
        response = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _close_streams(app: web.Application) -> None:
    app[STREAMS_KEY].closing.set()


def make_app(
    db: Database,
    hub: CheckpointHub,
    *,
    origin: str,
    extra_cleanup: Sequence[CleanupContext] = (),
    limits: ApiLimits | None = None,
) -> web.Application:
    """Build the API application.

    Args:
        db: the node's database facade (the app does not close it).
        hub: where checkpoint announcements come from for ``/v1/events``.
        origin: the node's own origin, reported by ``/v1/health``.
        extra_cleanup: ``cleanup_ctx`` callables run with the app, e.g. the
            sync runner; they get the application and yield once.
        limits: caps and timings (defaults: :class:`ApiLimits`).

    Returns:
        The application, ready for an :class:`aiohttp.web.AppRunner`.
    """
    limits = limits or ApiLimits()
    app = web.Application(middlewares=[_errors, _authorise], client_max_size=limits.client_max_size)
    app[DB_KEY] = db
    app[HUB_KEY] = hub
    app[ORIGIN_KEY] = origin
    app[LIMITS_KEY] = limits
    app[STREAMS_KEY] = StreamGate(limits.max_streams)
    app[_POLICY_KEY] = {route.path: route for route in ROUTES}
    for route in ROUTES:
        app.router.add_get(route.path, route.handler, allow_head=False)
    app.on_shutdown.append(_close_streams)
    app.cleanup_ctx.extend(extra_cleanup)
    return app
