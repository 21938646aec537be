"""Bulk matching through the API: one server process against worker processes (issue 18 item 3).

    .venv/bin/python benchmarks/bench_match_api.py --node /var/tmp/hashmesh-workers/10M/a \\
        --listed-dir /var/tmp/hashmesh-workers/10M          # the issue's run: a 10M node
    .venv/bin/python benchmarks/bench_match_api.py --entries 200000   # builds a small node

A node (``--node DIR``, reused; or one of ``--entries`` entries built in a
temporary folder: 80 % random sha256, 20 % random PDQ of quality 100) is
served by ``hashmesh serve --no-sync`` in a child process, as an operator
runs it, once per ``--workers`` value (``[api] workers`` written into its
``config.toml`` before each start, with ``worker_nice`` 0 unless
``--worker-nice`` says otherwise, so the workers compete for the cores as the
one-process server does; ``0`` workers is the one-process server that
matches in its reader threads, the same-run baseline). This process is a
subscriber on loopback mutual TLS. Per server and per kind it sends
``--requests`` batches over 1, 2 and 4 keep-alive connections at once:

* exact: 10,000 sha256 queries per request, 10 % listed;
* pdq: 1,000 PDQ queries per request at distance 31, 10 % planted within
  0-31 bits of a listed hash.

Listed values come from ``--listed-dir`` (``sample-sha256.txt`` and
``sample-pdq.txt``, one value a line, as ``bench_scale.py`` writes them) or
are read from the node itself. Bodies are built before timing; each
response is parsed and its ``checked`` count checked. Printed per run:
lookups/s, request p50 and p99, and the CPU time the server process and its
workers spent per request (``/proc``), so a missed target comes with where
the time went. The machine's load average is printed at each start: on a
loaded machine the figures measure waiting for a core.

Targets (issue 18 item 3, at 10M): >= 200,000 exact and >= 10,000 PDQ lookups/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_load  # noqa: E402

EXACT_BATCH = 10_000
PDQ_BATCH = 1_000
HIT_RATE = 0.1
TARGETS = {"exact": 200_000, "pdq": 10_000}
_BLOCK = "# bench_match_api.py: worker processes of this run\n"


def _flip(value: str, rng: random.Random, bits: int) -> str:
    x = int(value, 16)
    for b in rng.sample(range(256), bits):
        x ^= 1 << b
    return f"{x:064x}"


def listed_values(node_dir: Path, listed_dir: Path | None) -> dict[str, list[str]]:
    """Listed sha256 and PDQ values: from the sample files, or read from the node."""
    if listed_dir is not None:
        return {
            kind: (listed_dir / f"sample-{kind}.txt").read_text(encoding="ascii").split()[:20_000]
            for kind in ("sha256", "pdq")
        }
    from node.ledger import Ledger
    from protocol.entry import AddEntry, parse_entry

    found: dict[str, list[str]] = {"sha256": [], "pdq": []}
    rng = random.Random(5)
    with Ledger.open(node_dir, read_only=True) as ledger:
        log = ledger.own_log
        size = ledger.store.entry_count(log.log_id)
        for _ in range(200):
            start = rng.randrange(max(1, size - 100))
            for _idx, data, _leaf in ledger.entries(log, start, min(size, start + 100)):
                entry = parse_entry(bytes(data))
                if isinstance(entry, AddEntry) and entry.signal_type in found:
                    found[entry.signal_type].append(entry.value)
    return found


def make_bodies(listed: dict[str, list[str]], requests: int) -> dict[str, list[bytes]]:
    rng = random.Random(7)
    bodies: dict[str, list[bytes]] = {"exact": [], "pdq": []}
    for _ in range(requests):
        exact = [
            {
                "type": "sha256",
                "value": rng.choice(listed["sha256"])
                if rng.random() < HIT_RATE
                else f"{rng.getrandbits(256):064x}",
            }
            for _ in range(EXACT_BATCH)
        ]
        bodies["exact"].append(json.dumps({"hashes": exact}).encode())
        near = [
            {
                "type": "pdq",
                "value": _flip(rng.choice(listed["pdq"]), rng, rng.randrange(32))
                if rng.random() < HIT_RATE
                else f"{rng.getrandbits(256):064x}",
            }
            for _ in range(PDQ_BATCH)
        ]
        bodies["pdq"].append(json.dumps({"hashes": near, "max_distance": 31}).encode())
    return bodies


def set_workers(node_dir: Path, workers: int, nice: int) -> None:
    """Write ``[api] workers`` and ``worker_nice`` into the node's config (this script's block)."""
    path = node_dir / "config.toml"
    text = path.read_text(encoding="utf-8").split(_BLOCK)[0]
    if re.search(r"^\[api\]", text, re.MULTILINE):
        raise SystemExit(f"{path} has an [api] table already; give a node without one")
    path.write_text(
        f"{text}{_BLOCK}[api]\nworkers = {workers}\nworker_nice = {nice}\n", encoding="utf-8"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (and, for the server, of its worker processes)."""
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / ticks


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    per: int,
    connections: int,
    pids: tuple[int, list[int]],
) -> dict[str, Any]:
    todo = list(range(len(bodies)))
    times: list[float] = []

    async def one() -> None:
        while todo:
            body = bodies[todo.pop()]
            t0 = time.perf_counter()
            async with session.post(
                url + "/v1/match", data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                raw = await resp.read()
                assert resp.status == 200, (resp.status, raw[:200])
            times.append(time.perf_counter() - t0)
            assert json.loads(raw)["checked"] == per

    server, workers = pids
    cpu0 = cpu_seconds(server), sum(cpu_seconds(w) for w in workers)
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    wall = time.perf_counter() - started
    cpu1 = cpu_seconds(server), sum(cpu_seconds(w) for w in workers)
    ordered = sorted(times)
    return {
        "connections": connections,
        "per_s": round(len(times) * per / wall),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "server_cpu_ms_per_request": round((cpu1[0] - cpu0[0]) * 1000 / len(times), 1),
        "workers_cpu_ms_per_request": round((cpu1[1] - cpu0[1]) * 1000 / len(times), 1),
    }


async def serve_and_measure(
    node_dir: Path,
    client: Path,
    workers: int,
    bodies: dict[str, list[bytes]],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    from tests.adversary.served_process import serve_process

    set_workers(node_dir, workers, args.worker_nice)
    ctx = bench_load.client_ctx(client, node_dir)
    started = time.perf_counter()
    served = await serve_process(node_dir)
    rows: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=0),
            timeout=aiohttp.ClientTimeout(total=600),
        ) as session:
            probe = bodies["pdq"][0]
            while True:  # ready: a PDQ request answered (the index loaded)
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.post(served.url + "/v1/match", data=probe) as resp:
                        if resp.status == 200:
                            break
                if not served.alive:
                    raise SystemExit("hashmesh serve ended:\n" + "".join(served.log))
                await asyncio.sleep(0.1)
            ready = time.perf_counter() - started
            pool = bench_load.children(served.proc.pid)
            print(
                f"\n[api] workers = {workers}: ready in {ready:.1f} s, "
                f"{len(pool)} worker processes; load average {os.getloadavg()}",
                flush=True,
            )
            for kind in args.kinds.split(","):
                per = EXACT_BATCH if kind == "exact" else PDQ_BATCH
                await drive(session, served.url, bodies[kind][:2], per, 2, (0, []))  # warm up
                for connections in (int(c) for c in args.connections.split(",")):
                    row = await drive(
                        session,
                        served.url,
                        bodies[kind],
                        per,
                        connections,
                        (served.proc.pid, pool),
                    )
                    row = {"workers": workers, "kind": kind, **row}
                    rows.append(row)
                    print("  " + json.dumps(row), flush=True)
    finally:
        await served.stop()
    return rows


def build_node(base: Path, entries: int) -> Path:
    from node.ledger import Ledger
    from node.ledger.provision import init_node
    from protocol.entry import AddEntry

    node_dir = base / "node"
    init_node(node_dir, "bench-match-api.example/hashmesh", listen="127.0.0.1:0")
    rng = random.Random(11)
    with Ledger.open(node_dir) as ledger:
        sha = AddEntry.maker(signal_type="sha256")
        for at in range(0, entries, 50_000):
            n = min(50_000, entries - at)
            batch = [sha(f"{rng.getrandbits(256):064x}") for _ in range(n * 4 // 5)]
            batch += [
                AddEntry.create(
                    signal_type="pdq", value=f"{rng.getrandbits(256):064x}", quality=100
                )
                for _ in range(n - len(batch))
            ]
            ledger.append(batch)
    return node_dir


async def run(args: argparse.Namespace, base: Path) -> list[dict[str, Any]]:
    from node.ledger.provision import init_node

    node_dir = Path(args.node) if args.node else build_node(base, args.entries)
    listed = listed_values(node_dir, Path(args.listed_dir) if args.listed_dir else None)
    bodies = make_bodies(listed, args.requests)
    client = base / "client"
    init_node(client, f"client-{time.time_ns()}.example/hashmesh")
    bench_load.add_peer(node_dir, client, base)
    rows: list[dict[str, Any]] = []
    for workers in (int(w) for w in args.workers.split(",")):
        rows += await serve_and_measure(node_dir, client, workers, bodies, args)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| kind | workers | connections | lookups/s | vs workers=0 | request p50 ms "
        "| p99 ms | server CPU ms/request | workers CPU ms/request |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = {(r["kind"], r["connections"]): r["per_s"] for r in rows if r["workers"] == 0}
    for r in rows:
        ratio = base.get((r["kind"], r["connections"]))
        shown = f"{r['per_s'] / ratio:.2f}x" if ratio else "-"
        print(
            f"| {r['kind']} | {r['workers']} | {r['connections']} | {r['per_s']:,} | {shown} "
            f"| {r['p50_ms']} | {r['p99_ms']} | {r['server_cpu_ms_per_request']} "
            f"| {r['workers_cpu_ms_per_request']} |"
        )
    for kind, target in TARGETS.items():
        best = max((r["per_s"] for r in rows if r["kind"] == kind and r["workers"]), default=None)
        if best is not None:
            verdict = "PASS" if best >= target else "FAIL"
            print(f"{verdict}  {kind}: best {best:,} lookups/s with workers, target >= {target:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", help="an existing node to serve (its config.toml is edited)")
    parser.add_argument("--listed-dir", help="folder with sample-sha256.txt and sample-pdq.txt")
    parser.add_argument("--entries", type=int, default=200_000, help="size of a built node")
    parser.add_argument("--workers", default=f"0,{len(os.sched_getaffinity(0))}")
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="[api] worker_nice of the runs (default 0: the workers compete for the cores "
        "as the one-process server does; serve's own default is 10)",
    )
    parser.add_argument("--connections", default="1,2,4")
    parser.add_argument("--kinds", default="exact,pdq")
    parser.add_argument("--requests", type=int, default=20, help="requests per run")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    print(f"load average at the start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="hashmesh-bench-match-api-") as tmp:
        rows = asyncio.run(run(args, Path(tmp)))
    report(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
