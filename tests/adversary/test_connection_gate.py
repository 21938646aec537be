"""The connection gate's policy (node.api.connections), one decision at a time.

The flood tests (test_connection_flood.py) show the end result against a real
server; these pin down who is refused and who is evicted.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from node.api.connections import ConnectionGate, raise_open_file_limit
from node.api.state import ApiLimits
from node.config import ConnectionSettings, load_config
from node.errors import ConfigError
from node.ledger.provision import init_node
from tests.api.conftest import Served
from tests.waiting import PATIENCE, eventually


async def _parked() -> None:
    await asyncio.Event().wait()


def _task() -> asyncio.Task[None]:
    return asyncio.create_task(_parked())


async def test_one_address_is_capped_and_cannot_evict_others() -> None:
    gate = ConnectionGate(ConnectionSettings(max_per_address=3, max_handshakes=4))
    tasks = []
    for _ in range(3):
        assert gate.admit("10.0.0.1")
        tasks.append(_task())
        gate.handshaking("10.0.0.1", tasks[-1])
    assert not gate.admit("10.0.0.1")  # its own cap
    assert gate.admit("10.0.0.2")
    other = _task()
    gate.handshaking("10.0.0.2", other)
    # The pool is full (4): the flooding address may not evict the other one.
    assert not gate.admit("10.0.0.1")
    assert gate.counts().refused == 2
    # A third address evicts the oldest handshake of the address holding most.
    assert gate.admit("10.0.0.3")
    await asyncio.sleep(0)  # let the cancellation land
    assert tasks[0].cancelled()
    assert not other.cancelled()
    counts = gate.counts()
    assert (counts.handshaking, counts.evicted) == (3, 1)
    for t in [*tasks, other]:
        t.cancel()


async def test_established_connections_are_capped_and_released() -> None:
    gate = ConnectionGate(ConnectionSettings(max_connections=2, max_per_address=10))
    tasks = [_task() for _ in range(3)]
    for t in tasks:
        assert gate.admit("10.0.0.1")
        gate.handshaking("10.0.0.1", t)
    assert gate.establish("10.0.0.1", tasks[0])
    assert gate.establish("10.0.0.1", tasks[1])
    assert not gate.establish("10.0.0.1", tasks[2])  # over max_connections
    assert gate.counts().established == 2
    gate.closed("10.0.0.1")
    gate.closed("10.0.0.1")
    gate.closed("10.0.0.1")  # one too many: ignored, never negative
    counts = gate.counts()
    assert (counts.established, counts.handshaking, counts.peak_established) == (0, 0, 2)
    for t in tasks:
        t.cancel()


async def test_a_failed_handshake_frees_its_place() -> None:
    gate = ConnectionGate(ConnectionSettings(max_per_address=1))
    t = _task()
    assert gate.admit("10.0.0.1")
    gate.handshaking("10.0.0.1", t)
    assert not gate.admit("10.0.0.1")
    gate.handshake_failed("10.0.0.1", t)
    assert gate.admit("10.0.0.1")
    assert gate.counts().timed_out == 1
    t.cancel()


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowered = min(soft, 256) if hard == resource.RLIM_INFINITY else min(soft, hard, 256)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        before, after = raise_open_file_limit()
        assert before == lowered
        now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert after == now
        assert now == hard or (hard == resource.RLIM_INFINITY and now > lowered)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_connection_settings_are_read_from_the_config(tmp_path: Path) -> None:
    node = tmp_path / "n"
    init_node(node, "hotline-a.example/hashmesh")
    assert load_config(node).connections == ConnectionSettings()
    config = node / "config.toml"
    base = config.read_text(encoding="utf-8")
    config.write_text(
        base + "\n[connections]\nmax_connections = 10\nmax_per_address = 2\n"
        "max_handshakes = 5\nhandshake_timeout = 3\nheader_timeout = 4.5\n"
        "raise_open_files = false\n",
        encoding="utf-8",
    )
    assert load_config(node).connections == ConnectionSettings(
        max_connections=10,
        max_per_address=2,
        max_handshakes=5,
        handshake_timeout=3.0,
        header_timeout=4.5,
        raise_open_files=False,
    )


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("max_connections = 0", "connections.max_connections"),
        ("max_per_address = true", "connections.max_per_address"),
        ("max_handshakes = 1.5", "connections.max_handshakes"),
        ("handshake_timeout = 0", "connections.handshake_timeout"),
        ("header_timeout = 'soon'", "connections.header_timeout"),
        ("raise_open_files = 1", "connections.raise_open_files"),
        ("backlog = 5", "unknown [connections] setting(s) backlog"),
    ],
)
def test_bad_connection_settings_are_named(tmp_path: Path, line: str, named: str) -> None:
    node = tmp_path / "n"
    init_node(node, "hotline-a.example/hashmesh")
    config = node / "config.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + f"\n[connections]\n{line}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(node)


async def test_an_unfinished_handshake_is_closed_at_the_handshake_timeout(
    serve_with: Callable[..., AsyncIterator[Served]],
) -> None:
    settings = ConnectionSettings(handshake_timeout=0.5, max_per_address=2)
    async for served in serve_with(ApiLimits(), connections=settings):
        host, port = served.server.host, served.server.port
        reader, writer = await asyncio.open_connection(host, port)  # TCP only, no TLS bytes
        try:
            # The server, not the client, ends it: read until EOF.
            assert await asyncio.wait_for(reader.read(), PATIENCE) == b""
        finally:
            writer.close()
        gate = served.server.gate
        assert gate is not None
        await eventually(
            gate.counts,
            until=lambda c: c.timed_out == 1 and c.handshaking == 0,
            what="the handshake counted as timed out",
        )
        assert gate.counts().evicted == 0
        # Its place is free again: a real peer connects and is answered.
        async with served.session(served.peer) as s, s.get(served.url + "/v1/health") as r:
            assert r.status == 200
        assert gate.counts().peak_established >= 1
