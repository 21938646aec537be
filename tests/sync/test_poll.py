"""The one poll/backoff loop: rounds on wake-up, backoff after failures, reset on success."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import NoReturn

import pytest

from node.sync.poll import Backoff, PollTiming, run_polling

# A poll interval no test waits for: the next round comes from a wake-up or a backoff.
NEVER = 3600.0


def test_backoff_doubles_up_to_the_cap_and_resets_on_success() -> None:
    backoff = Backoff(PollTiming(poll_interval=30, min_backoff=1, max_backoff=8), random.Random(7))
    delays = [backoff.failed() for _ in range(6)]
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert 0.8 * base <= delay <= 1.2 * base
    assert 0.8 * 30 <= backoff.succeeded() <= 1.2 * 30
    assert 0.8 <= backoff.failed() <= 1.2  # back to min_backoff


class Rounds:
    """A scripted round: succeeds or fails as told, and signals each call."""

    def __init__(self, results: list[bool]) -> None:
        self.results = results
        self.calls = 0
        self.called = asyncio.Event()

    async def __call__(self) -> bool:
        self.calls += 1
        self.called.set()
        return self.results[min(self.calls, len(self.results)) - 1]

    async def wait_for_call(self, n: int) -> None:
        async def reached() -> None:
            while self.calls < n:
                self.called.clear()
                await self.called.wait()

        await asyncio.wait_for(reached(), timeout=10)


@contextlib.asynccontextmanager
async def polling(
    rounds: Rounds, wake: asyncio.Event, timing: PollTiming
) -> AsyncIterator[asyncio.Task[NoReturn]]:
    task = asyncio.create_task(run_polling(rounds, wake, timing, rng=random.Random(1)))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_round_runs_at_once_then_on_each_wake_up() -> None:
    rounds = Rounds([True])
    wake = asyncio.Event()
    async with polling(rounds, wake, PollTiming(poll_interval=NEVER)):
        await rounds.wait_for_call(1)
        for n in (2, 3):
            wake.set()
            await rounds.wait_for_call(n)
    assert rounds.calls == 3


async def test_failures_are_retried_after_the_backoff_without_a_wake_up() -> None:
    rounds = Rounds([False, False, False, True])
    wake = asyncio.Event()
    timing = PollTiming(poll_interval=NEVER, min_backoff=0.001, max_backoff=0.004)
    async with polling(rounds, wake, timing):
        await rounds.wait_for_call(4)
        # Healthy again: the next round waits for the poll interval or a wake-up.
        wake.set()
        await rounds.wait_for_call(5)
    assert rounds.calls == 5


async def test_a_round_that_raises_ends_the_loop() -> None:
    async def broken() -> bool:
        raise RuntimeError("a bug, not a peer's fault")

    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(run_polling(broken, asyncio.Event(), PollTiming()), timeout=10)
