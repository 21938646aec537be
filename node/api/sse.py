"""The checkpoint event stream (server-sent events).

Layer: node.api.

Each stream subscribes to the :class:`~node.ledger.events.CheckpointHub` and
writes one ``checkpoint`` event per announcement. An idle stream gets a
``: ping`` comment every ping interval, which keeps proxies from closing it
and lets both ends notice a dead connection. Streams are capped
(:attr:`~node.api.state.ApiLimits.max_streams`) because each holds a
connection and a subscription for as long as the client likes; the cap is
answered with 503 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web

from node.api.state import HUB_KEY, LIMITS_KEY, STREAMS_KEY
from protocol.api_documents import CheckpointEvent

__all__ = ["events"]

_RETRY_AFTER = "5"


def _event(origin: str, size: int) -> bytes:
    data = CheckpointEvent(origin=origin, size=size).to_json()
    return b"event: checkpoint\ndata: " + data + b"\n\n"


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events``: ``checkpoint`` events as ``{"origin": O, "size": n}``."""
    if request.query:
        raise web.HTTPBadRequest(reason="events takes no query parameters")
    gate = request.app[STREAMS_KEY]
    if not gate.try_enter():
        raise web.HTTPServiceUnavailable(
            text=f"too many event streams open (limit {gate.limit}); retry later",
            headers={"Retry-After": _RETRY_AFTER},
        )
    try:
        return await _stream(request)
    finally:
        gate.leave()


async def _stream(request: web.Request) -> web.StreamResponse:
    gate = request.app[STREAMS_KEY]
    interval = request.app[LIMITS_KEY].ping_interval
    subscription = request.app[HUB_KEY].subscribe()
    # The first __anext__ runs the generator up to its first wait, which is
    # where it registers with the hub; start it before telling the client the
    # stream is open so no announcement after that point is missed.
    pending: asyncio.Future[tuple[str, int]] | None = asyncio.ensure_future(anext(subscription))
    closing: asyncio.Future[object] = asyncio.ensure_future(gate.closing.wait())
    try:
        await asyncio.sleep(0)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(b": stream open\n\n")
        while not gate.closing.is_set():
            if pending is None:
                pending = asyncio.ensure_future(anext(subscription))
            waiting: set[asyncio.Future[Any]] = {pending, closing}
            done, _ = await asyncio.wait(
                waiting, timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            if pending in done:
                try:
                    origin, size = pending.result()
                except StopAsyncIteration:
                    break
                pending = None
                await response.write(_event(origin, size))
            elif not done:
                await response.write(b": ping\n\n")
        return response
    finally:
        closing.cancel()
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        if isinstance(subscription, AsyncGenerator):
            # Unsubscribes now rather than when the generator is collected.
            with contextlib.suppress(RuntimeError):
                await subscription.aclose()
