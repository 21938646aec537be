"""What the API application keeps: typed app keys, limits, the stream gate.

Layer: node.api. No I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from node.config import ApiLimits
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.leaf_index import LeafHashIndex
from node.ledger.scrub import IntegrityState

__all__ = [
    "DB_KEY",
    "HUB_KEY",
    "INTEGRITY_KEY",
    "LANE_KEY",
    "LIMITS_KEY",
    "ORIGIN_KEY",
    "RATE_KEY",
    "STREAMS_KEY",
    "ApiLimits",
    "PeerRateLimiter",
    "StreamGate",
    "WorkLane",
]


class PeerRateLimiter:
    """A token bucket per peer, so one busy or hostile peer cannot starve the others.

    On the mutual-TLS API buckets are keyed by the peer's certificate
    fingerprint and kept for known peers only (the lookup happens after
    authentication), so the table cannot be grown by strangers. The public
    listener keys them by client IP, which anyone can vary, so it passes
    ``max_keys``: beyond it, buckets that have refilled (the same as a new
    one) are dropped first, then the least recently used.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_keys: int | None = None,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        """Buckets held."""
        return len(self._buckets)

    def take(self, peer: str) -> float:
        """Spend one token; 0.0 if allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.pop(peer, None)  # re-inserted below: dict order is recency
        if bucket is None:
            if self.max_keys is not None and len(self._buckets) >= self.max_keys:
                self._evict(now)
            bucket = (self.burst, now)
        tokens, last = bucket
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[peer] = (tokens - 1.0, now)
            return 0.0
        self._buckets[peer] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _evict(self, now: float) -> None:
        # Buckets are in order of last use, so the refilled ones come first.
        refill = self.burst / self.rate  # seconds for any bucket to be full again
        while self._buckets:
            key, (_tokens, last) = next(iter(self._buckets.items()))
            if now - last < refill:
                break
            del self._buckets[key]
        if self.max_keys is not None and len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]


class StreamGate:
    """Counts open event streams and tells them when the server shuts down."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.closing = asyncio.Event()

    def try_enter(self) -> bool:
        """Take a slot; False when every slot is taken or the server is closing."""
        if self.active >= self.limit or self.closing.is_set():
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        """Give a slot back."""
        self.active -= 1


class WorkLane:
    """Bounds heavy requests, so light ones (checkpoint, health) never queue behind them.

    At most ``workers`` run at once and at most ``queue`` wait; a request
    beyond that is answered 503 with ``Retry-After`` at once instead of
    piling up (issue 14: a busy lane must not grow memory or latency
    without bound).
    """

    def __init__(self, workers: int, queue: int) -> None:
        self.workers = workers
        self.queue = queue
        self._slots = asyncio.Semaphore(workers)
        self._waiting = 0
        self.refused = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one worker for the duration of the block.

        Raises:
            web.HTTPServiceUnavailable: if every worker is busy and the queue is full.
        """
        if self._slots.locked() and self._waiting >= self.queue:
            self.refused += 1
            raise web.HTTPServiceUnavailable(
                text=f"busy: {self.workers} heavy requests running and {self.queue} waiting; "
                "retry shortly",
                headers={"Retry-After": "1"},
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


DB_KEY = web.AppKey("db", Database)
HUB_KEY = web.AppKey("hub", CheckpointHub)
ORIGIN_KEY = web.AppKey("origin", str)
LIMITS_KEY = web.AppKey("limits", ApiLimits)
STREAMS_KEY = web.AppKey("streams", StreamGate)
LANE_KEY = web.AppKey("lane", WorkLane)
RATE_KEY = web.AppKey("rate", PeerRateLimiter)
LEAVES_KEY = web.AppKey("leaves", LeafHashIndex)
INTEGRITY_KEY = web.AppKey("integrity", IntegrityState)
"""Scrub progress and damaged logs (node.ledger.scrub); a damaged log is not served."""


def refuse_damaged(integrity: IntegrityState | None, origin: str | None) -> None:
    """Answer 503 for a log recorded as damaged (node.ledger.damage)."""
    if integrity is None or not origin:
        return
    damage = integrity.damage(origin)
    if damage is not None:
        raise web.HTTPServiceUnavailable(
            text=f"{damage}; this node does not serve it until it is repaired",
            headers={"Retry-After": "600"},
        )
