"""The operations listener: health, readiness and metrics for the people running a node.

Layer: node.api.

A plain-HTTP aiohttp application, separate from the peer API (which needs a
peer certificate for every request), meant for localhost or a private
network: ``[ops] listen = "127.0.0.1:PORT"`` in ``config.toml`` turns it on;
it is off by default. With ``[ops] token`` (or ``token_file``) every request
must carry ``Authorization: Bearer TOKEN``; the config refuses a listen
address that is not loopback without one (:func:`node.config.load_config`).

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

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from node.api.app import error_middleware
from node.config import NodeConfig
from node.ledger.database import Database
from node.ledger.events import CheckpointHub

__all__ = [
    "OPS_CONTEXT_KEY",
    "OPS_KEY",
    "OpsContext",
    "OpsMount",
    "make_ops_app",
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
    """

    db: Database
    hub: CheckpointHub
    config: NodeConfig


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
    if any(_under(request.path, p) for p in request.app[_MOUNT_PREFIXES_KEY]):
        return await handler(request)
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


def make_ops_app(
    context: OpsContext,
    *,
    token: str | None = None,
    mounts: Sequence[OpsMount] = (),
) -> web.Application:
    """Build the operations application.

    Args:
        context: the node's database, hub and config.
        token: the bearer token every request must present (None: none).
        mounts: sub-applications to serve beside the listener's own routes.

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
    app.router.add_get("/healthz", healthz, allow_head=True)
    for mount in mounts:
        app.add_subapp(mount.prefix, mount.build(context))
    return app
