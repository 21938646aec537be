"""The access log and request metrics of the API listeners.

Layer: node.api.

Every request to the mutual-TLS API and the public listener leaves one line
in the ``hashmesh.access`` logger once its response is sent: the peer's name
and role (or the client address on the public listener), the method and the
route *pattern* (``/v1/tile/entries/{bundle}``, never the raw path), the
status, the body bytes sent and the duration; for ``POST /v1/match`` the
number of hashes and of hits. Never a hash value: none is in a route
pattern, and the counts are all a match leaves. The same facts feed the
request counters and latency histograms of :class:`node.metrics.NodeMetrics`.

How: :func:`facts_middleware` (outermost) gives each request a mutable
:class:`RequestFacts` that the authorisation middleware and the match
handler fill in; aiohttp calls :class:`AccessLog` after the response is
written (``access_log_class`` of the runner), which is the one place that
knows the bytes sent and the full duration, streams included.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware
from aiohttp.web_request import BaseRequest

from node.metrics import NodeMetrics

__all__ = [
    "ACCESS_LOGGER",
    "FACTS_KEY",
    "LISTENER_KEY",
    "METRICS_KEY",
    "AccessLog",
    "RequestFacts",
    "facts_middleware",
    "request_facts",
]

ACCESS_LOGGER = logging.getLogger("hashmesh.access")

LISTENER_KEY = web.AppKey("listener", str)
"""Which listener an application serves (``api``, ``public``): a metrics label."""
METRICS_KEY = web.AppKey("metrics", NodeMetrics)


@dataclass(slots=True)
class RequestFacts:
    """What the access log says about one request, filled in as it is answered.

    Attributes:
        peer: the peer's name (empty when unknown or on the public listener).
        role: the peer's role, ``public`` on the public listener, ``none``
            when the caller was refused before it was identified.
        hashes: for a match, the hashes looked up.
        hits: for a match, the hashes that matched.
    """

    peer: str = ""
    role: str = "none"
    hashes: int | None = None
    hits: int | None = None


FACTS_KEY = web.RequestKey("hashmesh_facts", RequestFacts)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def facts_middleware(role: str) -> Middleware:
    """The outermost middleware: a fresh :class:`RequestFacts` (with ``role``) per request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Set on the request aiohttp logs; clones made later share the object.
        request[FACTS_KEY] = RequestFacts(role=role)
        return await handler(request)

    return middleware


def request_facts(request: web.Request) -> RequestFacts:
    """This request's facts (a throwaway when the middleware is not installed)."""
    facts = request.get(FACTS_KEY)
    return facts if facts is not None else RequestFacts()


def _route(request: web.Request) -> str:
    try:
        resource = request.match_info.route.resource
    except (AttributeError, RuntimeError):
        return "unmatched"
    return "unmatched" if resource is None else resource.canonical


class AccessLog(AbstractAccessLogger):
    """Writes the access log line and the request metrics (aiohttp ``access_log_class``)."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Called by aiohttp once the response has been written."""
        if not isinstance(request, web.Request):
            return  # a request line aiohttp could not parse: no app, no route
        facts = request.get(FACTS_KEY) or RequestFacts()
        route = _route(request)
        status = response.status
        size = response.body_length
        app = request.app
        listener = app.get(LISTENER_KEY, "api")
        metrics = app.get(METRICS_KEY)
        if metrics is not None:
            metrics.requests.labels(listener, route, facts.role, str(status)).inc()
            metrics.request_seconds.labels(listener, route, facts.role).observe(time)
            metrics.response_bytes.labels(listener, route).inc(size)
            if facts.peer:
                metrics.readers.record(facts.peer, facts.role, route, facts.hashes, facts.hits)
        if not self.logger.isEnabledFor(logging.INFO):
            return
        who = facts.peer or (request.remote or "-")
        extra: dict[str, object] = {
            "listener": listener,
            "peer": facts.peer,
            "role": facts.role,
            "remote": request.remote,
            "method": request.method,
            "route": route,
            "status": status,
            "bytes": size,
            "duration_s": round(time, 6),
        }
        match = ""
        if facts.hashes is not None:
            extra["hashes"] = facts.hashes
            extra["hits"] = facts.hits
            match = f" hashes={facts.hashes} hits={facts.hits}"
        self.logger.info(
            "%s %s(%s) %s %s %d %dB %.3fs%s",
            listener,
            who,
            facts.role,
            request.method,
            route,
            status,
            size,
            time,
            match,
            extra={"access": extra},
        )
