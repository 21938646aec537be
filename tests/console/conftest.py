"""Fixtures for console tests: a real node's database, the console served on 127.0.0.1."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from node.api.console import ConsoleSettings, make_console_app
from node.config import load_config
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.provision import init_node
from protocol.entry import AddEntry

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
    """A running console: its base URL and the database behind it."""

    base: str
    db: Database
    node_dir: Path

    def url(self, page: str) -> str:
        return f"{self.base}{PREFIX}/{page}"


async def serve_console(node_dir: Path, *, token: str | None = None) -> AsyncIterator[Console]:
    """Serve the console of ``node_dir`` on 127.0.0.1 (random port), mounted at /console."""
    db = await Database.open(node_dir)
    try:
        root = web.Application()
        root.add_subapp(
            PREFIX + "/",
            make_console_app(
                db,
                ConsoleSettings(
                    origin=load_config(node_dir).origin, token=token, node_dir=node_dir
                ),
            ),
        )
        runner = web.AppRunner(root, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            yield Console(f"http://{host}:{port}", db, node_dir)
        finally:
            await runner.cleanup()
    finally:
        await db.close()


@pytest.fixture
def console_node(tmp_path: Path) -> Path:
    return init_console_node(tmp_path / "node")


@pytest.fixture
async def console(console_node: Path) -> AsyncIterator[Console]:
    async for c in serve_console(console_node):
        yield c
