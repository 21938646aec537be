"""The checkpoint event stream: delivery, pings, the stream cap, shutdown."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable

import aiohttp

from node.api.state import ApiLimits
from tests.api.conftest import ORIGIN, Served
from tests.waiting import PATIENCE, eventually


async def _open(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), PATIENCE)
    assert first.startswith(b":")


async def _stream_status(served: Served) -> int:
    async with served.session(served.peer) as s, s.get(served.url + "/v1/events") as resp:
        return resp.status


async def test_published_checkpoints_arrive_in_order(served: Served) -> None:
    async with served.session(served.subscriber) as s, s.get(served.url + "/v1/events") as resp:
        await _open(resp)
        served.hub.publish(ORIGIN, 42)
        served.hub.publish("other.example/log", 7)
        events = []
        for _ in range(2):
            block = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), PATIENCE)
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
            ping = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), PATIENCE)
            assert ping == b": ping\n\n"
            async with (
                served.session(served.auditor) as s2,
                s2.get(served.url + "/v1/events") as second,
            ):
                assert second.status == 503
                assert second.headers["Retry-After"]
                assert "too many event streams" in (await second.json())["error"]
        # the slot is given back when the client goes away
        await eventually(
            functools.partial(_stream_status, served),
            until=lambda status: status == 200,
            what="the stream slot back",
        )


async def test_events_take_no_parameters(served: Served) -> None:
    async with (
        served.session(served.peer) as s,
        s.get(served.url + "/v1/events", params={"since": "1"}) as resp,
    ):
        assert resp.status == 400


async def test_shutdown_ends_open_streams(served: Served) -> None:
    async with served.session(served.peer) as s, s.get(served.url + "/v1/events") as resp:
        await _open(resp)
        await served.server.close()
        # The stream ends (rather than being held until a client-side timeout).
        rest = await asyncio.wait_for(resp.content.read(), PATIENCE)
        assert b"event:" not in rest
