"""Light requests never wait for heavy ones (issue 14 item 5).

Heavy requests (matching, entry pages and bundles, leaf-hash pages, inclusion
proofs) take a worker of the app's :class:`~node.api.state.WorkLane` first.
With every worker busy and the queue full, a heavy request is answered 503
with ``Retry-After`` at once, while ``/v1/checkpoint`` and ``/v1/health``
are answered as usual. The lane's workers are held by the test itself (the
deterministic stand-in for a long match), over a real mTLS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from node.api.state import LANE_KEY, ApiLimits, WorkLane
from tests.api.conftest import ORIGIN, Served, signal_value
from tests.waiting import PATIENCE, eventually

HEAVY = [
    ("GET", f"/v1/entries?origin={ORIGIN}&start=0"),
    ("GET", f"/v1/tile/entries/000.p/2?origin={ORIGIN}"),
    ("GET", f"/v1/leaf-hashes?origin={ORIGIN}&start=0"),
    ("GET", f"/v1/proof/inclusion?origin={ORIGIN}&index=0"),
    ("POST", "/v1/match"),
]
LIGHT = ["/v1/health", f"/v1/checkpoint?origin={ORIGIN}"]


async def _hold(lane: WorkLane, held: asyncio.Event, release: asyncio.Event) -> None:
    async with lane.slot():
        held.set()
        await release.wait()


async def test_full_lane_refuses_heavy_requests_and_serves_light_ones(
    serve_with: Callable[..., AsyncIterator[Served]],
) -> None:
    # workers=0: matching in the reader threads, behind the lane (with worker
    # processes it has a pool of its own: tests/api/test_workers.py).
    async for served in serve_with(ApiLimits(heavy_workers=1, heavy_queue=0, workers=0)):
        lane = served.server.runner.app[LANE_KEY]
        release = asyncio.Event()
        held = asyncio.Event()

        holder = asyncio.create_task(_hold(lane, held, release))
        await asyncio.wait_for(held.wait(), PATIENCE)
        body = json.dumps({"hashes": [{"type": "sha256", "value": signal_value(0)}]})
        try:
            async with served.session(served.subscriber) as s:
                for method, path in HEAVY:
                    async with s.request(method, served.url + path, data=body) as r:
                        assert r.status == 503, (path, await r.text())
                        assert r.headers["Retry-After"] == "1"
                        assert "busy" in (await r.json())["error"]
                for path in LIGHT:
                    async with s.get(served.url + path) as r:
                        assert r.status == 200, path
                release.set()
                await holder
                # With the worker free, the same heavy requests are served.
                for method, path in HEAVY:
                    async with s.request(method, served.url + path, data=body) as r:
                        assert r.status == 200, (path, await r.text())
        finally:
            release.set()
            with contextlib.suppress(asyncio.CancelledError):
                await holder
        assert lane.refused == len(HEAVY)


async def test_waiting_requests_are_served_in_turn() -> None:
    lane = WorkLane(workers=1, queue=2)
    order: list[int] = []
    release = asyncio.Event()

    async def job(i: int) -> None:
        async with lane.slot():
            order.append(i)
            if i == 0:
                await release.wait()

    first = asyncio.create_task(job(0))
    await eventually(lambda: order, until=lambda o: o == [0], what="the first job to run")
    waiting = [asyncio.create_task(job(i)) for i in (1, 2)]
    await eventually(lambda: lane._waiting, until=lambda n: n == 2, what="two waiting jobs")
    with pytest.raises(web.HTTPServiceUnavailable):
        async with lane.slot():
            pass  # pragma: no cover - refused before entering
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == [0, 1, 2]
    assert lane.refused == 1
