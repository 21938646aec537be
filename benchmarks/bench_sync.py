"""Sync benchmark: initial sync of N entries over mutual TLS, and live propagation A -> B -> C.

    .venv/bin/python benchmarks/bench_sync.py [--entries 1000000] [--samples 200]
    .venv/bin/python benchmarks/bench_sync.py --quick [--profile]
    .venv/bin/python benchmarks/bench_sync.py --witnessed [--samples 30]

Initial sync: node A holds N random sha256 entries in its own log (set up
with ``Ledger.import_lines``, not measured) and serves its API in this
process (``run_server``, no sync runner). Node B, which follows A, runs one
``sync_once`` round in a child process (so its peak RSS is its own): every
page fetched over mutual TLS, every chunk proven against A's signed
checkpoint, committed. Baselines in the same run, against the same kind of
server (``start_server``, same node identities, same TLS contexts): the
same entries-page body sizes served from memory and read by a bare aiohttp
client in the same number of requests; ``PeerClient.entries`` against A's
real server (fetch, entry bundles decoded strictly, no verification or storage); raw
leaf hashing.

Propagation: A, B and C serve with their sync runners (poll interval 30 s,
so only announcements can deliver); C follows A through B only. A child
process appends one entry at a time to A with its own ``Ledger`` connection
(as the CLI does) and polls B's and C's databases until C holds it. Each
sync round of the runners is timed in this process, so a sample's latency
splits into: A noticing its own commit and B hearing of it, B's round, C
hearing of B's commit, C's round.

``--witnessed`` runs only the propagation with witness cosignatures (issue
19): A asks B, D and E to witness its log; each of them follows A and
relays its log; C follows A through B (1 of 1: C requires B's cosignature,
syncs from B only) or through B, D and E (2 of 3). Every node serves with
its sync runner at the default poll interval (30 s). A child process
writes single entries at A at random intervals of 0.5 to 5 s, as the CLI
does, and polls C's database until C holds the entry (C holds nothing
short of its policy). The cosignatures and announcements are timed in
this process, so each sample splits into: A commit -> the k-th witness
cosignature, -> the first announcement carrying it on C's path (a
witness's event stream), -> C holds the entry. A sample over 10 s would
have waited for a poll; none may.

``--profile`` runs a second initial sync of a fresh copy of B under
cProfile, separately for the event-loop thread (fetching, parsing) and the
database writer thread (verification, storage).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import math
import os
import pstats
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORIGIN_A = "hotline-a.example/hashmesh"
ORIGIN_B = "hotline-b.example/hashmesh"
ORIGIN_C = "agency-c.example/hashmesh"
CHUNK = 50_000  # node.sync.engine.CHUNK_ENTRIES, the fetch-only baseline's chunk too
ENTRY_TARGET = 100_000
P50_TARGET_MS = 200.0
P99_TARGET_MS = 1000.0


# -- children ---------------------------------------------------------------------


def _rss_mib() -> float:
    # VmHWM starts afresh at exec; ru_maxrss keeps the high-water mark of the
    # process that forked this child (the parent serving node A), so it
    # reported the parent's size, not the syncing node's.
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _disk_written() -> int:
    """Bytes this process has had written to disk so far (``write_bytes`` of /proc/self/io)."""
    with open("/proc/self/io", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


@dataclass
class _Clock:
    """Wall time spent in instrumented calls of the syncing child."""

    totals: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, seconds: float) -> None:
        self.totals[key] = self.totals.get(key, 0.0) + seconds


async def child_sync(p: dict[str, Any]) -> dict[str, Any]:
    """One ``sync_once`` round of B against A; returns figures (stdout JSON)."""
    from node.config import load_config
    from node.ledger.database import Database
    from node.ledger.service import Ledger
    from node.sync.client import HttpPeerClient
    from node.sync.runner import sync_once
    from node.sync.transport import Transport

    node_dir = Path(p["node"])
    config = load_config(node_dir)
    clock = _Clock()
    page_bytes: list[int] = []
    other_bytes = 0
    requests: dict[str, int] = {}

    # Instrumentation only: count every body B receives, and time the waits.
    read_capped = Transport._read_capped

    async def counting(transport: Transport, resp: Any, cap: int) -> bytes:
        nonlocal other_bytes
        started = time.perf_counter()
        body = await read_capped(transport, resp, cap)
        path = resp.url.path
        clock.add(f"read body {path}", time.perf_counter() - started)
        requests[path] = requests.get(path, 0) + 1
        if path == "/v1/entries":
            page_bytes.append(len(body))
        else:
            other_bytes += len(body)
        return body

    Transport._read_capped = counting  # type: ignore[method-assign,assignment]

    def timed(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                clock.add(name, time.perf_counter() - started)

        return run

    for name in ("entries", "consistency", "logs", "evidence"):
        setattr(HttpPeerClient, name, timed(f"PeerClient.{name}", getattr(HttpPeerClient, name)))

    loop_prof = cProfile.Profile() if p.get("profile") else None
    writer_prof = cProfile.Profile() if p.get("profile") else None
    db = await Database.open(node_dir)
    write = db.write

    writer_cpu = 0.0

    def on_writer(fn: Callable[[Any], Any], ledger: Any) -> Any:
        nonlocal writer_cpu
        started = time.thread_time()
        try:
            return fn(ledger) if writer_prof is None else writer_prof.runcall(fn, ledger)
        finally:
            writer_cpu += time.thread_time() - started

    async def timed_write(fn: Callable[[Any], Any]) -> Any:
        started = time.perf_counter()
        try:
            return await write(lambda ledger: on_writer(fn, ledger))
        finally:
            clock.add("db.write (verify + store)", time.perf_counter() - started)

    db.write = timed_write  # type: ignore[method-assign]
    try:
        started, cpu_started, written = time.perf_counter(), os.times(), _disk_written()
        if loop_prof is not None:
            loop_prof.enable()
        reports = await sync_once(
            db,
            cert_path=config.tls_cert_path,
            key_path=config.tls_key_path,
            # A reused node may know peers of earlier runs, long gone.
            only_peer=p.get("only_peer"),
        )
        if loop_prof is not None:
            loop_prof.disable()
        seconds = time.perf_counter() - started
        cpu_ended = os.times()
        cpu = cpu_ended.user + cpu_ended.system - cpu_started.user - cpu_started.system
        written = _disk_written() - written
    finally:
        await db.close()
    errors = [r.error for r in reports if r.error]
    if errors and not p.get("tolerate_errors"):
        raise SystemExit(f"sync failed: {errors}")
    with Ledger.open(node_dir, read_only=True) as ledger:
        state = ledger.replica(p["origin"]).state()
    if loop_prof is not None and writer_prof is not None:
        loop_prof.dump_stats(p["profile"] + ".loop")
        writer_prof.dump_stats(p["profile"] + ".writer")
    return {
        "appended": sum(r.appended for r in reports),
        "held": state.size,
        "checkpoint": state.checkpoint.size if state.checkpoint else 0,
        "seconds": seconds,
        "rss_mib": _rss_mib(),
        "cpu": cpu,
        "writer_cpu": writer_cpu,
        "disk_written": written,
        "page_bytes": page_bytes,
        "other_bytes": other_bytes,
        "requests": requests,
        "clock": clock.totals,
        "errors": errors,
    }


async def child_raw(p: dict[str, Any]) -> dict[str, Any]:
    """Baseline client: the same page count and bytes, no parsing, no storage."""
    import aiohttp

    from node.tls import client_ssl_context

    ctx = client_ssl_context(Path(p["cert"]), Path(p["key"]), p["server_pem"])
    connector = aiohttp.TCPConnector(ssl=ctx, limit=4)
    total = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        for i in range(p["pages"]):
            async with session.get(p["url"] + "/page", params={"i": str(i)}) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"baseline page {i} answered {resp.status}")
                total += len(body)
        seconds = time.perf_counter() - started
    return {"bytes": total, "seconds": seconds, "rss_mib": _rss_mib()}


async def child_fetch(p: dict[str, Any]) -> dict[str, Any]:
    """``PeerClient.entries`` against A's real server: fetch and decode, nothing kept."""
    from node.sync.client import HttpPeerClient

    n = p["entries"]
    first = p.get("first", 0)  # a log's tail: entries [first, n)
    fetched = 0
    async with HttpPeerClient(
        p["origin"],
        p["url"],
        server_cert_pem=p["server_pem"],
        cert_path=Path(p["cert"]),
        key_path=Path(p["key"]),
    ) as client:
        started = time.perf_counter()
        for start in range(first, n, CHUNK):
            fetched += len(await client.entries(p["origin"], start, min(n, start + CHUNK)))
        seconds = time.perf_counter() - started
    return {"entries": fetched, "seconds": seconds, "rss_mib": _rss_mib()}


def child_prop(p: dict[str, Any]) -> dict[str, Any]:
    """Append one entry at A at a time; time until B, then C, hold it."""
    from node.config import load_config
    from node.ledger.service import Ledger
    from node.storage.ledger_store import LedgerStore
    from protocol.entry import AddEntry

    def store(node: str) -> tuple[LedgerStore, int]:
        s = LedgerStore.open(load_config(Path(node)).database_path, read_only=True)
        return s, s.get_log(p["origin"]).log_id

    (b, b_id), (c, c_id) = store(p["b"]), store(p["c"])
    rng = random.Random(7)
    samples: list[dict[str, float | int]] = []
    timeouts = 0
    for _ in range(p["warmup"] + p["samples"]):
        value = f"{rng.getrandbits(256):064x}"
        with Ledger.open(Path(p["a"])) as ledger:  # a CLI write: its own connection
            result = ledger.append([AddEntry.create(signal_type="sha256", value=value)])
        committed = time.monotonic()
        size = result.checkpoint.size
        at_b = at_c = None
        while at_c is None:
            now = time.monotonic()
            if at_b is None and b.entry_count(b_id) >= size:
                at_b = now
            if c.entry_count(c_id) >= size:
                at_c = now
                at_b = at_b if at_b is not None else now
            elif now - committed > p["timeout"]:
                break
            else:
                time.sleep(0.002)
        if at_c is None or at_b is None:
            timeouts += 1
        else:
            samples.append({"size": size, "committed": committed, "at_b": at_b, "at_c": at_c})
        # Decorrelate the next write from the 0.1 s own-log poll.
        time.sleep(rng.uniform(0.0, 0.05))
    b.close()
    c.close()
    return {"samples": samples[p["warmup"] :], "timeouts": timeouts}


def child_witnessed(p: dict[str, Any]) -> dict[str, Any]:
    """Single entries at A at random 0.5-5 s intervals; time until C holds each."""
    from node.config import load_config
    from node.ledger.service import Ledger
    from node.storage.ledger_store import LedgerStore
    from protocol.entry import AddEntry

    c = LedgerStore.open(load_config(Path(p["c"])).database_path, read_only=True)
    rng = random.Random(p["seed"])
    samples: list[dict[str, float | int]] = []
    timeouts = 0
    for _ in range(p["samples"]):
        time.sleep(rng.uniform(0.5, 5.0))
        value = f"{rng.getrandbits(256):064x}"
        with Ledger.open(Path(p["a"])) as ledger:  # a CLI write: its own connection
            result = ledger.append([AddEntry.create(signal_type="sha256", value=value)])
        committed = time.monotonic()
        size = result.checkpoint.size
        while True:
            try:
                have = c.entry_count(c.get_log(p["origin"]).log_id)
            except Exception:  # noqa: BLE001 - C holds no entry of A yet
                have = 0
            now = time.monotonic()
            if have >= size:
                samples.append({"size": size, "committed": committed, "at_c": now})
                break
            if now - committed > p["timeout"]:
                timeouts += 1
                break
            time.sleep(0.002)
    c.close()
    return {"samples": samples, "timeouts": timeouts}


def run_child(mode: str, params: str) -> None:
    p = json.loads(params)
    if mode == "witnessed":
        print(json.dumps(child_witnessed(p)))
        return
    if mode == "sync":
        out = asyncio.run(child_sync(p))
    elif mode == "raw":
        out = asyncio.run(child_raw(p))
    elif mode == "fetch":
        out = asyncio.run(child_fetch(p))
    else:
        out = child_prop(p)
    print(json.dumps(out))


async def spawn(mode: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run a child mode of this script; its last stdout line is its JSON result."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--child",
        mode,
        json.dumps(params),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed ({proc.returncode}):\n{err.decode()}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# -- nodes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """A node directory and the address it serves on."""

    dir: Path
    origin: str
    port: int

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.listen}"

    def cert_pem(self) -> str:
        from node.config import load_config

        return load_config(self.dir).tls_cert_path.read_text(encoding="ascii")

    def paths(self) -> tuple[str, str]:
        from node.config import load_config

        config = load_config(self.dir)
        return str(config.tls_cert_path), str(config.tls_key_path)

    def vkey(self) -> str:
        from node.ledger.service import Ledger

        with Ledger.open(self.dir, read_only=True) as ledger:
            return ledger.own_log.verifier_key


def make_node(base: Path, name: str, origin: str) -> Node:
    from node.ledger.provision import init_node

    node = Node(base / name, origin, free_port())
    init_node(node.dir, origin, listen=node.listen)
    return node


def introduce(node: Node, peer: Node, *, follow: Node | None = None) -> None:
    """``node`` adds ``peer`` (role peer), as `hashmesh peer add` does; may follow an origin."""
    from node.cli.cards import make_card
    from node.ledger.service import Ledger

    card = make_card(name=peer.origin, url=peer.url, tls_cert=peer.cert_pem(), vkey=peer.vkey())
    with Ledger.open(node.dir) as ledger:
        ledger.peers.add_peer(card.peer_record("peer"))
        if follow is not None:
            ledger.follow(follow.origin, follow.vkey())


@dataclass
class Serving:
    stop: asyncio.Event
    task: asyncio.Task[None]


async def serve(node: Node, *, sync: bool) -> Serving:
    from node.api.server import RunningServer, run_server

    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_server(
            node.dir,
            node.listen,
            sync=sync,
            poll_interval=30.0,
            on_started=started.set_result,
            stop=stop,
        )
    )
    await asyncio.wait_for(started, timeout=30)
    return Serving(stop, task)


async def shutdown(*servings: Serving) -> None:
    for s in servings:
        s.stop.set()
    await asyncio.gather(*(asyncio.wait_for(s.task, timeout=30) for s in servings))


def import_entries(node: Node, n: int) -> None:
    from node.ledger.hashlist import HashListReader
    from node.ledger.service import Ledger

    rng = random.Random(1)
    lines = [f"{rng.getrandbits(256):064x}" for _ in range(n)]
    with Ledger.open(node.dir) as ledger:
        reader = HashListReader(fmt="lines", default_type="sha256")
        result = ledger.import_lines(reader.read(lines))
    assert result.append.count == n, result.append.count


def held(node: Node, origin: str) -> int:
    from node.ledger.service import Ledger

    with Ledger.open(node.dir, read_only=True) as ledger:
        return ledger.replica(origin).state().size


async def wait_held(node: Node, origin: str, size: int, *, within: float) -> None:
    for _ in range(int(within / 0.2)):
        if held(node, origin) >= size:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"{node.dir.name} did not reach {size:,} entries of {origin} in {within} s")


def raw_leaf_rate(n: int) -> float:
    sha = __import__("hashlib").sha256
    datas = [
        b'{"kind":"add","labels":[],"salt":"%032x","signal":{"type":"sha256","value":"%064x"},'
        b'"v":2}' % (i, i)
        for i in range(n)
    ]
    started = time.perf_counter()
    for d in datas:
        sha(b"\x00" + d).digest()
    return n / (time.perf_counter() - started)


# -- baseline server ----------------------------------------------------------------


async def start_baseline(a: Node, b: Node, sizes: list[int]) -> Any:
    """The same page bodies (by size) from memory, over the same mutual TLS as A's API."""
    from aiohttp import web

    from node.api.server import start_server
    from node.tls import server_ssl_context

    bodies = {size: b"x" * size for size in set(sizes)}

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            body=bodies[sizes[int(request.query["i"])]], content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/page", page)
    cert, key = a.paths()
    ctx = server_ssl_context(Path(cert), Path(key), [b.cert_pem()])
    return await start_server(app, ctx)


# -- reporting ----------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def print_profile(path: str, title: str, top: int) -> None:
    stats = pstats.Stats(path)
    rows = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _cc, _nc, tt, _ct, _callers in rows.values())
    idle = sum(tt for (_f, _l, func), (_cc, _nc, tt, _ct, _c) in rows.items() if "epoll" in func)
    print(
        f"\n  profile, {title}: {total:.2f} s of own time, of which {idle:.2f} s idle in epoll"
        f" (waiting for A or for the writer thread); top {top} by own time"
    )
    print(f"    {'own s':>7} {'cum s':>7} {'calls':>9}  function")
    ranked = sorted(rows.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for (file, line, func), (_cc, nc, tt, ct, callers) in ranked:
        print(f"    {tt:>7.2f} {ct:>7.2f} {nc:>9,}  {_name(file, line, func)}")
        if line == 0 and "epoll" not in func:
            # A builtin (an SQLite call, a regex): say who spends it.
            by = sorted(callers.items(), key=lambda kv: kv[1][2], reverse=True)[:3]
            for (cfile, cline, cfunc), (_ccc, cnc, ctt, _cct) in by:
                print(f"    {'':>7} {ctt:>7.2f} {cnc:>9,}    from {_name(cfile, cline, cfunc)}")


def _name(file: str, line: int, func: str) -> str:
    return f"{func} ({Path(file).name}:{line})" if line else func


@dataclass
class Round:
    peer: str
    started: float
    ended: float
    appended: int
    size: int


def record_rounds(rounds: list[Round]) -> None:
    """Time every sync round the runners of this process make (instrumentation only)."""
    import node.sync.runner as runner_mod

    sync_peer = runner_mod.sync_peer

    async def timed(db: Any, client: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        report = await sync_peer(db, client, **kwargs)
        size = max((o.size for o in report.origins if o.origin == ORIGIN_A), default=0)
        rounds.append(Round(client.name, started, time.monotonic(), report.appended, size))
        return report

    runner_mod.sync_peer = timed  # type: ignore[assignment]


def first_round(rounds: list[Round], peer: str, size: int) -> Round | None:
    for r in rounds:
        if r.peer == peer and r.appended and r.size >= size:
            return r
    return None


# -- propagation with witness cosignatures (issue 19) --------------------------------

ORIGIN_D = "witness-d.example/hashmesh"
ORIGIN_E = "witness-e.example/hashmesh"
WITNESSED_TIMEOUT = 10.0  # seconds: a sample this slow waited for a poll


@dataclass
class Timeline:
    """When each witness cosigned and each node announced a checkpoint (this process)."""

    cosigned: list[tuple[str, int, float]] = field(default_factory=list)
    announced: list[tuple[str, str, int, float]] = field(default_factory=list)
    hubs: dict[int, str] = field(default_factory=dict)


def record_witnessing(timeline: Timeline) -> None:
    """Time every cosignature made and every announcement (instrumentation only)."""
    from node.ledger.events import CheckpointHub
    from node.ledger.witness import Cosigned, Witness
    from protocol.checkpoint import CheckpointNote

    add_checkpoint = Witness.add_checkpoint
    publish = CheckpointHub.publish

    def cosign(self: Witness, old: int, proof: Any, note: CheckpointNote) -> Cosigned:
        done = add_checkpoint(self, old, proof, note)
        timeline.cosigned.append((self.signer.name, done.size, time.monotonic()))
        return done

    def announce(self: CheckpointHub, origin: str, size: int) -> None:
        timeline.announced.append(
            (timeline.hubs.get(id(self), "?"), origin, size, time.monotonic())
        )
        publish(self, origin, size)

    Witness.add_checkpoint = cosign  # type: ignore[method-assign]
    CheckpointHub.publish = announce  # type: ignore[method-assign]


async def serve_witnessed(node: Node, timeline: Timeline) -> Serving:
    """Serve like `hashmesh serve` at the default poll interval; name the node's hub."""
    from node.api.server import RunningServer, run_server
    from node.api.state import HUB_KEY

    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_server(node.dir, node.listen, sync=True, on_started=started.set_result, stop=stop)
    )
    server = await asyncio.wait_for(started, timeout=30)
    timeline.hubs[id(server.runner.app[HUB_KEY])] = node.origin
    return Serving(stop, task)


def witness_key(node: Node) -> str:
    from node.config import load_config
    from node.ledger.witness import load_witness_signer

    return load_witness_signer(load_config(node.dir)).verifier().to_text()


async def witnessed_run(
    work: Path, *, threshold: int, samples: int, timeline: Timeline
) -> dict[str, Any]:
    """One network A; B, D, E witnesses; C requiring ``threshold`` of them."""
    from node.config import WitnessAsk, WitnessRequirement, append_witness_setting

    a = make_node(work, "a", ORIGIN_A)
    witnesses = [
        make_node(work, n, o) for n, o in (("b", ORIGIN_B), ("d", ORIGIN_D), ("e", ORIGIN_E))
    ]
    c = make_node(work, "c", ORIGIN_C)
    counted = witnesses[:1] if threshold <= 1 else witnesses
    for w in witnesses:
        introduce(a, w)
        introduce(w, a, follow=a)
        append_witness_setting(a.dir, WitnessAsk(peer=w.origin, key=witness_key(w)))
    for w in counted:
        introduce(w, c)
        introduce(c, w)
    with __import__("node.ledger.service").ledger.service.Ledger.open(c.dir) as ledger:
        ledger.follow(ORIGIN_A, a.vkey())
    keys = tuple(witness_key(w) for w in counted)
    if threshold:
        append_witness_setting(
            c.dir, WitnessRequirement(origin=ORIGIN_A, keys=keys, threshold=threshold)
        )
    servings = [await serve_witnessed(n, timeline) for n in (a, *witnesses, c)]
    try:
        await asyncio.sleep(3.0)  # every runner on every event stream, witness loops started
        timeline.cosigned.clear()
        timeline.announced.clear()
        prop = await spawn(
            "witnessed",
            {
                "a": str(a.dir),
                "c": str(c.dir),
                "origin": ORIGIN_A,
                "samples": samples,
                "seed": threshold,
                "timeout": WITNESSED_TIMEOUT,
            },
        )
    finally:
        await shutdown(*servings)
    names = {w.origin: f"{w.origin}/witness" for w in counted}
    return {"prop": prop, "counted": names}


def report_witnessed(label: str, threshold: int, run: dict[str, Any], tl: Timeline) -> float:
    """Print one run's latencies and breakdown; returns its p50 in ms."""
    got = run["prop"]["samples"]
    counted: dict[str, str] = run["counted"]  # relay origin -> its witness key name
    total = [(s["at_c"] - s["committed"]) * 1000 for s in got]
    parts: dict[str, list[float]] = {
        "A commit -> the k-th witness cosignature": [],
        "k-th cosignature -> announced on C's path (a witness's event stream)": [],
        "announcement -> C holds the entry (C's round: fetch, verify, commit)": [],
    }
    for s in got if threshold else ():
        size = int(s["size"])
        cosigns = sorted(t for name, n, t in tl.cosigned if n == size and name in counted.values())
        if len(cosigns) < threshold:
            continue
        cosign = cosigns[threshold - 1]
        # Each counted witness announces the checkpoint once it both holds it
        # and has cosigned it; C can accept at the k-th such announcement.
        own = {name: t for name, n, t in tl.cosigned if n == size}
        ready = sorted(
            min(
                (
                    t
                    for hub, origin, n, t in tl.announced
                    if hub == relay and origin == ORIGIN_A and n >= size and t >= own.get(key, 1e18)
                ),
                default=math.inf,
            )
            for relay, key in counted.items()
        )
        announce = ready[threshold - 1]
        if announce == math.inf or announce > s["at_c"]:
            continue
        for key, v in zip(
            parts,
            (cosign - s["committed"], announce - cosign, s["at_c"] - announce),
            strict=True,
        ):
            parts[key].append(max(v, 0.0) * 1000)
    p50, p95, p99 = (percentile(total, q) for q in (0.5, 0.95, 0.99))
    ok = p50 <= P50_TARGET_MS and p99 <= P99_TARGET_MS and not run["prop"]["timeouts"]
    targets = f"targets p50 <= {P50_TARGET_MS:.0f}, p99 <= {P99_TARGET_MS:.0f}: " + (
        "met" if ok else "MISSED"
    )
    print(
        f"\n  {label}: {len(got)} single entries at random 0.5-5 s intervals "
        f"({run['prop']['timeouts']} over {WITNESSED_TIMEOUT:.0f} s), A commit -> C holds it:"
    )
    print(
        f"    p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms, max {max(total):.0f} ms"
        + (f" ({targets})" if threshold else "")
    )
    if threshold:
        explained = len(parts[next(iter(parts))])
        print(f"    where a sample's time goes (medians over {explained} samples):")
    for key, values in parts.items():
        if values:
            print(
                f"      {statistics.median(values):>6.1f} ms  (p95 {percentile(values, 0.95):>6.1f})  {key}"
            )
    return p50


async def bench_witnessed(args: argparse.Namespace, work: Path) -> None:
    logging.getLogger("hashmesh").setLevel(logging.ERROR)
    samples = args.samples if args.samples is not None else 30
    print(
        f"hashmesh witnessed propagation benchmark, python {sys.version.split()[0]}, "
        f"{samples} samples per policy, poll interval 30 s (default)"
    )
    timeline = Timeline()
    record_witnessing(timeline)
    baseline: float | None = None
    for threshold, label in (
        (0, "baseline, no policy (C syncs from B, requires nothing)"),
        (1, "1 of 1 (C requires B, syncs from B)"),
        (2, "2 of 3 (C requires 2 of B, D, E, syncs from all three)"),
    ):
        run_dir = work / f"k{threshold}"
        run_dir.mkdir()
        run = await witnessed_run(run_dir, threshold=threshold, samples=samples, timeline=timeline)
        p50 = report_witnessed(label, threshold, run, timeline)
        if baseline is None:
            baseline = p50
        else:
            print(f"    p50 is {p50 / baseline:.2f}x the baseline's (same process, same machine)")


# -- main ---------------------------------------------------------------------------


async def bench(args: argparse.Namespace, work: Path) -> None:
    # The runners log each failed connect while the three nodes come up one by one.
    logging.getLogger("hashmesh.sync").setLevel(logging.ERROR)
    n = args.entries
    samples = args.samples if args.samples is not None else (50 if args.quick else 200)
    print(f"hashmesh sync benchmark, {n:,} sha256 entries, python {sys.version.split()[0]}")

    a = make_node(work, "a", ORIGIN_A)
    b = make_node(work, "b", ORIGIN_B)
    started = time.perf_counter()
    import_entries(a, n)
    print(f"  (setup: {n:,} entries imported at A in {time.perf_counter() - started:.1f} s)")
    introduce(a, b)
    introduce(b, a, follow=a)
    b_fresh = work / "b-fresh"
    shutil.copytree(b.dir, b_fresh)
    leaf_rate = raw_leaf_rate(min(n, 1_000_000))
    b_cert, b_key = b.paths()

    # 1. initial sync, B in a child process, A serving here.
    serving_a = await serve(a, sync=False)
    sync = await spawn("sync", {"node": str(b.dir), "origin": ORIGIN_A})
    assert sync["held"] == n == sync["appended"] == sync["checkpoint"], sync
    rate = n / sync["seconds"]
    pages = sync["page_bytes"]
    page_total = sum(pages)

    # 2. baselines: same bytes and page count from memory; PeerClient fetch only.
    baseline = await start_baseline(a, b, pages)
    raw = await spawn(
        "raw",
        {
            "url": baseline.url,
            "pages": len(pages),
            "cert": b_cert,
            "key": b_key,
            "server_pem": a.cert_pem(),
        },
    )
    await baseline.close()
    assert raw["bytes"] == page_total, (raw["bytes"], page_total)
    fetch = await spawn(
        "fetch",
        {
            "url": a.url,
            "origin": ORIGIN_A,
            "entries": n,
            "cert": b_cert,
            "key": b_key,
            "server_pem": a.cert_pem(),
        },
    )
    assert fetch["entries"] == n
    profile = None
    if args.profile:
        prof_dir = shutil.copytree(b_fresh, work / "b-prof")
        profile = str(work / "sync.prof")
        prof = await spawn("sync", {"node": str(prof_dir), "origin": ORIGIN_A, "profile": profile})
    await shutdown(serving_a)

    mb = page_total / 1e6
    sync_mbs = mb / sync["seconds"]
    raw_mbs = mb / raw["seconds"]
    fetch_rate = n / fetch["seconds"]
    verdict = "met" if rate >= ENTRY_TARGET else "MISSED"
    print(
        f"  initial sync B <- A:       {rate:>12,.0f} entries/s  ({sync['seconds']:.2f} s, "
        f"target >= {ENTRY_TARGET:,}: {verdict})"
    )
    print(f"  peak RSS of the syncing B: {sync['rss_mib']:>12,.0f} MiB")
    print(
        f"  CPU of the syncing B:      {sync['cpu']:>12.2f} s          (its writer thread "
        f"{sync['writer_cpu']:.2f} s; {sync['disk_written'] / 1e6:,.0f} MB written to disk)"
    )
    print(
        f"  entries pages fetched:     {len(pages):>12,}        ({mb:,.1f} MB of entry bundles, "
        f"{page_total / n:.1f} B/entry; other bodies {sync['other_bytes'] / 1e3:,.1f} kB)"
    )
    print(f"  requests by path:          {sync['requests']}")
    print(
        f"  sync as bytes moved:       {sync_mbs:>12,.1f} MB/s      "
        f"({sync_mbs / raw_mbs:.3f} of the baseline)"
    )
    print(
        f"  baseline same bytes, TLS:  {raw_mbs:>12,.1f} MB/s      ({raw['seconds']:.2f} s, "
        f"{len(pages)} requests, bare aiohttp)"
    )
    print(
        f"  baseline PeerClient fetch: {fetch_rate:>12,.0f} entries/s  ({fetch['seconds']:.2f} s, "
        f"A's real server, bundle decode, no verify/store; sync is {rate / fetch_rate:.2f}x)"
    )
    print(
        f"  baseline raw leaf hash:    {leaf_rate:>12,.0f} leaves/s   (sync is {rate / leaf_rate:.3f}x)"
    )
    print("  where B's wall time went (instrumented, not profiled):")
    for key, seconds in sorted(sync["clock"].items(), key=lambda kv: -kv[1]):
        print(f"    {seconds:>7.2f} s  {key}")
    if profile is not None:
        print(
            f"\n  profiled run (cProfile on, so slower): {n / prof['seconds']:,.0f} entries/s "
            f"({prof['seconds']:.2f} s)"
        )
        print_profile(profile + ".loop", "event-loop thread (fetch, parse)", args.top)
        print_profile(profile + ".writer", "database writer thread (verify, store)", args.top)

    # 3. propagation A -> B -> C, all live, C follows A through B only.
    c = make_node(work, "c", ORIGIN_C)
    introduce(b, c)
    introduce(c, b, follow=a)
    rounds: list[Round] = []
    record_rounds(rounds)
    servings = [await serve(node, sync=True) for node in (a, b, c)]
    try:
        started = time.perf_counter()
        await wait_held(c, ORIGIN_A, n, within=600.0)
        catch_up = time.perf_counter() - started
        await asyncio.sleep(1.5)  # every runner on every event stream
        prop = await spawn(
            "prop",
            {
                "a": str(a.dir),
                "b": str(b.dir),
                "c": str(c.dir),
                "origin": ORIGIN_A,
                "samples": samples,
                "warmup": 3,
                "timeout": 10.0,
            },
        )
    finally:
        await shutdown(*servings)

    print(
        f"\n  relay catch-up C <- B ({n:,} entries, three nodes in one process): "
        f"{n / catch_up:,.0f} entries/s ({catch_up:.1f} s)"
    )
    got = prop["samples"]
    total_ms = [(s["at_c"] - s["committed"]) * 1000 for s in got]
    hop1_ms = [(s["at_b"] - s["committed"]) * 1000 for s in got]
    hop2_ms = [(s["at_c"] - s["at_b"]) * 1000 for s in got]
    p50, p95, p99 = (percentile(total_ms, q) for q in (0.5, 0.95, 0.99))
    ok = p50 <= P50_TARGET_MS and p99 <= P99_TARGET_MS
    print(
        f"  propagation A -> B -> C, {len(got)} samples ({prop['timeouts']} timed out), "
        f"commit at A until C holds it:"
    )
    print(
        f"    p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms, max {max(total_ms):.0f} ms "
        f"(targets p50 <= {P50_TARGET_MS:.0f}, p99 <= {P99_TARGET_MS:.0f}: "
        f"{'met' if ok else 'MISSED'})"
    )
    print(
        f"    hop A -> B: p50 {percentile(hop1_ms, 0.5):.0f} ms, p99 {percentile(hop1_ms, 0.99):.0f} ms;"
        f" hop B -> C: p50 {percentile(hop2_ms, 0.5):.0f} ms, p99 {percentile(hop2_ms, 0.99):.0f} ms"
    )
    parts: dict[str, list[float]] = {
        "A commit -> B round starts (own-log poll, event, wake)": [],
        "B round (evidence, logs, entries, verify, commit)": [],
        "B round ends -> C round starts (B announces before its round returns)": [],
        "C round": [],
    }
    for s in got:
        rb = first_round(rounds, ORIGIN_A, int(s["size"]))
        rc = first_round(rounds, ORIGIN_B, int(s["size"]))
        if rb is None or rc is None:
            continue
        values = (
            rb.started - s["committed"],
            rb.ended - rb.started,
            rc.started - rb.ended,
            rc.ended - rc.started,
        )
        for key, v in zip(parts, values, strict=True):
            parts[key].append(v * 1000)
    print("    where a sample's time goes (medians over samples, from timed runner rounds):")
    for key, values in parts.items():
        if values:
            print(
                f"      {statistics.median(values):>6.1f} ms  (p95 {percentile(values, 0.95):>6.1f})  {key}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=None, help="default 1,000,000")
    parser.add_argument("--quick", action="store_true", help="100,000 entries, 50 latency samples")
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="latency samples (default 200; --witnessed: 30 per policy)",
    )
    parser.add_argument(
        "--witnessed",
        action="store_true",
        help="only the propagation with witness cosignatures (1 of 1, 2 of 3), a few minutes",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile an initial sync (cProfile)"
    )
    parser.add_argument("--top", type=int, default=15, help="profile rows per thread")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(*args.child)
        return
    if args.entries is None:
        args.entries = 100_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="hashmesh-bench-sync-") as tmp:
        asyncio.run((bench_witnessed if args.witnessed else bench)(args, Path(tmp)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
