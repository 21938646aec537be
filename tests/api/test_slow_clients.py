"""Slow clients (shared/TESTPLAN.md, network faults 2) against a real mTLS server.

A client with a valid certificate that sends its request head a line at a
time, never finishing it, holds a connection. The server's keep-alive
deadline bounds how long: aiohttp closes a connection whose request has not
started by then, however slowly bytes trickle in. Meanwhile honest requests
from the same peer are answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from node.api.state import ApiLimits
from tests.api.conftest import Served
from tests.waiting import PATIENCE

SLOW_CLIENTS = 30
DEADLINE = 1.0  # the keep-alive timeout the server is started with
TRICKLE = 0.2  # seconds between the slow client's header lines


async def _slow_header_client(served: Served, opened: asyncio.Queue[None]) -> bool:
    """Trickle a request head that never ends; True once the server closes the
    connection, False if it still held it after PATIENCE (60 times its deadline)."""
    host, port = served.server.host, served.server.port
    reader, writer = await asyncio.open_connection(host, port, ssl=served.client_ctx(served.peer))
    loop = asyncio.get_running_loop()
    give_up = loop.time() + PATIENCE
    try:
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await writer.drain()
        opened.put_nowait(None)
        while loop.time() < give_up:
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), timeout=TRICKLE) == b"":
                    return True
            except TimeoutError:
                continue
        return False
    except ConnectionError:
        return True
    finally:
        writer.close()


async def test_slow_header_clients_are_cut_off_and_honest_requests_served(
    serve_with: Callable[..., AsyncIterator[Served]],
) -> None:
    async for served in serve_with(ApiLimits(), keepalive_timeout=DEADLINE):
        opened: asyncio.Queue[None] = asyncio.Queue()
        slow = [
            asyncio.create_task(_slow_header_client(served, opened)) for _ in range(SLOW_CLIENTS)
        ]
        for _ in range(SLOW_CLIENTS):  # every slow client holds a connection
            await asyncio.wait_for(opened.get(), PATIENCE)
        async with served.session(served.subscriber) as s:
            for _ in range(10):
                async with s.get(served.url + "/v1/health") as resp:
                    assert resp.status == 200
        # Every slow connection was closed by the server, none held on. (How
        # near its deadline, and honest latency meanwhile, are timings:
        # benchmarks/bench_api.py measures them.)
        assert all(await asyncio.gather(*slow))
