"""Slow clients (shared/TESTPLAN.md, network faults 2) against a real mTLS server.

A client with a valid certificate that sends its request head a line at a
time, never finishing it, holds a connection. The server's keep-alive
deadline bounds how long: aiohttp closes a connection whose request has not
started by then, however slowly bytes trickle in. Meanwhile honest requests
from the same peer are answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from node.api.state import ApiLimits
from tests.api.conftest import Served

SLOW_CLIENTS = 30
DEADLINE = 1.0  # the keep-alive timeout the server is started with


async def _slow_header_client(served: Served) -> float:
    """Seconds until the server closes a connection whose head never ends."""
    host, port = served.server.host, served.server.port
    reader, writer = await asyncio.open_connection(host, port, ssl=served.client_ctx(served.peer))
    started = time.monotonic()
    try:
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        while time.monotonic() - started < 15:
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), timeout=0.2) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
        return float("inf")
    except ConnectionError:
        return time.monotonic() - started
    finally:
        writer.close()


async def test_slow_header_clients_are_cut_off_and_honest_requests_served(
    serve_with: Callable[..., AsyncIterator[Served]],
) -> None:
    async for served in serve_with(ApiLimits(), keepalive_timeout=DEADLINE):
        slow = [asyncio.create_task(_slow_header_client(served)) for _ in range(SLOW_CLIENTS)]
        await asyncio.sleep(0.2)
        latencies: list[float] = []
        async with served.session(served.subscriber) as s:
            for _ in range(10):
                started = time.monotonic()
                async with s.get(served.url + "/v1/health") as resp:
                    assert resp.status == 200
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.1)
        held = await asyncio.gather(*slow)
        # Every slow connection was closed near the deadline, none held on.
        assert all(DEADLINE * 0.5 <= t <= DEADLINE + 3 for t in held), held
        assert max(latencies) < 1.0, latencies
