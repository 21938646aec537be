"""Waiting in tests: poll the condition itself, with a deadline far beyond need.

Tests never sleep a fixed time hoping something happened meanwhile: on a
loaded machine "meanwhile" stretches, and the test fails for the wrong
reason. They wait on an event (with :data:`PATIENCE` as its deadline), or
poll the actual condition with :func:`eventually`. The deadline only bounds
a hang: it is generous, and reaching it is a failure that says what was
awaited and what was last seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

PATIENCE = 60.0
"""Seconds any single wait in a test may take before it counts as hung.

Far beyond what anything needs on an idle machine (well under a second), so
a slow machine slows the suite down without failing it. Stays well under the
per-test timeout (pytest-timeout, 300 s), so a hang is reported by the
awaited condition rather than by a stack dump.
"""

_INTERVAL = 0.02


def _failure(what: str, within: float, last: object) -> AssertionError:
    seen = repr(last)
    if len(seen) > 500:
        seen = seen[:500] + "..."
    return AssertionError(f"gave up after {within:g} s waiting for {what}; last seen: {seen}")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], object] = ...,
    what: str,
    within: float = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    *,
    until: Callable[[T], object] = ...,
    what: str,
    within: float = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], object],
    *,
    until: Callable[[Any], object] = bool,
    what: str,
    within: float = PATIENCE,
) -> object:
    """Call ``probe`` (plain or async) until ``until(value)`` holds; return that value.

    Raises:
        AssertionError: naming ``what`` and the last value seen, if the
            condition still fails after ``within`` seconds.
    """
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise _failure(what, within, value)
        await asyncio.sleep(_INTERVAL)
