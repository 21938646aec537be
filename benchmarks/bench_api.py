"""API benchmark: how soon slow-header clients are cut off, and honest latency meanwhile.

    .venv/bin/python benchmarks/bench_api.py [--slow 30] [--deadline 1.0] [--honest 10]

A real node serves its API over mutual TLS in this process (``make_app`` and
``start_server``, as ``hashmesh serve`` does, with the keep-alive deadline
set to ``--deadline``). ``--slow`` clients holding a valid certificate each
send a request head one header line every 0.2 s, never finishing it; once
they are all connected, an honest client of the same peer asks
``/v1/health`` ``--honest`` times, 0.1 s apart. Prints when the server closed
the slow connections (seconds after each opened: min, median, max) and the
honest requests' latency (median, max).

``tests/api/test_slow_clients.py`` checks the behaviour (every slow
connection is closed, honest requests are answered) without timing it;
this script gives the figures quoted in ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.api.app import make_app  # noqa: E402
from node.api.server import start_server  # noqa: E402
from node.api.state import ApiLimits  # noqa: E402
from node.cli import main as cli  # noqa: E402
from node.config import load_config  # noqa: E402
from node.ledger.database import Database  # noqa: E402
from node.ledger.events import CheckpointHub  # noqa: E402
from node.ledger.provision import init_node  # noqa: E402
from node.tls import client_ssl_context, server_ssl_context  # noqa: E402

SERVER = "hotline-a.example/hashmesh"
CLIENT = "hotline-b.example/hashmesh"
TRICKLE = 0.2


def add_peer(node_dir: Path, peer_dir: Path, base: Path) -> None:
    """``node_dir`` adds ``peer_dir`` as a peer, with the CLI's own commands."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli(["--dir", str(peer_dir), "peer", "card", "--url", "https://127.0.0.1:1"])
    assert status == 0
    card = base / "peer.card.json"
    card.write_text(out.getvalue(), encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = cli(["--dir", str(node_dir), "peer", "add", str(card), "--role", "peer"])
    assert status == 0


async def slow_client(
    host: str, port: int, ctx: ssl.SSLContext, opened: asyncio.Queue[None]
) -> float:
    """Seconds from connecting until the server closed a head that never ends."""
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    started = time.perf_counter()
    try:
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await writer.drain()
        opened.put_nowait(None)
        while True:
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), timeout=TRICKLE) == b"":
                    return time.perf_counter() - started
            except TimeoutError:
                continue
    except ConnectionError:
        return time.perf_counter() - started
    finally:
        writer.close()


async def run(slow: int, deadline: float, honest: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        server_dir, client_dir = base / "a", base / "b"
        init_node(server_dir, SERVER, listen="127.0.0.1:0")
        init_node(client_dir, CLIENT)
        add_peer(server_dir, client_dir, base)
        server_config, client_config = load_config(server_dir), load_config(client_dir)
        client_pem = client_config.tls_cert_path.read_text(encoding="ascii")
        server_pem = server_config.tls_cert_path.read_text(encoding="ascii")
        db = await Database.open(server_dir)
        try:
            ctx = server_ssl_context(
                server_config.tls_cert_path, server_config.tls_key_path, [client_pem]
            )
            app = make_app(db, CheckpointHub(), origin=SERVER, limits=ApiLimits())
            server = await start_server(app, ctx, keepalive_timeout=deadline)
            try:
                client_ctx = client_ssl_context(
                    client_config.tls_cert_path, client_config.tls_key_path, server_pem
                )
                opened: asyncio.Queue[None] = asyncio.Queue()
                tasks = [
                    asyncio.create_task(slow_client(server.host, server.port, client_ctx, opened))
                    for _ in range(slow)
                ]
                for _ in range(slow):
                    await opened.get()
                latencies = []
                connector = aiohttp.TCPConnector(ssl=client_ctx)
                async with aiohttp.ClientSession(connector=connector) as session:
                    for _ in range(honest):
                        started = time.perf_counter()
                        async with session.get(server.url + "/v1/health") as resp:
                            assert resp.status == 200
                        latencies.append(time.perf_counter() - started)
                        await asyncio.sleep(0.1)
                held = sorted(await asyncio.gather(*tasks))
            finally:
                await server.close()
        finally:
            await db.close()
    print(f"{slow} slow-header clients, keep-alive deadline {deadline:g} s")
    print(
        f"closed after: min {held[0]:.2f} s, median {statistics.median(held):.2f} s, "
        f"max {held[-1]:.2f} s"
    )
    print(
        f"{honest} honest /v1/health meanwhile: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slow", type=int, default=30, help="slow-header clients")
    parser.add_argument("--deadline", type=float, default=1.0, help="keep-alive deadline, s")
    parser.add_argument("--honest", type=int, default=10, help="honest requests")
    args = parser.parse_args()
    asyncio.run(run(args.slow, args.deadline, args.honest))


if __name__ == "__main__":
    main()
