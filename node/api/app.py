"""The API application: routes, per-request authorisation, error mapping.

Layer: node.api.

Every request passes two middlewares, outermost first:

1. **errors** turns every failure into ``{"error": ..., "field": ...}`` with a
   4xx status (or 503 for a busy database or a slow handler), so bad input
   never produces a 500 or an HTML page.
2. **authorise** refuses oversized requests (413), then maps the client
   certificate's SPKI fingerprint to a peer record *on every request* (403
   when unknown: a peer removed while its keep-alive connection is open is
   refused on its next request), then spends one token of that peer's rate
   bucket (429 with ``Retry-After`` when empty), then answers unknown paths and methods
   (404/405), then checks the caller's role against the route (403) before the
   handler touches the database, and bounds the handler's run time.

No endpoint writes to a log: the local operator writes through the CLI.
POST routes (matching, witnessing) take a body capped per route
(:attr:`Route.max_body`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from aiohttp import web

from node.api import card, handlers, history, match, rotations, sse, witness
from node.api.access import LISTENER_KEY, METRICS_KEY, facts_middleware, request_facts
from node.api.state import (
    DB_KEY,
    HUB_KEY,
    INTEGRITY_KEY,
    LANE_KEY,
    LEAVES_KEY,
    LIMITS_KEY,
    ORIGIN_KEY,
    RATE_KEY,
    STREAMS_KEY,
    ApiLimits,
    PeerRateLimiter,
    StreamGate,
    WorkLane,
    refuse_damaged,
)
from node.api.workers import POOL_KEY, WorkerPool
from node.errors import (
    EntryNotFoundError,
    IndexPendingError,
    RecoveringError,
    StorageError,
    UnknownLogError,
)
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.leaf_index import LeafHashIndex
from node.ledger.scrub import IntegrityState
from node.metrics import NodeMetrics
from node.storage.connection import describe_sqlite_error
from node.storage.peer_store import PEER_ROLES
from node.tls import peer_spki
from protocol.errors import MalformedError

__all__ = [
    "ALL_ROLES",
    "ENTRY_READERS",
    "ROUTES",
    "Route",
    "error_middleware",
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
    """One endpoint: its path, method, handler and the roles allowed to call it.

    Attributes:
        max_body: the largest request body accepted, in bytes (413 above);
            None means :attr:`ApiLimits.client_max_size`. Only POST routes
            have bodies.
        pattern: the path aiohttp registers when it differs from the
            documented template :attr:`path` (a ``{name:regex}`` variable);
            both have the same canonical form, by which the authorisation
            policy finds the route.
    """

    path: str
    handler: Handler
    roles: frozenset[str]
    streaming: bool = False
    method: str = "GET"
    max_body: int | None = None
    pattern: str | None = None


ROUTES: tuple[Route, ...] = (
    Route("/v1/health", handlers.health, ALL_ROLES),
    Route("/v1/logs", handlers.logs, ALL_ROLES),
    Route("/v1/checkpoint", handlers.checkpoint, ALL_ROLES),
    Route("/v1/checkpoints", history.checkpoints, ALL_ROLES),
    Route("/v1/rotations", rotations.rotations, ALL_ROLES),
    Route("/v1/entries", handlers.entries, ENTRY_READERS),
    Route(
        "/v1/tile/entries/{bundle}",
        handlers.entry_bundle,
        ENTRY_READERS,
        # The bundle path has slashes (x001/234, 002.p/88): match them all and
        # let protocol.tiles parse the raw target strictly.
        pattern="/v1/tile/entries/{bundle:.+}",
    ),
    Route("/v1/leaf-hashes", handlers.leaf_hashes, ALL_ROLES),
    Route("/v1/proof/inclusion", handlers.inclusion_proof, ALL_ROLES),
    Route("/v1/proof/consistency", handlers.consistency_proof, ALL_ROLES),
    Route("/v1/evidence", handlers.evidence, ALL_ROLES),
    Route("/v1/card", card.signed_card, ALL_ROLES),
    Route("/v1/peer-card", card.peer_card, ALL_ROLES, method="POST", max_body=card.MAX_BODY),
    Route("/v1/events", sse.events, ALL_ROLES, streaming=True),
    Route("/v1/match", match.match_endpoint, ENTRY_READERS, method="POST", max_body=match.MAX_BODY),
    Route(
        "/v1/witness/add-checkpoint",
        witness.add_checkpoint,
        frozenset({"peer"}),
        method="POST",
        max_body=witness.MAX_BODY,
    ),
)

_POLICY_KEY = web.AppKey("policy", dict[str, Route])

_RETRY_AFTER = "1"


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    headers: dict[str, str] = {}
    for name in ("Allow", "Retry-After", "WWW-Authenticate"):
        if name in exc.headers:
            headers[name] = exc.headers[name]
    if exc.status == 404 and exc.text and not exc.text.startswith("404:"):
        message = exc.text  # a handler's own reason (the public listener's entry bundles)
    elif exc.status == 404:
        message = f"no endpoint {request.path}; see docs/api.md"
    elif exc.status == 405:
        allowed = exc.headers.get("Allow", "GET")
        message = f"method {request.method} is not allowed on {request.path} (allowed: {allowed})"
    elif exc.text and not exc.text.startswith(f"{exc.status}:"):
        message = exc.text
    else:
        message = exc.reason.lower()
    return handlers.error_response(exc.status, message, None, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON :class:`~protocol.api_documents.ErrorBody` (4xx/503).

    Used by the mutual-TLS API and the public listener alike.
    """
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _http_error(request, e)
    except MalformedError as e:
        return handlers.error_response(400, e.reason, e.field)
    except UnknownLogError as e:
        return handlers.error_response(404, str(e), "origin")
    except EntryNotFoundError as e:
        return handlers.error_response(404, str(e), e.field)
    except RecoveringError as e:
        # A restored node cosigns nothing until it has recovered its own log.
        return handlers.error_response(503, str(e), None, {"Retry-After": "60"})
    except IndexPendingError as e:
        # A first start at size: PDQ matching waits for its index file.
        return handlers.error_response(503, str(e), None, {"Retry-After": str(e.retry_after)})
    except StorageError as e:
        log.warning("database unavailable for %s: %s", request.path, e)
        return handlers.error_response(
            503, "the database is busy; retry shortly", None, {"Retry-After": "1"}
        )
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
        # Locked or busy is passing; anything else is a damaged file.
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            return handlers.error_response(
                503, "the database is busy; retry shortly", None, {"Retry-After": "1"}
            )
        detail = describe_sqlite_error(e) if isinstance(e, sqlite3.Error) else str(e)
        log.error("database damaged answering %s: %s", request.path, detail)
        return handlers.error_response(
            503,
            "this node's database is damaged; its operator must run `hashmesh fsck`",
            None,
            {"Retry-After": "600"},
        )
    except TimeoutError:
        return handlers.error_response(
            503, "the request took too long; retry shortly", None, {"Retry-After": "1"}
        )
    except Exception:
        # A bug, not bad input: keep the JSON shape and log the traceback.
        log.exception("internal error answering %s %s", request.method, request.path)
        return handlers.error_response(500, "internal error; the node's log has the details")


@web.middleware
async def _authorise(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    limits = app[LIMITS_KEY]
    facts = request_facts(request)
    refusals = app[METRICS_KEY].refusals
    length = request.content_length
    cap = _body_cap(app, request)
    if length is not None and length > cap:
        refusals.labels("", "too_large").inc()
        raise web.HTTPRequestEntityTooLarge(
            max_size=cap, actual_size=length, text=f"request body of {length} bytes exceeds {cap}"
        )
    spki = peer_spki(request)
    if spki is None:
        refusals.labels("", "no_certificate").inc()
        log.warning("refused %s %s: no client certificate", request.method, request.path)
        raise web.HTTPForbidden(text="a client certificate is required")
    peer = await app[DB_KEY].read(lambda ledger: ledger.peers.peer_by_spki(spki))
    if peer is None:
        refusals.labels("", "unknown_certificate").inc()
        log.warning(
            "refused %s %s: unknown certificate sha256:%s", request.method, request.path, spki
        )
        raise web.HTTPForbidden(text="this certificate does not belong to a known peer")
    facts.peer, facts.role = peer.name, peer.role
    wait = app[RATE_KEY].take(spki)
    if wait > 0:
        refusals.labels(peer.name, "rate_limit").inc()
        log.warning("refused %s %s to %s: rate limit", request.method, request.path, peer.name)
        raise web.HTTPTooManyRequests(
            text=f"peer {peer.name} exceeds {limits.peer_rate:g} requests/s; retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    match = request.match_info
    if match.http_exception is not None:
        raise match.http_exception
    resource = match.route.resource
    route = app[_POLICY_KEY].get(resource.canonical if resource is not None else "")
    if route is None:
        raise web.HTTPNotFound()
    if route.method == "POST":
        # aiohttp enforces the application's client_max_size while reading;
        # a route's own cap is enforced here (the app's is the largest).
        request = request.clone(client_max_size=cap)
    if peer.role not in route.roles:
        refusals.labels(peer.name, "role").inc()
        log.warning("refused %s to %s (role %s)", request.path, peer.name, peer.role)
        raise web.HTTPForbidden(text=f"role {peer.role!r} may not read {route.path}")
    if route.path != "/v1/evidence":  # fork evidence is not the log's data
        refuse_damaged(app.get(INTEGRITY_KEY), request.query.get("origin"))
    if route.streaming:
        return await handler(request)
    async with asyncio.timeout(limits.handler_timeout):
        response = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _body_cap(app: web.Application, request: web.Request) -> int:
    """The body cap for this request: its route's, or the default."""
    limits = app[LIMITS_KEY]
    resource = request.match_info.route.resource
    route = app[_POLICY_KEY].get(resource.canonical if resource is not None else "")
    if route is None or route.max_body is None:
        return limits.client_max_size
    return route.max_body


async def _node_dir(db: Database) -> Path:
    return await db.read(lambda ledger: ledger.config.node_dir)


async def _close_streams(app: web.Application) -> None:
    app[STREAMS_KEY].closing.set()


def make_app(
    db: Database,
    hub: CheckpointHub,
    *,
    origin: str,
    extra_cleanup: Sequence[CleanupContext] = (),
    limits: ApiLimits | None = None,
    metrics: NodeMetrics | None = None,
    integrity: IntegrityState | None = None,
) -> web.Application:
    """Build the API application.

    Args:
        db: the node's database facade (the app does not close it).
        hub: where checkpoint announcements come from for ``/v1/events``.
        origin: the node's own origin, reported by ``/v1/health``.
        extra_cleanup: ``cleanup_ctx`` callables run with the app, e.g. the
            sync runner; they get the application and yield once.
        limits: caps and timings (defaults: :class:`ApiLimits`).
        metrics: where requests, refusals and matches are counted (the
            serving node's, shown by the ops listener); a private one if None.
        integrity: damaged logs and scrub progress; a log recorded as
            damaged is answered 503 on every route naming it.

    Returns:
        The application, ready for an :class:`aiohttp.web.AppRunner`.
    """
    limits = limits or ApiLimits()
    largest = max([limits.client_max_size, *(r.max_body or 0 for r in ROUTES)])
    app = web.Application(
        middlewares=[facts_middleware("none"), error_middleware, _authorise],
        client_max_size=largest,
    )
    app[LISTENER_KEY] = "api"
    app[METRICS_KEY] = metrics or NodeMetrics()
    app[DB_KEY] = db
    app[HUB_KEY] = hub
    app[ORIGIN_KEY] = origin
    app[LIMITS_KEY] = limits
    app[STREAMS_KEY] = StreamGate(limits.max_streams)
    app[RATE_KEY] = PeerRateLimiter(limits.peer_rate, limits.peer_burst)
    app[LANE_KEY] = WorkLane(limits.heavy_workers, limits.heavy_queue)
    app[LEAVES_KEY] = LeafHashIndex()
    if limits.workers > 0:
        pool = WorkerPool(
            limits.workers,
            limits.heavy_queue,
            partial(_node_dir, db),
            nice=limits.worker_nice,
            jobs=(match.MATCH_JOB,),
        )
        app[POOL_KEY] = pool
        app.on_cleanup.append(lambda _app: pool.close())
    if integrity is not None:
        app[INTEGRITY_KEY] = integrity
    policy: dict[str, Route] = {}
    for route in ROUTES:
        path = route.pattern or route.path
        if route.method == "GET":
            registered = app.router.add_get(path, route.handler, allow_head=False)
        else:
            registered = app.router.add_route(route.method, path, route.handler)
        resource = registered.resource
        assert resource is not None
        # What _authorise looks up: the resource's canonical form, which for a
        # pattern is the documented template.
        policy[resource.canonical] = route
    app[_POLICY_KEY] = policy
    app.on_shutdown.append(_close_streams)
    app.cleanup_ctx.extend(extra_cleanup)
    return app
