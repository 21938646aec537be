"""The one poll/backoff loop: a round now, again when woken, on a timer, backing off on failure.

Layer: node.sync. No I/O of its own: it awaits the round it is given.

The background loops of a serving node run on it: the sync runner's loop
per peer (:mod:`node.sync.runner`), and the :class:`ClientLoop` kinds it
starts beside them, the witness loop (:mod:`node.sync.witness_client`) and
the recovery loop (:mod:`node.sync.recovery`). A round runs at once; then the loop waits
until it is woken (an announcement) or its delay runs out. After a round
that succeeded the delay is the poll interval; after one that failed it is
the backoff, which doubles from ``min_backoff`` up to ``max_backoff`` and
falls back to ``min_backoff`` on the next success. Every delay is spread by
±20 % so that many nodes restarting together do not call in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from node.ledger.database import Database
from node.ledger.events import CheckpointHub

__all__ = ["Backoff", "ClientLoop", "PollTiming", "run_polling"]

_JITTER = 0.2  # delays are spread by ±20 %


@dataclass(frozen=True, slots=True, kw_only=True)
class PollTiming:
    """Timing of a polling loop, in seconds."""

    poll_interval: float = 30.0
    """Between rounds that succeed, when nothing wakes the loop earlier."""
    min_backoff: float = 1.0
    """After the first failure."""
    max_backoff: float = 300.0
    """The backoff doubles after each failure up to this."""


class Backoff:
    """The delay before the next round: the poll interval, or a doubling backoff.

    Args:
        timing: the intervals.
        rng: the source of jitter (a seeded one in tests).
    """

    def __init__(self, timing: PollTiming, rng: random.Random | None = None) -> None:
        self._timing = timing
        self._rng = rng or random.Random()  # noqa: S311 - timing, not security
        self._next = timing.min_backoff

    def _spread(self, seconds: float) -> float:
        return seconds * self._rng.uniform(1 - _JITTER, 1 + _JITTER)

    def reset(self) -> None:
        """Start again from ``min_backoff`` (the peer is healthy)."""
        self._next = self._timing.min_backoff

    def succeeded(self) -> float:
        """Reset the backoff; the delay after a round that succeeded."""
        self.reset()
        return self._spread(self._timing.poll_interval)

    def failed(self) -> float:
        """The delay after a failure; the next failure waits twice as long (capped)."""
        delay = self._spread(self._next)
        self._next = min(self._next * 2, self._timing.max_backoff)
        return delay


async def run_polling(
    round_: Callable[[], Awaitable[bool]],
    wake: asyncio.Event,
    timing: PollTiming,
    *,
    rng: random.Random | None = None,
    wake_in_backoff: bool = True,
) -> NoReturn:
    """Run ``round_`` now and again after each delay or wake-up, until cancelled.

    Args:
        round_: one round; returns whether it succeeded. It must not raise
            for a failure it can report (an exception ends the loop).
        wake: set to start the next round at once (it is cleared before
            each round, so a wake-up during a round starts another one).
        timing: the poll interval and backoff bounds.
        rng: the source of jitter.
        wake_in_backoff: whether a wake-up also cuts a backoff short. Off
            for a peer that is asked for every new checkpoint (a witness):
            while it is down, the wake-ups only make the next round, after
            the backoff, ask for the latest one, instead of one request each.
    """
    backoff = Backoff(timing, rng)
    while True:
        wake.clear()
        if await round_():
            delay = backoff.succeeded()
        else:
            delay = backoff.failed()
            if not wake_in_backoff:
                await asyncio.sleep(delay)
                continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=delay)


class ClientLoop:
    """A background loop of ``serve`` that calls other nodes as this node, on the poll timing.

    The sync runner starts each kind (:class:`~node.sync.witness_client.WitnessLoop`,
    :class:`~node.sync.recovery.RecoveryLoop`) with the same database,
    checkpoint hub, TLS identity and timing, runs :meth:`run` as a task and
    cancels it when it stops.
    """

    def __init__(
        self,
        db: Database,
        hub: CheckpointHub,
        *,
        cert_path: Path,
        key_path: Path,
        timing: PollTiming | None = None,
    ) -> None:
        self._db = db
        self._hub = hub
        self._cert_path = cert_path
        self._key_path = key_path
        self._timing = timing or PollTiming()

    async def run(self) -> None:
        """Run until done or cancelled."""
        raise NotImplementedError
