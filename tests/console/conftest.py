"""Fixtures for console tests: a real node served on 127.0.0.1, its console on the ops listener."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.api.server import RunningServer, run_server
from node.ledger import Ledger
from node.ledger.provision import init_node
from protocol.entry import AddEntry
from tests.waiting import PATIENCE

ORIGIN = "hotline-console.example/hashmesh"
LABELS = ("category:console-a1", "series:console-b2")
PREFIX = "/console"


def planted(i: int) -> str:
    """The i-th SHA-256 value the test node lists."""
    return hashlib.sha256(f"console-planted-{i}".encode()).hexdigest()


def unlisted(i: int) -> str:
    """A SHA-256 value the test node does not list."""
    return hashlib.sha256(f"console-unlisted-{i}".encode()).hexdigest()


PLANTED = [planted(i) for i in range(6)]


def init_console_node(path: Path) -> Path:
    """A node listing :data:`PLANTED` (entries 0-5), with entry 1 retracted (entry 6)."""
    init_node(path, ORIGIN, listen="127.0.0.1:0")
    with Ledger.open(path) as ledger:
        ledger.append(
            [AddEntry.create(signal_type="sha256", value=v, labels=LABELS) for v in PLANTED]
        )
        ledger.retract(1, "listed by mistake")
    return path


@dataclass
class Console:
    """A node served as ``hashmesh serve`` serves it, with its console on the ops listener."""

    base: str
    node_dir: Path
    api: str = ""
    """The node's mutual-TLS API (``https://127.0.0.1:PORT``)."""

    def url(self, page: str) -> str:
        return f"{self.base}{PREFIX}/{page}"


def with_ops(node_dir: Path, token: str | None = None, listen: str = "127.0.0.1:0") -> None:
    """Turn the operations listener (and so the console) on in ``config.toml``."""
    table = f'listen = "{listen}"\n' + (f'token = "{token}"\n' if token else "")
    with (node_dir / "config.toml").open("a", encoding="utf-8") as f:
        f.write(f"\n[ops]\n{table}")


async def serve_console(
    node_dir: Path, *, token: str | None = None, sync: bool = False, poll: float = 3600.0
) -> AsyncIterator[Console]:
    """Run ``hashmesh serve`` for ``node_dir`` in this process (``run_server``) with
    ``[ops] listen`` on 127.0.0.1 (random port); yield its console."""
    with_ops(node_dir, token)
    stop = asyncio.Event()
    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    api: list[RunningServer] = []
    task = asyncio.create_task(
        run_server(
            node_dir,
            sync=sync,
            poll_interval=poll,
            stop=stop,
            on_started=api.append,
            on_ops_started=started.set_result,
        )
    )
    try:
        done, _ = await asyncio.wait(
            {task, started}, timeout=PATIENCE, return_when="FIRST_COMPLETED"
        )
        if started not in done:
            raise AssertionError(f"the ops listener did not start: {task}")
        ops = started.result()
        yield Console(f"http://{ops.host}:{ops.port}", node_dir, api[0].url)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=PATIENCE)


@pytest.fixture
def console_node(tmp_path: Path) -> Path:
    return init_console_node(tmp_path / "node")


@pytest.fixture
async def console(console_node: Path) -> AsyncIterator[Console]:
    async for c in serve_console(console_node):
        yield c
