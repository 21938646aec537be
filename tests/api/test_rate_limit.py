"""Per-peer rate limiting: one peer's flood does not starve the others."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from node.api.state import ApiLimits, PeerRateLimiter
from tests.api.conftest import Served


def test_token_bucket_refills_at_rate() -> None:
    now = [100.0]
    limiter = PeerRateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == 0.5  # empty: half a second until the next token
    assert limiter.take("b") == 0.0  # buckets are per peer
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    now[0] += 60  # refills up to the burst, not beyond
    assert [limiter.take("a") for _ in range(4)][-1] > 0


async def test_server_answers_429_per_peer(
    serve_with: Callable[[ApiLimits], AsyncIterator[Served]],
) -> None:
    # One token per 100 s: no refill can land between the requests, however slow the machine.
    async for served in serve_with(ApiLimits(peer_rate=0.01, peer_burst=3)):
        async with served.session(served.peer) as s:
            statuses = []
            for _ in range(4):
                async with s.get(served.url + "/v1/health") as resp:
                    statuses.append(resp.status)
                    last = (await resp.json(), resp.headers.get("Retry-After"))
            assert statuses == [200, 200, 200, 429]
            body, retry_after = last
            assert "exceeds 0.01 requests/s" in body["error"]
            assert retry_after is not None and int(retry_after) >= 1
        # Another peer still gets through while the first is limited.
        async with (
            served.session(served.subscriber) as s,
            s.get(served.url + "/v1/health") as resp,
        ):
            assert resp.status == 200
