"""Public listener benchmark: full tiles to 20 concurrent readers over TLS on loopback.

    .venv/bin/python benchmarks/bench_public.py [--entries 100000] [--readers 20] [--requests 200]

A node with ``--entries`` entries runs ``hashmesh serve --no-sync`` in a
child process with ``[public] listen`` set (as an operator would run it).
``--readers`` clients, each on its own keep-alive TLS connection trusting
the node's certificate and presenting none, fetch random full tiles (levels
0 and 1) ``--requests`` times each, all at once, after one warm-up pass over
every tile. Each request's latency is timed from the client's side; the
figures are p50, p99 and max over all requests, and the throughput.

Baseline of the same run: the same clients against a minimal aiohttp TLS
server in another child process that answers every GET with a constant
8 KiB body (no routing, parsing, rate limit or cache), so what the machine
and the client cost is visible beside what the listener adds. The target
(issue 13) is p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.config import load_config  # noqa: E402
from node.ledger import Ledger  # noqa: E402
from node.ledger.hashlist import HashListReader  # noqa: E402
from node.ledger.provision import init_node  # noqa: E402
from node.tls import public_server_ssl_context  # noqa: E402
from protocol.tiles import tiles_for_size  # noqa: E402

TARGET_P99_MS = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def baseline_server(port: int, cert: str, key: str) -> None:
    """Child: a minimal TLS server answering every GET with 8 KiB."""
    body = os.urandom(8192)

    async def answer(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        ssl_context=public_server_ssl_context(Path(cert), Path(key)),
        access_log=None,
        print=None,
    )


async def wait_listening(port: int, ctx: ssl.SSLContext, deadline: float) -> None:
    while True:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return


async def load(
    url: str,
    paths: list[str],
    ctx: ssl.SSLContext,
    readers: int,
    requests: int,
    pace: float | None = None,
) -> tuple[list[float], float]:
    """Latencies (s) of ``readers * requests`` GETs, and the wall time of the run.

    Without ``pace`` each reader sends its next request as soon as the last
    is answered (closed loop: latency is mostly queueing behind the other
    readers). With it, each reader sends ``pace`` requests per second at
    most, at its own random phase (latency is mostly service time).
    """
    rng = random.Random(2)
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=1))
        for _ in range(readers)
    ]
    try:
        # Warm-up: every connection opened, every tile read once.
        for i, path in enumerate(paths):
            async with sessions[i % readers].get(url + path) as resp:
                assert resp.status == 200, (path, resp.status)
                await resp.read()
        await asyncio.gather(*(s.get(url + paths[0]) for s in sessions))
        latencies: list[float] = []

        async def reader(session: aiohttp.ClientSession, picks: list[str]) -> None:
            loop = asyncio.get_running_loop()
            start = loop.time() + rng.random() / pace if pace else 0.0
            for k, path in enumerate(picks):
                if pace:
                    await asyncio.sleep(max(0.0, start + k / pace - loop.time()))
                started = time.perf_counter()
                async with session.get(url + path) as resp:
                    body = await resp.read()
                latencies.append(time.perf_counter() - started)
                assert resp.status == 200
                assert len(body) == 8192

        plans = [[rng.choice(paths) for _ in range(requests)] for _ in range(readers)]
        started = time.perf_counter()
        await asyncio.gather(*(reader(s, p) for s, p in zip(sessions, plans, strict=True)))
        return latencies, time.perf_counter() - started
    finally:
        for s in sessions:
            await s.close()


def summary(name: str, latencies: list[float], wall: float) -> str:
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return (
        f"  {name:<26} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  max {ordered[-1] * 1000:7.2f} ms"
        f"  {len(latencies) / wall:8,.0f} req/s"
    )


async def run(args: argparse.Namespace, work: Path) -> None:
    node_dir = work / "node"
    init_node(node_dir, "bench.example/hashmesh", listen=f"127.0.0.1:{free_port()}")
    rng = random.Random(1)
    reader = HashListReader(fmt="lines", default_type="sha256", extra_labels=["src:bench"])
    with Ledger.open(node_dir) as ledger:
        ledger.import_lines(
            reader.read(iter([f"{rng.getrandbits(256):064x}\n" for _ in range(args.entries)]))
        )
    port = free_port()
    config_path = node_dir / "config.toml"
    config_path.write_text(
        config_path.read_text(encoding="utf-8") + f'\n[public]\nlisten = "127.0.0.1:{port}"\n'
        "rate = 1000000\nburst = 1000000\n",
        encoding="utf-8",
    )
    config = load_config(node_dir)
    ctx = ssl.create_default_context(cafile=str(config.tls_cert_path))
    paths = ["/" + t.to_path() for t in tiles_for_size(args.entries) if t.is_full]
    print(
        f"hashmesh public listener benchmark: {args.entries:,} entries, {len(paths)} full "
        f"tiles, {args.readers} readers x {args.requests} requests, python "
        f"{sys.version.split()[0]}"
    )
    children: list[asyncio.subprocess.Process] = []
    try:
        children.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "node",
                "--dir",
                str(node_dir),
                "serve",
                "--no-sync",
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
        base_port = free_port()
        children.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--baseline-server",
                str(base_port),
                str(config.tls_cert_path),
                str(config.tls_key_path),
                cwd=ROOT,
            )
        )
        deadline = time.monotonic() + 60
        await wait_listening(port, ctx, deadline)
        await wait_listening(base_port, ctx, deadline)
        targets = (
            ("baseline (constant 8 KiB)", f"https://127.0.0.1:{base_port}"),
            ("public listener, full tile", f"https://127.0.0.1:{port}"),
        )
        for _ in range(args.rounds):
            for pace in (None, args.pace):
                mode = "closed loop" if pace is None else f"{pace:g} req/s per reader"
                print(f" {mode}:")
                for name, url in targets:
                    lat, wall = await load(url, paths, ctx, args.readers, args.requests, pace)
                    print(summary(name, lat, wall))
        print(f"  target: p99 <= {TARGET_P99_MS:g} ms")
    finally:
        for child in children:
            child.terminate()
            await child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pace", type=float, default=10.0, help="req/s per reader, paced runs")
    parser.add_argument("--baseline-server", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        port, cert, key = args.baseline_server
        baseline_server(int(port), cert, key)
        return
    with tempfile.TemporaryDirectory(prefix="hashmesh-bench-public-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
