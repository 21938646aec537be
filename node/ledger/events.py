"""In-process publish/subscribe of new checkpoints, for the event stream.

Layer: node.ledger. No I/O; runs on the event loop.

Publishers (the sync engine after a commit, the server when it notices the
CLI signed a checkpoint) call :meth:`CheckpointHub.publish`, which never
blocks and never waits for subscribers. Each subscriber has a bounded queue;
when a slow subscriber's queue is full the *oldest* pending event is dropped
to make room. Nothing is lost that matters: an event only says "origin O has
size n", and a newer event for the same origin supersedes the older one; a
client that missed events re-reads ``/v1/logs``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

__all__ = ["DEFAULT_QUEUE_SIZE", "CheckpointHub"]

DEFAULT_QUEUE_SIZE = 256
"""Events a subscriber may fall behind by before the oldest are dropped."""

_CLOSED = ("", -1)  # sentinel: the hub was closed, the subscription ends


class CheckpointHub:
    """Fan-out of ``(origin, size)`` checkpoint events to any number of subscribers."""

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        """Create a hub whose subscribers each buffer up to ``queue_size`` events."""
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self._queue_size = queue_size
        self._queues: set[asyncio.Queue[tuple[str, int]]] = set()
        self._closed = False
        self._published: dict[str, int] = {}
        self.dropped = 0
        """Events dropped because a subscriber was too slow (for monitoring)."""

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        return len(self._queues)

    def published(self, origin: str) -> int:
        """How many events for ``origin`` were published (lets a second announcer skip one)."""
        return self._published.get(origin, 0)

    def publish(self, origin: str, size: int) -> None:
        """Send an event to every subscriber; never blocks (call from the event loop)."""
        if self._closed:
            return
        self._published[origin] = self._published.get(origin, 0) + 1
        event = (origin, size)
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[tuple[str, int]]:
        """Yield ``(origin, size)`` events published once iteration has started.

        The subscription is registered when the generator first runs (the
        first ``anext``/``async for`` step), not when it is created.
        The subscription ends when the hub is closed, and is removed when the
        generator is closed (``aclose()``, or leaving an ``async for`` early
        and the generator being finalised).
        """
        queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue(self._queue_size)
        if self._closed:
            return
        self._queues.add(queue)
        try:
            while True:
                event = await queue.get()
                if event is _CLOSED:
                    return
                yield event
        finally:
            self._queues.discard(queue)

    def close(self) -> None:
        """End every subscription (graceful shutdown); later publishes are ignored."""
        self._closed = True
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(_CLOSED)
