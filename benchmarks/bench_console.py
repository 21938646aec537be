"""Console benchmark: Overview latency for a node holding 10 logs and 10M entries.

    .venv/bin/python benchmarks/bench_console.py [--logs 10] [--entries 10000000]
        [--dir /tmp/hashmesh-bench-console] [--requests 500] [--json out.json]
    .venv/bin/python benchmarks/bench_console.py --lookup-node COPY/a \\
        --sample DIR/10000000/sample-sha256.txt [--workers 2] [--rounds 10]

Build (once; kept in ``--dir`` and reused by later runs with the same sizes):
``--logs`` author nodes each write ``--entries / --logs`` signed sha256 adds
to their own log with ``Ledger.append`` in batches of 100,000 (one signed
checkpoint per batch, as imports make them). The first author is the node
measured; it follows the others, and their logs are copied into its
database as they are (entries, tree nodes, checkpoints, active and PDQ rows)
by SQL (``ATTACH`` + ``INSERT ... SELECT``) instead of a verified sync: the
rows are exactly what a fully synced replica stores, and verifying 9M
entries through the sync engine would take several minutes more on this
machine without changing what the Overview reads.

``--lookup-node DIR --sample FILE``: instead, the look-up alone on an
existing node (e.g. a copy of bench_scale's 10M node, whose ``sample-sha256.txt``
lists values it holds), served with ``--workers`` match worker processes
(``serve``'s default: one per core; 0: the reader threads). Blocks of five
look-ups alternate between the node's ``index/active.seg`` hidden (renamed
aside: every exact value is then looked up by SQLite's seeks, the console's
path before issue 18's item 5) and in place (the mapped key file, as
``/v1/match``), in one process against one server, so the ratio holds on a
loaded machine. The node directory is written to (the rename): use a copy.

Measure: the console app (``make_console_app``) is served on 127.0.0.1 in
this process, as ``hashmesh serve`` serves it, and ``--requests`` sequential
``GET /console/overview`` (HTML) and ``/console/overview.json`` are timed at
the client (``perf_counter``), after 20 warm-up requests. The same client
times the login form (a template render, no database) as the in-process
baseline; ratios to it are reported because absolute figures on a shared
machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.api.console import ConsoleSettings, make_console_app  # noqa: E402
from node.ledger import Ledger  # noqa: E402
from node.ledger.database import Database  # noqa: E402
from node.ledger.provision import init_node  # noqa: E402
from protocol.entry import AddEntry  # noqa: E402

BATCH = 100_000
COPIED = ("entries", "nodes", "checkpoints", "active", "active_base", "pdq", "cosignatures")


def origin(i: int) -> str:
    return f"hotline-{i:02d}.bench.example/hashmesh"


def value(log: int, i: int) -> str:
    return hashlib.sha256(f"bench-console-{log}-{i}".encode()).hexdigest()


def build_author(path: Path, log: int, count: int) -> float:
    started = time.perf_counter()
    init_node(path, origin(log), listen="127.0.0.1:0")
    with Ledger.open(path) as ledger:
        for start in range(0, count, BATCH):
            end = min(count, start + BATCH)
            ledger.append(
                [
                    AddEntry.create(signal_type="sha256", value=value(log, i), labels=("bench:x",))
                    for i in range(start, end)
                ]
            )
    return time.perf_counter() - started


def copy_replica(node: Path, author: Path) -> None:
    """Hold ``author``'s log in ``node`` as a replica, rows copied as they are."""
    with Ledger.open(author, read_only=True) as source:
        their_origin, vkey = source.own_log.origin, source.own_log.verifier_key
    with Ledger.open(node) as ledger:
        ledger.follow(their_origin, vkey)
    conn = sqlite3.connect(_db(node))
    try:
        conn.execute("ATTACH DATABASE ? AS src", (str(_db(author)),))
        with conn:
            # What Replica does on its first write: the log row of the origin.
            dst = conn.execute(
                "INSERT INTO logs (origin, verifier_key, is_own, created_at) "
                "VALUES (?, ?, 0, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                (their_origin, vkey),
            ).lastrowid
        (src,) = conn.execute("SELECT log_id FROM src.logs WHERE is_own = 1").fetchone()
        with conn:
            for table in COPIED:
                cols = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
                rest = ", ".join(c for c in cols if c != "log_id")
                conn.execute(
                    f"INSERT INTO main.{table} (log_id, {rest}) "
                    f"SELECT ?, {rest} FROM src.{table} WHERE log_id = ?",
                    (dst, src),
                )
        conn.execute("DETACH DATABASE src")
    finally:
        conn.close()


def _db(node: Path) -> Path:
    return node / "ledger.db"


def build(base: Path, logs: int, entries: int) -> dict[str, Any]:
    marker = base / f"built-{logs}-{entries}.json"
    if marker.exists():
        return dict(json.loads(marker.read_text()))
    if base.exists() and any(base.iterdir()):
        raise SystemExit(f"{base} holds something else; give an empty --dir")
    base.mkdir(parents=True, exist_ok=True)
    per_log = entries // logs
    times = []
    for log in range(logs):
        took = build_author(base / f"a{log:02d}", log, per_log)
        times.append(took)
        print(f"  author {log}: {per_log:,} entries in {took:.1f} s", flush=True)
    started = time.perf_counter()
    for log in range(1, logs):
        copy_replica(base / "a00", base / f"a{log:02d}")
    copy_s = time.perf_counter() - started
    info = {
        "logs": logs,
        "entries": per_log * logs,
        "author_build_s": [round(t, 1) for t in times],
        "replica_copy_s": round(copy_s, 1),
        "database_bytes": _db(base / "a00").stat().st_size,
    }
    marker.write_text(json.dumps(info))
    return info


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(node: Path, requests: int) -> dict[str, Any]:
    db = await Database.open(node)
    root = web.Application()
    with Ledger.open(node, read_only=True) as ledger:
        own = ledger.own_log.origin
        held = [(log.origin, ledger.stored_checkpoint(log)) for log in ledger.logs()]
    root.add_subapp("/console/", make_console_app(db, ConsoleSettings(origin=own)))
    runner = web.AppRunner(root, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    results: dict[str, Any] = {
        "held": {o: (None if c is None else c.size) for o, c in held},
    }
    try:
        async with aiohttp.ClientSession() as session:
            for name, path in (
                ("login form (baseline: template, no database)", "login"),
                ("overview (HTML)", "overview"),
                ("overview.json", "overview.json"),
            ):
                url = f"http://127.0.0.1:{port}/console/{path}"
                for _ in range(20):
                    async with session.get(url) as r:
                        await r.read()
                        assert r.status == 200, r.status
                samples = []
                for _ in range(requests):
                    t0 = time.perf_counter()
                    async with session.get(url) as r:
                        await r.read()
                    samples.append((time.perf_counter() - t0) * 1000)
                results[name] = {
                    "p50_ms": round(statistics.median(samples), 2),
                    "p99_ms": round(pct(samples, 0.99), 2),
                    "max_ms": round(max(samples), 2),
                    "n": requests,
                }
                print(
                    f"  {name}: p50 {results[name]['p50_ms']} ms, p99 {results[name]['p99_ms']} ms"
                )
        results["lookup of 10,000 pasted hashes"] = await measure_lookup(
            f"http://127.0.0.1:{port}/console/",
            len(held),
            per_log=min(c.size for _o, c in held if c),
        )
    finally:
        await runner.cleanup()
        await db.close()
    base = results["login form (baseline: template, no database)"]["p99_ms"]
    results["overview_p99_over_baseline_p99"] = round(
        results["overview (HTML)"]["p99_ms"] / base, 2
    )
    return results


def lookup_paste(listed: Callable[[int], str]) -> str:
    """10,000 sha256 lines, every tenth ``listed(i)`` (held), the others absent."""
    lines = []
    for i in range(10_000):
        if i % 10 == 1:
            lines.append(f"sha256:{listed(i)}")
        else:
            lines.append(f"sha256:{hashlib.sha256(f'absent-{i}'.encode()).hexdigest()}")
    return "\n".join(lines)


async def lookup_csrf(session: aiohttp.ClientSession, base: str) -> str:
    """The look-up form's CSRF token (the session keeps its cookie)."""
    async with session.get(base + "lookup") as r:
        page = await r.text()
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


async def post_lookup(session: aiohttp.ClientSession, base: str, csrf: str, paste: str) -> float:
    """Milliseconds one look-up of ``paste`` takes (as JSON); 1,000 values must match."""
    form = aiohttp.FormData()
    form.add_field("csrf", csrf)
    form.add_field("hashes", paste)
    t0 = time.perf_counter()
    async with session.post(base + "lookup.json", data=form) as r:
        doc = await r.json()
    took = (time.perf_counter() - t0) * 1000
    assert doc["results"]["matched"] == 1_000, doc["results"]["matched"]
    return took


async def measure_lookup(base: str, logs: int, per_log: int, rounds: int = 10) -> dict[str, Any]:
    """POST 10,000 pasted hashes (1,000 listed, spread over the logs) through the form.

    10 % listed, as in ``bench_match.py --exact-api``; timed as JSON and as
    the HTML page.
    """
    paste = lookup_paste(lambda i: value(i % logs, (i * 7919) % per_log))
    jar = aiohttp.CookieJar(unsafe=True)
    samples = []
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        csrf = await lookup_csrf(session, base)
        for _ in range(rounds):
            samples.append(await post_lookup(session, base, csrf, paste))
    out = {
        "p50_ms": round(statistics.median(samples), 1),
        "max_ms": round(max(samples), 1),
        "n": rounds,
        "matched": 1_000,
    }
    print(f"  lookup of 10,000 pasted hashes: p50 {out['p50_ms']} ms, max {out['max_ms']} ms")
    return out


BLOCK = 5
"""Look-ups counted each way before the key file is swapped (``--lookup-node``)."""


def _place(key_file: Path, way: str) -> None:
    """Hide the key file (``sqlite``) or put it back (``key file``)."""
    aside = key_file.with_name(key_file.name + ".aside")
    if way == "sqlite" and key_file.exists():
        key_file.rename(aside)
    elif way == "key file" and aside.exists():
        aside.rename(key_file)


async def lookup_ab(node: Path, listed: list[str], workers: int, rounds: int) -> dict[str, Any]:
    """The 10,000-hash look-up with the key file hidden and in place, rounds alternating."""
    from node.api.workers import WorkerPool
    from node.ledger.active_index import active_index_path

    paste = lookup_paste(lambda i: listed[(i * 7919) % len(listed)])
    key_file = active_index_path(node)
    _place(key_file, "key file")  # an earlier run may have stopped with it aside
    db = await Database.open(node)
    pool = WorkerPool(workers, 8, node, nice=0) if workers else None
    root = web.Application()
    with Ledger.open(node, read_only=True) as ledger:
        own = ledger.own_log.origin
    root.add_subapp("/console/", make_console_app(db, ConsoleSettings(origin=own, pool=pool)))
    runner = web.AppRunner(root, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/console/"
    samples: dict[str, list[float]] = {"sqlite": [], "key file": []}
    try:
        if pool is not None:
            pool.start()
            await pool.wait_ready()
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            csrf = await lookup_csrf(session, base)

            async def one() -> float:
                return await post_lookup(session, base, csrf, paste)

            # Blocks of BLOCK rounds each way, alternating; the first look-up
            # after each swap is not counted (a process maps the file again and
            # checks every block's CRC then, as after a new file from serve).
            for _ in range(max(1, rounds // BLOCK)):
                for way in ("sqlite", "key file"):
                    _place(key_file, way)
                    await one()
                    for _ in range(BLOCK):
                        samples[way].append(await one())
    finally:
        _place(key_file, "key file")
        await runner.cleanup()
        if pool is not None:
            await pool.close()
        await db.close()
    out: dict[str, Any] = {"workers": workers, "rounds": len(samples["sqlite"])}
    for way, times in samples.items():
        out[way] = {
            "p50_ms": round(statistics.median(times), 1),
            "min_ms": round(min(times), 1),
            "max_ms": round(max(times), 1),
        }
        print(f"  lookup of 10,000 pasted hashes, {way}: p50 {out[way]['p50_ms']} ms")
    out["p50_ratio_key_file_over_sqlite"] = round(
        out["key file"]["p50_ms"] / out["sqlite"]["p50_ms"], 3
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logs", type=int, default=10)
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hashmesh-bench-console"))
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--lookup-node", type=Path, help="measure the look-up alone on this node")
    parser.add_argument("--sample", type=Path, help="sha256 values the --lookup-node holds")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if args.lookup_node is not None:
        if args.sample is None:
            parser.error("--lookup-node needs --sample")
        key_file = args.lookup_node / "index" / "active.seg"
        if not key_file.exists() and not key_file.with_name("active.seg.aside").exists():
            parser.error(f"{key_file} is missing: run hashmesh index build on the copy first")
        listed = args.sample.read_text(encoding="ascii").split()
        result = asyncio.run(lookup_ab(args.lookup_node, listed, args.workers, args.rounds))
        doc = {"machine": platform.platform(), "load": os.getloadavg(), "lookup": result}
        print(json.dumps(doc, indent=1))
        if args.json:
            args.json.write_text(json.dumps(doc, indent=1))
        return
    print(f"build ({args.logs} logs, {args.entries:,} entries) in {args.dir}", flush=True)
    info = build(args.dir, args.logs, args.entries)
    print(f"measure ({args.requests} requests each)", flush=True)
    results = asyncio.run(measure(args.dir / "a00", args.requests))
    doc = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "build": info,
        "results": results,
    }
    print(json.dumps(doc, indent=1))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
