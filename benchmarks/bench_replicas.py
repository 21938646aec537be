"""Matching replicas fed by one node: catch-up, and a second replica added under load (issue 18 item 5).

    .venv/bin/python benchmarks/bench_replicas.py                      # 20,000 entries (smoke)
    .venv/bin/python benchmarks/bench_replicas.py --size 10M --dir /var/tmp/hashmesh-scale \\
        --json replicas-10M.json

The layout of docs/scaling.md, every part a real ``hashmesh serve`` process
over mutual TLS on 127.0.0.1:

* **P**, the platform's node: node A of ``bench_scale.py`` (0.8 N random
  sha256, 0.2 N random PDQ), built once into ``DIR/<N>/a`` and reused; served
  with ``--no-sync``.
* **R1**, a fresh node (``init``) that follows P's origin with P's key and
  adds P as a peer; P adds R1's card with role ``subscriber``. R1 is started
  with its sync runner and catches up from 0 to N: the time from the spawn
  until R1 holds N entries of P's origin (its replica state, read from R1's
  database once a second), the rate, the rate over each tenth of the log,
  and when R1 first answers a ``/v1/match`` PDQ query of a listed hash.
* **R1 serves matches**: a client (this process, its own identity, a peer of
  R1) sends batches back to back on one connection, 10,000 sha256 hashes
  (10 % listed) and 1,000 PDQ queries at distance 31 (10 % planted near a
  listed hash) in turn, and on a second connection one-hash requests (a
  sha256, then a PDQ query, every 0.1 s). ``--before`` seconds of that with
  R1 alone, then **R2** (a second fresh replica, subscribed as R1) is
  started and catches up from P while the load goes on; the load stops when
  R2 holds N entries. Reported per phase (before / during R2's catch-up):
  one-hash latency p50/p99 of each kind, and batch throughput (hashes/s of
  each kind over the phase's wall time).
* Peak RSS (``VmHWM``) of P, R1 and R2, and a same-run baseline (raw leaf
  hashing, as bench_scale), because the machine is shared.

All processes share this machine's cores: R2's catch-up (P serving pages,
R2 verifying and writing) competes with R1 for CPU here, which separate
machines would not. ``--pin`` puts R1 and the client on CPU 0 and P and R2
on CPU 1 (``taskset``) to show the effect without most of that contention.
R1 and R2 are deleted at the end (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_ledger  # noqa: E402
import bench_load  # noqa: E402
import bench_scale  # noqa: E402
import bench_sync  # noqa: E402

LIGHT_EVERY = 0.1  # seconds between one-hash requests
HELD_EVERY = 1.0  # seconds between reads of a replica's size
KINDS = {"one sha256", "one pdq", "sha256 batch", "pdq batch"}


@dataclass
class Sample:
    """One answered request: when it ended (monotonic), its kind, latency and hashes."""

    at: float
    kind: str
    seconds: float
    hashes: int


@dataclass
class Load:
    """The matching load on R1 and what it recorded."""

    samples: list[Sample] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    every_kind: asyncio.Event = field(default_factory=asyncio.Event)
    errors: int = 0

    def record(self, sample: Sample) -> None:
        self.samples.append(sample)
        if not self.every_kind.is_set() and {s.kind for s in self.samples} == KINDS:
            self.every_kind.set()


def subscribe(p: bench_sync.Node, r: bench_sync.Node) -> None:
    """P adds R's card as a subscriber; R adds P as a peer and follows P's origin with P's key."""
    from node.cli.cards import make_card
    from node.ledger.service import Ledger

    card = make_card(name=r.origin, url=r.url, tls_cert=r.cert_pem(), vkey=r.vkey())
    with Ledger.open(p.dir) as ledger:
        ledger.peers.add_peer(card.peer_record("subscriber"))
    bench_sync.introduce(r, p, follow=p)


def pin(pid: int, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})


async def catch_up(
    r: bench_sync.Node, origin: str, size: int, started: float
) -> tuple[float, list[tuple[float, int]]]:
    """Seconds from ``started`` until R holds ``size`` entries; (seconds, held) once a second."""
    trace: list[tuple[float, int]] = []
    while True:
        held = await asyncio.to_thread(_held, r, origin)
        now = time.monotonic() - started
        trace.append((now, held))
        if held >= size:
            return now, trace
        await asyncio.sleep(HELD_EVERY)


def _held(r: bench_sync.Node, origin: str) -> int:
    try:
        return bench_sync.held(r, origin)
    except Exception:  # noqa: BLE001 - the replica's first sync may not have made the log yet
        return 0


def tenths(trace: list[tuple[float, int]], size: int) -> list[float]:
    """Entries/s over each tenth of the log, from the once-a-second trace."""
    rates = []
    for k in range(10):
        lo, hi = size * k // 10, size * (k + 1) // 10
        t_lo = next(t for t, h in trace if h >= lo)
        t_hi = next(t for t, h in trace if h >= hi)
        rates.append((hi - lo) / max(t_hi - t_lo, HELD_EVERY))
    return rates


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes | str
) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    async with session.post(
        url + "/v1/match", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"/v1/match answered {resp.status}: {raw[:200]!r}")
    return time.perf_counter() - t0, json.loads(raw)


async def ready(session: aiohttp.ClientSession, url: str, probe: str, started: float) -> float:
    """Seconds from ``started`` until R answers a PDQ query of a listed hash with a hit."""
    while True:
        try:
            _, doc = await post(session, url, probe)
            if doc["matches"][0]["hits"]:
                return time.monotonic() - started
        except (aiohttp.ClientError, RuntimeError):
            pass
        await asyncio.sleep(0.2)


async def heavy(
    session: aiohttp.ClientSession, url: str, bodies: list[tuple[str, int, bytes]], load: Load
) -> None:
    i = 0
    while not load.stop.is_set():
        kind, per, body = bodies[i % len(bodies)]
        i += 1
        try:
            took, doc = await post(session, url, body)
        except (aiohttp.ClientError, RuntimeError):
            load.errors += 1
            continue
        assert doc["checked"] == per, doc["checked"]
        load.record(Sample(time.monotonic(), kind, took, per))


async def light(session: aiohttp.ClientSession, url: str, pdq: list[str], load: Load) -> None:
    rng = random.Random(11)
    while not load.stop.is_set():
        for kind in ("sha256", "pdq"):
            value = (
                f"{rng.getrandbits(256):064x}"
                if kind == "sha256"
                else bench_scale.flip(rng.choice(pdq), rng, rng.randrange(32))
            )
            body = {"hashes": [{"type": kind, "value": value}], "max_distance": 31}
            try:
                took, _ = await post(session, url, json.dumps(body))
            except (aiohttp.ClientError, RuntimeError):
                load.errors += 1
                continue
            load.record(Sample(time.monotonic(), f"one {kind}", took, 1))
        await asyncio.sleep(LIGHT_EVERY)


def phase(load: Load, start: float, end: float) -> dict[str, Any]:
    """Latency quantiles and throughput of each kind within [start, end)."""
    out: dict[str, Any] = {"seconds": end - start}
    inside = [s for s in load.samples if start <= s.at < end]
    for kind in ("one sha256", "one pdq"):
        times = sorted(s.seconds * 1000 for s in inside if s.kind == kind)
        out[kind] = {
            "n": len(times),
            "p50_ms": statistics.median(times) if times else None,
            "p99_ms": bench_sync.percentile(times, 0.99) if times else None,
        }
    for kind in ("sha256 batch", "pdq batch"):
        done = [s for s in inside if s.kind == kind]
        out[kind] = {
            "requests": len(done),
            "per_s": sum(s.hashes for s in done) / (end - start),
            "p50_ms": statistics.median(s.seconds * 1000 for s in done) if done else None,
        }
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from node.ledger.provision import init_node
    from tests.adversary.served_process import ServeProcess, serve_process

    where = args.dir / str(args.size)
    p, built = bench_scale.build(where, args.size, args.chunk)
    result: dict[str, Any] = {
        "entries": args.size,
        "p_build": built,
        "commit": bench_scale.commit_id(),
        "pinned": args.pin,
        "baseline_leaf_per_s": bench_ledger.raw_leaf_rate(200_000),
        "loadavg_start": os.getloadavg(),
    }
    work = where / "replicas"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    client = work / "client"
    init_node(client, f"client-{time.time_ns()}.example/hashmesh")
    r1 = bench_sync.make_node(work, "r1", "replica-1.example/hashmesh")
    subscribe(p, r1)
    bench_load.add_peer(r1.dir, client, work)
    pdq = bench_scale.listed_values(where, "pdq")
    probe = json.dumps({"hashes": [{"type": "pdq", "value": pdq[0]}]})
    exact, near = bench_scale.lookup_bodies(where, args.requests)
    bodies = [
        item
        for pair in zip(exact, near, strict=True)
        for item in (
            ("sha256 batch", bench_scale.EXACT_BATCH, pair[0]),
            ("pdq batch", bench_scale.PDQ_BATCH, pair[1]),
        )
    ]
    cpu_r1, cpu_p = (0, 1) if args.pin else (None, None)
    pin(os.getpid(), cpu_r1)
    served: list[ServeProcess] = []
    try:
        serving_p = await serve_process(p.dir, listen=p.listen, within=args.patience)
        served.append(serving_p)
        pin(serving_p.proc.pid, cpu_p)

        print(f"R1 catching up from 0 to {args.size:,} ...", flush=True)
        started = time.monotonic()
        serving_r1 = await serve_process(r1.dir, listen=r1.listen, sync=True, within=args.patience)
        served.append(serving_r1)
        pin(serving_r1.proc.pid, cpu_r1)
        seconds, trace = await catch_up(r1, p.origin, args.size, started)
        ctx = bench_load.client_ctx(client, r1.dir)
        timeout = aiohttp.ClientTimeout(total=600)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), timeout=timeout) as s1,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), timeout=timeout) as s2,
        ):
            ready_s = await ready(s1, serving_r1.url, probe, started)
            result["r1"] = {
                "catch_up_s": seconds,
                "catch_up_per_s": args.size / seconds,
                "per_tenth_per_s": tenths(trace, args.size),
                "ready_to_match_s": ready_s,
            }
            print(f"  R1 held {args.size:,} after {seconds:.1f} s; matching after {ready_s:.1f} s")

            load = Load()
            tasks = [
                asyncio.create_task(heavy(s1, serving_r1.url, bodies, load)),
                asyncio.create_task(light(s2, serving_r1.url, pdq, load)),
            ]
            before_start = time.monotonic()
            await asyncio.sleep(args.before)
            # A loaded machine may answer nothing within --before: every kind
            # of request is answered at least once before R2 starts.
            await load.every_kind.wait()
            r2 = bench_sync.make_node(work, "r2", "replica-2.example/hashmesh")
            subscribe(p, r2)
            print(f"R2 catching up from 0 to {args.size:,} while R1 serves matches ...", flush=True)
            started2 = time.monotonic()
            serving_r2 = await serve_process(
                r2.dir, listen=r2.listen, sync=True, within=args.patience
            )
            served.append(serving_r2)
            pin(serving_r2.proc.pid, cpu_p)
            seconds2, trace2 = await catch_up(r2, p.origin, args.size, started2)
            during_end = time.monotonic()
            load.stop.set()
            await asyncio.gather(*tasks)
            result["r2"] = {
                "catch_up_s": seconds2,
                "catch_up_per_s": args.size / seconds2,
                "per_tenth_per_s": tenths(trace2, args.size),
            }
            result["r1_load"] = {
                "before": phase(load, before_start, started2),
                "during_r2_catch_up": phase(load, started2, during_end),
                "errors": load.errors,
            }
            print(f"  R2 held {args.size:,} after {seconds2:.1f} s")
        result["peak_rss_mib"] = {
            name: bench_scale.vm_hwm_mib(s.proc.pid)
            for name, s in zip(("P", "R1", "R2"), served, strict=True)
        }
        result["loadavg_end"] = os.getloadavg()
    finally:
        for s in reversed(served):
            await s.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def report(r: dict[str, Any]) -> str:
    b, d = r["r1_load"]["before"], r["r1_load"]["during_r2_catch_up"]
    lines = [
        f"hashmesh replicas benchmark, {r['entries']:,} entries, commit {r['commit']}"
        f"{', pinned (R1+client CPU 0, P+R2 CPU 1)' if r['pinned'] else ''}",
        f"baseline: raw leaf hashing {r['baseline_leaf_per_s']:,.0f} leaves/s;"
        f" load average {r['loadavg_start'][0]:.1f} at start, {r['loadavg_end'][0]:.1f} at end",
        f"R1 catch-up 0 -> {r['entries']:,}: {r['r1']['catch_up_s']:.1f} s,"
        f" {r['r1']['catch_up_per_s']:,.0f} entries/s; answers a PDQ match"
        f" {r['r1']['ready_to_match_s']:.1f} s after its start",
        "  per tenth of the log (entries/s): "
        + ", ".join(f"{x:,.0f}" for x in r["r1"]["per_tenth_per_s"]),
        f"R2 catch-up while R1 serves matches: {r['r2']['catch_up_s']:.1f} s,"
        f" {r['r2']['catch_up_per_s']:,.0f} entries/s",
        "  per tenth of the log (entries/s): "
        + ", ".join(f"{x:,.0f}" for x in r["r2"]["per_tenth_per_s"]),
        "",
        "| R1's matching | before R2 | during R2's catch-up |",
        "| --- | ---: | ---: |",
    ]
    for kind in ("one sha256", "one pdq"):
        for q in ("p50_ms", "p99_ms"):
            lines.append(f"| {kind}: {q[:3]} (ms) | {_ms(b[kind][q])} | {_ms(d[kind][q])} |")
    for kind in ("sha256 batch", "pdq batch"):
        unit = "hashes/s" if kind.startswith("sha") else "queries/s"
        lines.append(
            f"| {kind}es of {bench_scale.EXACT_BATCH if kind.startswith('sha') else bench_scale.PDQ_BATCH:,}"
            f" ({unit}) | {b[kind]['per_s']:,.0f} | {d[kind]['per_s']:,.0f} |"
        )
    lines.append(f"| phase length (s) | {b['seconds']:.0f} | {d['seconds']:.0f} |")
    lines.append(
        "peak RSS (MiB): " + ", ".join(f"{k} {v:,.0f}" for k, v in r["peak_rss_mib"].items())
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=bench_scale.parse_size, default=20_000, help="entries of P (default 20k)"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/var/tmp/hashmesh-replicas"),
        help="P is built once into DIR/<size>/a (bench_scale's layout) and reused;"
        " the replicas go to DIR/<size>/replicas",
    )
    parser.add_argument(
        "--chunk", type=bench_scale.parse_size, default=10_000_000, help="import chunk (build)"
    )
    parser.add_argument(
        "--before", type=float, default=60.0, help="seconds of load on R1 before R2 starts (60)"
    )
    parser.add_argument(
        "--requests", type=int, default=10, help="distinct batch bodies of each kind (10)"
    )
    parser.add_argument("--pin", action="store_true", help="R1+client on CPU 0, P+R2 on CPU 1")
    parser.add_argument(
        "--patience", type=float, default=900.0, help="seconds a serve may take to listen (900)"
    )
    parser.add_argument("--keep", action="store_true", help="keep R1 and R2")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args()
    bench_sync.logging.getLogger("hashmesh").setLevel(bench_sync.logging.ERROR)
    result = asyncio.run(run(args))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(report(result))


if __name__ == "__main__":
    main()
