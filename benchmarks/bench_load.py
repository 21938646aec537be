"""Load benchmark: do light requests wait for heavy ones? (issue 14 item 5)

    .venv/bin/python benchmarks/bench_load.py              # 20 clients, 60 s (the issue's run)
    .venv/bin/python benchmarks/bench_load.py --duration 20 --clients 10   # a quick look

A real node (``--entries`` listed sha256 hashes) runs as ``hashmesh serve``
in a child process, as an operator runs it. A second child runs the heavy
load: ``--clients`` clients over mutual TLS, half posting bulk matches of
``--match-size`` hashes (half of them listed), half fetching pages of
``--page`` entries at random offsets, each client one request at a time, for
``--duration`` seconds. Meanwhile this process probes ``GET /v1/checkpoint``
and ``GET /v1/health`` every ``--probe-interval`` seconds (its own peer
certificate and keep-alive connection) and samples the server's RSS (its
worker processes included: ``[api] workers``, one per core unless
``--workers`` says otherwise; ``--workers 0`` is the one-process server).

Printed: the probes' p50/p99/max, alone (``--baseline`` seconds before the
load, the same-run reference) and under load; the load's requests by status
(503s are the heavy lane's deliberate refusals; any other 5xx is a failure);
the server's RSS at the end of the warm-up (``--warmup`` seconds into the
load) and at the end, and its peaks in the first and second half after the
warm-up (a leak shows as climbing peaks; one sample may land in a burst).
Targets: p99 <= 50 ms, 0 unexpected 5xx, RSS growth after warm-up < 10 %;
each is printed with PASS or FAIL, then one ``RESULT:`` line. The machine's
load average is printed too: figures from a loaded machine mostly measure
waiting for a core. ``--json`` prints the figures as JSON too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.cli import main as cli  # noqa: E402
from node.config import load_config  # noqa: E402
from node.ledger import Ledger  # noqa: E402
from node.ledger.provision import init_node  # noqa: E402
from node.tls import client_ssl_context  # noqa: E402
from protocol.entry import AddEntry  # noqa: E402
from tests.adversary.served_process import serve_process  # noqa: E402

_SELF = Path(__file__).resolve()
SERVER = "hotline-a.example/hashmesh"


def value(i: int) -> str:
    return f"{i:064x}"


def add_peer(node_dir: Path, peer_dir: Path, base: Path) -> None:
    """``node_dir`` adds ``peer_dir`` as a peer, with the CLI's own commands."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli(["--dir", str(peer_dir), "peer", "card", "--url", "https://127.0.0.1:1"])
    assert status == 0
    card = base / f"{peer_dir.name}.card.json"
    card.write_text(out.getvalue(), encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = cli(["--dir", str(node_dir), "peer", "add", str(card), "--role", "peer"])
    assert status == 0


def client_ctx(identity: Path, server_dir: Path) -> ssl.SSLContext:
    mine = load_config(identity)
    server_pem = load_config(server_dir).tls_cert_path.read_text(encoding="ascii")
    return client_ssl_context(mine.tls_cert_path, mine.tls_key_path, server_pem)


def quantiles(samples: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds."""
    if not samples:
        return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


# -- the heavy load (a child process) ------------------------------------------


async def heavy_client(
    session: aiohttp.ClientSession,
    url: str,
    kind: str,
    args: argparse.Namespace,
    deadline: float,
    statuses: Counter[str],
) -> None:
    rng = random.Random(hash((kind, id(session), time.time())))
    while time.monotonic() < deadline:
        try:
            if kind == "match":
                # Half listed, half not: both paths of the matcher run.
                base = rng.randrange(args.entries)
                hashes = [
                    {"type": "sha256", "value": value((base + i * 2) % (2 * args.entries))}
                    for i in range(args.match_size)
                ]
                request = session.post(url + "/v1/match", json={"hashes": hashes})
            else:
                start = rng.randrange(max(1, args.entries - args.page))
                request = session.get(
                    f"{url}/v1/entries?origin={SERVER}&start={start}&end={start + args.page}"
                )
            async with request as r:
                await r.read()
                statuses[f"{kind} {r.status}"] += 1
                if r.status == 503:
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
        except (aiohttp.ClientError, OSError) as e:
            statuses[f"{kind} {type(e).__name__}"] += 1


async def load_main(args: argparse.Namespace) -> None:
    ctx = client_ctx(Path(args.identity), Path(args.server_dir))
    deadline = time.monotonic() + args.duration
    statuses: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(ssl=ctx, limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        print("ready", flush=True)
        await asyncio.gather(
            *(
                heavy_client(
                    session,
                    args.url,
                    "match" if i % 2 == 0 else "entries",
                    args,
                    deadline,
                    statuses,
                )
                for i in range(args.clients)
            )
        )
    print(json.dumps(dict(statuses)), flush=True)


# -- the run -------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the server's worker processes)."""
    total = 0
    for one in (pid, *children(pid)):
        try:
            status = Path(f"/proc/{one}/status").read_text(encoding="ascii")
        except OSError:
            continue  # a worker that just ended
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(c) for c in (task / "children").read_text(encoding="ascii").split())
    return found


async def probe(
    session: aiohttp.ClientSession, url: str, until: float, interval: float
) -> tuple[dict[str, list[float]], Counter[str]]:
    times: dict[str, list[float]] = {"checkpoint": [], "health": []}
    statuses: Counter[str] = Counter()
    paths = {"checkpoint": f"/v1/checkpoint?origin={SERVER}", "health": "/v1/health"}
    while time.monotonic() < until:
        for name, path in paths.items():
            started = time.perf_counter()
            async with session.get(url + path) as r:
                await r.read()
            times[name].append(time.perf_counter() - started)
            statuses[f"{name} {r.status}"] += 1
        await asyncio.sleep(interval)
    return times, statuses


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        server_dir, load_dir, probe_dir = base / "a", base / "load", base / "probe"
        init_node(server_dir, SERVER, listen="127.0.0.1:0")
        settings = {"workers": args.workers, "worker_nice": args.worker_nice}
        chosen = "".join(f"{k} = {v}\n" for k, v in settings.items() if v is not None)
        if chosen:
            with (server_dir / "config.toml").open("a", encoding="utf-8") as config:
                config.write(f"\n[api]\n{chosen}")
        init_node(load_dir, "load.example/hashmesh")
        init_node(probe_dir, "probe.example/hashmesh")
        with Ledger.open(server_dir) as ledger:
            for at in range(0, args.entries, 10_000):
                stop = min(at + 10_000, args.entries)
                ledger.append(
                    [AddEntry.create(signal_type="sha256", value=value(i)) for i in range(at, stop)]
                )
        add_peer(server_dir, load_dir, base)
        add_peer(server_dir, probe_dir, base)
        served = await serve_process(server_dir)
        url = served.url
        try:
            ctx = client_ctx(probe_dir, server_dir)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
                await probe(session, url, time.monotonic() + 2, args.probe_interval)  # warm
                alone, _ = await probe(
                    session, url, time.monotonic() + args.baseline, args.probe_interval
                )
                load = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(_SELF),
                    "--worker",
                    "--url",
                    url,
                    "--identity",
                    str(load_dir),
                    "--server-dir",
                    str(server_dir),
                    "--clients",
                    str(args.clients),
                    "--duration",
                    str(args.duration),
                    "--entries",
                    str(args.entries),
                    "--match-size",
                    str(args.match_size),
                    "--page",
                    str(args.page),
                    stdout=asyncio.subprocess.PIPE,
                )
                assert load.stdout is not None
                assert (await load.stdout.readline()).strip() == b"ready"
                started = time.monotonic()
                rss: list[tuple[float, int]] = []

                workers: set[int] = set()

                async def sample() -> None:
                    while True:
                        rss.append((time.monotonic() - started, rss_kib(served.proc.pid)))
                        workers.update(children(served.proc.pid))
                        await asyncio.sleep(1.0)

                sampler = asyncio.create_task(sample())
                loaded, probe_statuses = await probe(
                    session, url, started + args.duration, args.probe_interval
                )
                statuses = json.loads((await load.stdout.readline()) or b"{}")
                await load.wait()
                sampler.cancel()
        finally:
            await served.stop()
    warm = [kib for at, kib in rss if at >= args.warmup]
    rss_warm, rss_end = (warm[0], warm[-1]) if warm else (0, 0)
    # A leak shows as peaks that keep climbing; one sample lands anywhere in
    # a burst (a 10,000-hash match allocates tens of MiB for a moment).
    half = len(warm) // 2
    peak_first, peak_second = (max(warm[:half]), max(warm[half:])) if half else (0, 0)
    unexpected_5xx = sum(
        n for key, n in statuses.items() if key.split()[-1].startswith("5") and "503" not in key
    )
    unexpected_5xx += sum(n for key, n in probe_statuses.items() if not key.endswith(" 200"))
    return {
        "load_average_start": [round(x, 2) for x in load_before],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "server_workers": len(workers),
        "clients": args.clients,
        "duration_s": args.duration,
        "entries": args.entries,
        "match_size": args.match_size,
        "page": args.page,
        "alone": {name: quantiles(t) for name, t in alone.items()},
        "under_load": {name: quantiles(t) for name, t in loaded.items()},
        "load_statuses": statuses,
        "probe_statuses": dict(probe_statuses),
        "unexpected_5xx": unexpected_5xx,
        "rss_kib_after_warmup": rss_warm,
        "rss_kib_end": rss_end,
        "rss_kib_max": max((kib for _at, kib in rss), default=0),
        "rss_growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 1) if rss_warm else None,
        "rss_peak_kib_first_half": peak_first,
        "rss_peak_kib_second_half": peak_second,
        "rss_peak_growth_pct": (
            round(100 * (peak_second - peak_first) / peak_first, 1) if peak_first else None
        ),
    }


def report(result: dict[str, Any]) -> None:
    print(
        f"load average (1, 5, 15 min) {result['load_average_start']} at the start, "
        f"{result['load_average_end']} at the end; server worker processes seen: "
        f"{result['server_workers']}"
    )
    print(
        f"{result['clients']} clients x {result['duration_s']} s: bulk match of "
        f"{result['match_size']:,} hashes / entry pages of {result['page']:,}, "
        f"{result['entries']:,} entries"
    )
    for name in ("checkpoint", "health"):
        a, u = result["alone"][name], result["under_load"][name]
        print(
            f"  GET /v1/{name:<10} alone p50 {a['p50_ms']:6.1f} p99 {a['p99_ms']:6.1f} ms | "
            f"under load p50 {u['p50_ms']:6.1f} p99 {u['p99_ms']:6.1f} max {u['max_ms']:6.1f} ms"
            f" ({u['n']} probes)"
        )
    print(f"  load requests: {dict(sorted(result['load_statuses'].items()))}")
    print(f"  5xx other than deliberate 503s: {result['unexpected_5xx']}")
    print(
        f"  server RSS (with its workers): {result['rss_kib_after_warmup'] / 1024:.1f} MiB after warm-up, "
        f"{result['rss_kib_end'] / 1024:.1f} MiB at the end "
        f"(growth {result['rss_growth_pct']} %), max {result['rss_kib_max'] / 1024:.1f} MiB; "
        f"peak after warm-up {result['rss_peak_kib_first_half'] / 1024:.1f} MiB in the first "
        f"half, {result['rss_peak_kib_second_half'] / 1024:.1f} MiB in the second "
        f"({result['rss_peak_growth_pct']} %)"
    )


P99_TARGET_MS = 50.0
RSS_GROWTH_TARGET_PCT = 10.0


def verdicts(result: dict[str, Any]) -> list[tuple[str, bool]]:
    """The issue's targets (issue 14 item 5), each with whether this run met it."""
    checks = [
        (
            f"GET /v1/{name} p99 under load {result['under_load'][name]['p99_ms']:.1f} ms "
            f"<= {P99_TARGET_MS:g} ms",
            result["under_load"][name]["n"] > 0
            and result["under_load"][name]["p99_ms"] <= P99_TARGET_MS,
        )
        for name in ("checkpoint", "health")
    ]
    checks.append(
        (
            f"5xx other than deliberate 503s: {result['unexpected_5xx']} == 0",
            result["unexpected_5xx"] == 0,
        )
    )
    growth = result["rss_peak_growth_pct"]
    checks.append(
        (
            f"server RSS peak growth after warm-up {growth} % < {RSS_GROWTH_TARGET_PCT:g} %",
            growth is not None and growth < RSS_GROWTH_TARGET_PCT,
        )
    )
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--baseline", type=float, default=10.0)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--match-size", type=int, default=10_000)
    parser.add_argument("--page", type=int, default=1_000)
    parser.add_argument("--probe-interval", type=float, default=0.05)
    parser.add_argument(
        "--workers",
        type=int,
        help="the server's [api] workers (default: its own default, one per core; "
        "0: matching in the server's threads)",
    )
    parser.add_argument(
        "--worker-nice", type=int, help="the server's [api] worker_nice (default: its own, 10)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    # The load child's own arguments.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--identity", help=argparse.SUPPRESS)
    parser.add_argument("--server-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(load_main(args))
        return
    result = asyncio.run(run(args))
    report(result)
    print("targets (issue 14 item 5):")
    checks = verdicts(result)
    for text, met in checks:
        print(f"  {'PASS' if met else 'FAIL'}  {text}")
    print(f"RESULT: {'PASS' if all(met for _text, met in checks) else 'FAIL'}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
