"""What a serving node counts while it runs, for ``GET /metrics`` on the ops listener.

Layer: node (bottom). Imports only ``prometheus_client``.

One :class:`NodeMetrics` per ``hashmesh serve`` process, handed to the API
application, the sync runner and the operations listener, each recording
what happens there. Every metric has its own :class:`CollectorRegistry` (not
the library's global one), so several nodes in one process (the tests) never
mix their counts. What the database knows (log sizes, peer status, evidence,
cosignatures, certificates) is read at scrape time instead
(:mod:`node.api.ops`).

Names follow Prometheus conventions: a ``hashmesh_`` prefix, base units
(seconds, bytes), ``_total`` on counters. Labels are bounded sets (route
patterns, roles, status codes, signal types, peer names, error kinds):
never a request path, a hash value, a salt or an entry's label.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LATENCY_BUCKETS", "NodeMetrics", "ReadCount", "ReaderTally", "error_kind"]

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Request duration buckets, in seconds: from a cached checkpoint to a 10,000-hash match."""

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def error_kind(error: BaseException) -> str:
    """A bounded label for an error: its class name in snake case, without ``_error``.

    ``PeerUnavailableError`` -> ``peer_unavailable``. The message (which may
    name sizes, URLs or hashes) never becomes a label.
    """
    name = _CAMEL.sub("_", type(error).__name__).lower()
    return name.removesuffix("_error") or "error"


@dataclass(frozen=True, slots=True)
class ReadCount:
    """What one peer read through one route since the node started serving.

    Attributes:
        peer: the peer's name.
        role: its role.
        route: the route pattern (never a raw path: no value is in it).
        requests: requests answered.
        hashes: hashes it looked up (``POST /v1/match``), 0 for other routes.
        hits: of those, how many matched.
        last_at: when the last request was answered (``time.time()``).
    """

    peer: str
    role: str
    route: str
    requests: int = 0
    hashes: int = 0
    hits: int = 0
    last_at: float = 0.0


class ReaderTally:
    """Who read what since this process started: requests per peer and route.

    For data-protection questions on the console's Activity page; kept in
    memory (the access log is the lasting record), one row per (peer, role,
    route), so its size is bounded by the peers and routes there are. Only
    identified peers are counted, and never a hash value.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], ReadCount] = {}
        self._lock = threading.Lock()

    def record(
        self, peer: str, role: str, route: str, hashes: int | None, hits: int | None
    ) -> None:
        """Count one answered request of ``peer`` on ``route``."""
        key = (peer, role, route)
        with self._lock:
            old = self._counts.get(key) or ReadCount(peer, role, route)
            self._counts[key] = replace(
                old,
                requests=old.requests + 1,
                hashes=old.hashes + (hashes or 0),
                hits=old.hits + (hits or 0),
                last_at=time.time(),
            )

    def counts(self) -> list[ReadCount]:
        """Every row, by peer then route."""
        with self._lock:
            return sorted(self._counts.values(), key=lambda c: (c.peer, c.route))


class NodeMetrics:
    """The counters and histograms of one serving node.

    Attributes:
        registry: where every metric of this node is registered; the ops
            listener renders it (with the scrape-time gauges).
    """

    def __init__(self) -> None:
        self.readers = ReaderTally()
        """Who read what (not exported to Prometheus: it is per peer)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "hashmesh_api_requests",
            "API requests answered, by listener, route pattern, caller role and status.",
            ["listener", "route", "role", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "hashmesh_api_request_duration_seconds",
            "Time from the request head to the last byte of the response.",
            ["listener", "route", "role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.response_bytes = Counter(
            "hashmesh_api_response_bytes",
            "Response body bytes sent, by listener and route pattern.",
            ["listener", "route"],
            registry=r,
        )
        self.refusals = Counter(
            "hashmesh_api_refusals",
            "Requests refused before their handler ran, by peer (empty: unknown) and reason.",
            ["peer", "reason"],
            registry=r,
        )
        self.match_hashes = Counter(
            "hashmesh_match_hashes",
            "Hashes looked up through POST /v1/match, by signal type and result (hit or miss).",
            ["type", "result"],
            registry=r,
        )
        self.sync_rounds = Counter(
            "hashmesh_sync_rounds",
            "Sync rounds with a peer, by result (ok or error).",
            ["peer", "result"],
            registry=r,
        )
        self.sync_errors = Counter(
            "hashmesh_sync_errors",
            "Failed sync rounds and event streams, by peer and kind of error.",
            ["peer", "reason"],
            registry=r,
        )
        self.sync_entries = Counter(
            "hashmesh_sync_entries",
            "Entries verified and committed from a peer.",
            ["peer"],
            registry=r,
        )
        self.peer_up = Gauge(
            "hashmesh_peer_up",
            "1 when the last sync round with the peer succeeded, else 0.",
            ["peer"],
            registry=r,
        )
        self.forks_detected = Counter(
            "hashmesh_forks_detected",
            "Fork evidence stored by this process (a conflicting signed checkpoint), by origin.",
            ["origin"],
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "hashmesh_tls_handshake_failures",
            "TLS handshakes refused or failed, by listener and reason.",
            ["listener", "reason"],
            registry=r,
        )

    def forget_peer(self, peer: str) -> None:
        """Drop a removed peer's up gauge, so it no longer reads as up or down."""
        with contextlib.suppress(KeyError):
            self.peer_up.remove(peer)
