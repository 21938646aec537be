"""The checkpoint event stream: delivery, pings, the stream cap, shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import aiohttp

from node.api.state import ApiLimits
from tests.api.conftest import ORIGIN, Served


async def _open(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 1)
    assert first.startswith(b":")


async def test_published_checkpoint_arrives_within_a_second(served: Served) -> None:
    async with served.session(served.subscriber) as s, s.get(served.url + "/v1/events") as resp:
        await _open(resp)
        served.hub.publish(ORIGIN, 42)
        served.hub.publish("other.example/log", 7)
        events = []
        for _ in range(2):
            block = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 1)
            lines = block.decode().strip().split("\n")
            assert lines[0] == "event: checkpoint"
            assert lines[1].startswith("data: ")
            events.append(json.loads(lines[1][6:]))
    assert events == [{"origin": ORIGIN, "size": 42}, {"origin": "other.example/log", "size": 7}]


async def test_idle_stream_gets_pings_and_cap_is_503(
    serve_with: Callable[[ApiLimits], AsyncIterator[Served]],
) -> None:
    async for served in serve_with(ApiLimits(ping_interval=0.05, max_streams=1)):
        async with served.session(served.peer) as s, s.get(served.url + "/v1/events") as resp:
            await _open(resp)
            ping = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 1)
            assert ping == b": ping\n\n"
            async with (
                served.session(served.auditor) as s2,
                s2.get(served.url + "/v1/events") as second,
            ):
                assert second.status == 503
                assert second.headers["Retry-After"]
                assert "too many event streams" in (await second.json())["error"]
        # the slot is given back when the client goes away
        for _ in range(50):
            async with served.session(served.peer) as s, s.get(served.url + "/v1/events") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.02)
        assert resp.status == 200


async def test_events_take_no_parameters(served: Served) -> None:
    async with (
        served.session(served.peer) as s,
        s.get(served.url + "/v1/events", params={"since": "1"}) as resp,
    ):
        assert resp.status == 400


async def test_shutdown_ends_open_streams(served: Served) -> None:
    async with served.session(served.peer) as s, s.get(served.url + "/v1/events") as resp:
        await _open(resp)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await served.server.close()
        rest = await asyncio.wait_for(resp.content.read(), 5)
        assert b"event:" not in rest
        assert loop.time() - started < 5
