"""``run_server``: real node directory, real port, signals, live trust updates."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp

from node.api.server import RunningServer, run_server
from node.config import load_config
from node.ledger import Ledger
from node.tls import client_ssl_context
from protocol.entry import AddEntry
from tests.api.conftest import ORIGIN, add_peer, make_identity, signal_value
from tests.waiting import PATIENCE, eventually


async def _start(node_dir: Path, **kwargs: object) -> tuple[asyncio.Task[None], RunningServer]:
    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_server(node_dir, "127.0.0.1:0", sync=False, on_started=started.set_result, **kwargs)  # type: ignore[arg-type]
    )
    done, _ = await asyncio.wait(
        {task, started}, timeout=PATIENCE, return_when=asyncio.FIRST_COMPLETED
    )
    assert started in done, task.exception() if task.done() else "server did not start"
    return task, started.result()


async def test_serves_until_sigterm_and_announces_cli_writes(
    node_dir: Path, tmp_path: Path
) -> None:
    peer = make_identity(tmp_path, "peer")
    add_peer(node_dir, peer, "peer")
    server_pem = load_config(node_dir).tls_cert_path.read_text(encoding="ascii")
    task, server = await _start(node_dir)
    ctx = client_ssl_context(peer.cert_path, peer.key_path, server_pem)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async with s.get(server.url + "/v1/health") as resp:
            assert resp.status == 200
            assert (await resp.json())["origin"] == ORIGIN
        async with s.get(server.url + "/v1/events") as events:
            await asyncio.wait_for(events.content.readuntil(b"\n\n"), PATIENCE)
            # a write by "the CLI" (another connection) is announced
            with Ledger.open(node_dir) as ledger:
                size = ledger.append(
                    [AddEntry.create(signal_type="sha256", value=signal_value(99))]
                ).checkpoint.size
            block = await asyncio.wait_for(events.content.readuntil(b"\n\n"), PATIENCE)
            assert f'"size":{size}'.encode() in block
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(task, PATIENCE)
    assert task.done() and task.exception() is None


async def test_peer_added_by_cli_while_serving_can_connect(node_dir: Path, tmp_path: Path) -> None:
    stop = asyncio.Event()
    task, server = await _start(node_dir, stop=stop)
    try:
        late = make_identity(tmp_path, "late")
        server_pem = load_config(node_dir).tls_cert_path.read_text(encoding="ascii")
        ctx = client_ssl_context(late.cert_path, late.key_path, server_pem)
        add_peer(node_dir, late, "auditor")

        async def health() -> int | None:
            try:
                async with (
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
                    s.get(server.url + "/v1/health") as resp,
                ):
                    return resp.status
            except aiohttp.ClientError:
                return None  # refused: the server has not noticed the new peer yet

        assert await eventually(health, what="the late peer to be accepted") == 200
    finally:
        stop.set()
        await asyncio.wait_for(task, PATIENCE)


async def test_sync_factory_runs_for_the_life_of_the_server(node_dir: Path) -> None:
    import contextlib
    from collections.abc import AsyncIterator

    from node.ledger.database import Database
    from node.ledger.events import CheckpointHub

    log: list[str] = []

    @contextlib.asynccontextmanager
    async def factory(db: Database, hub: CheckpointHub) -> AsyncIterator[object]:
        log.append(f"start {await db.read(lambda ledger: ledger.own_log.origin)}")
        yield None
        log.append("stop")

    stop = asyncio.Event()
    task, _server = await _start(node_dir, stop=stop, sync_factory=factory)
    assert log == [f"start {ORIGIN}"]
    stop.set()
    await asyncio.wait_for(task, PATIENCE)
    assert log == [f"start {ORIGIN}", "stop"]
