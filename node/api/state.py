"""What the API application keeps: typed app keys, limits, the stream gate.

Layer: node.api. No I/O.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from node.ledger.database import Database
from node.ledger.events import CheckpointHub

__all__ = [
    "DB_KEY",
    "HUB_KEY",
    "LIMITS_KEY",
    "ORIGIN_KEY",
    "STREAMS_KEY",
    "ApiLimits",
    "StreamGate",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiLimits:
    """Caps and timings of the API; the defaults are the documented ones."""

    max_page: int = 10_000
    """Most entries or leaf hashes one page returns."""
    max_streams: int = 64
    """Most event streams open at once; more get 503."""
    ping_interval: float = 15.0
    """Seconds between ``: ping`` comments on an idle event stream."""
    handler_timeout: float = 30.0
    """Seconds a (non-streaming) request may take before it is answered 503."""
    client_max_size: int = 64 * 1024
    """Largest request body accepted (there are no uploads; this is a guard)."""


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


DB_KEY = web.AppKey("db", Database)
HUB_KEY = web.AppKey("hub", CheckpointHub)
ORIGIN_KEY = web.AppKey("origin", str)
LIMITS_KEY = web.AppKey("limits", ApiLimits)
STREAMS_KEY = web.AppKey("streams", StreamGate)
