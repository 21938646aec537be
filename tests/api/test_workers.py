"""Bulk matching in worker processes (node.api.workers; issue 14 item 5, issue 18 item 3).

Real servers over real mutual TLS, real worker processes: the answers of a
pool equal those of the server's own threads byte for byte; a worker killed
while it holds a request fails that request only (503) and is replaced; a
full pool answers 503 with ``Retry-After`` while light requests are served;
a request abandoned by its client leaves the worker usable; closing the
server leaves no worker process behind. The stand-in for a long match is
``SIGSTOP`` on the real worker (the job is then held, deterministically).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.api.app import make_app
from node.api.server import start_server
from node.api.state import ApiLimits
from node.api.workers import POOL_KEY, WorkerPool
from node.config import load_config
from node.errors import ConfigError
from node.ledger import Ledger
from node.ledger.active_index import active_index_path, build_active_file
from node.ledger.matching import make_opinion
from node.storage.segment_file import open_segment
from node.tls import client_ssl_context
from protocol.entry import AddEntry, RetractEntry
from tests.api.conftest import ORIGIN, VALUES, Served, add_peer, make_identity
from tests.waiting import PATIENCE, eventually

ServeWith = Callable[..., AsyncIterator[Served]]


def _item(signal_type: str, value: str, **extra: Any) -> dict[str, Any]:
    return {"type": signal_type, "value": value, **extra}


@pytest.fixture
def rich_node(node_dir: Path) -> Path:
    """The API node plus md5 and PDQ entries, a dispute, a retraction, a low hit cap."""
    rng = random.Random(18)
    centre = rng.getrandbits(256)
    with Ledger.open(node_dir) as ledger:
        ledger.append(
            [
                AddEntry.create(signal_type="md5", value="ab" * 16, labels=["src:md5"]),
                *(
                    AddEntry.create(
                        signal_type="pdq", value=f"{centre ^ (1 << k):064x}", quality=90
                    )
                    for k in range(6)
                ),
                AddEntry.create(signal_type="pdq", value="0" * 64, quality=10),
            ]
        )
        ledger.append([make_opinion(ledger, ORIGIN, 0, "dispute", "not ours")])
        ledger.append([RetractEntry(index=2, reason="listed by mistake")])
    config = node_dir / "config.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + "\n[match]\nmax_hits = 4\n", encoding="utf-8"
    )
    (node_dir / "centre").write_text(f"{centre:064x}", encoding="ascii")
    return node_dir


def _bodies(node_dir: Path) -> Iterator[bytes]:
    centre = (node_dir / "centre").read_text(encoding="ascii")
    exact = [_item("sha256", v) for v in VALUES] + [_item("md5", "ab" * 16)]
    yield json.dumps({"hashes": exact}).encode()
    yield json.dumps({"hashes": exact, "receipts": True}).encode()
    yield json.dumps(
        {"hashes": [*exact, _item("sha256", "AB"), "x", _item("md5", VALUES[0])]}
    ).encode()
    yield json.dumps(
        {
            "hashes": [
                _item("pdq", centre),  # six rows within 1 bit: cut at max_hits, truncated
                _item("pdq", "0" * 64, quality=20),  # below the floor: warned, exact only
                _item("sha256", VALUES[3]),
            ],
            "receipts": True,
        }
    ).encode()
    yield b'{"hashes": [], "max_distance": 65}'
    yield b"not json"
    yield b'{"hashes": [{"type": "sha256", "value": "' + VALUES[4].encode() + b'", "x": 1}]}'


async def _answers(served: Served, url: str, bodies: list[bytes]) -> list[tuple[int, bytes]]:
    answers = []
    async with served.session(served.subscriber) as s:
        for body in bodies:
            async with s.post(url + "/v1/match", data=body) as r:
                answers.append((r.status, await r.read()))
    return answers


async def test_the_pool_answers_exactly_as_the_server_threads_do(
    rich_node: Path, serve_with: ServeWith
) -> None:
    bodies = list(_bodies(rich_node))
    async for served in serve_with(ApiLimits(workers=1)):
        pool = served.server.runner.app[POOL_KEY]
        pooled = await _answers(served, served.url, bodies)
        assert len(pool.pids) == 1  # every request went there, PDQ ones included
        # The same node served by the server's own threads, beside it.
        app = make_app(served.db, served.hub, origin=ORIGIN, limits=ApiLimits(workers=0))
        assert POOL_KEY not in app
        in_threads = await start_server(app, served.ssl_ctx)
        try:
            threads = await _answers(served, in_threads.url, bodies)
        finally:
            await in_threads.close()
    assert [status for status, _ in threads] == [200, 200, 200, 200, 400, 400, 200]
    for (status, body), (status_p, body_p) in zip(threads, pooled, strict=True):
        assert (status_p, body_p) == (status, body)
    first = json.loads(threads[0][1])
    # The dispute travels with the hit; the retracted entries 1 and 2 are gone.
    assert [m["i"] for m in first["matches"]] == [0, 3, 4, 5]
    assert first["matches"][0]["hits"][0]["opinions"][0]["verdict"] == "dispute"
    assert "receipt" in json.loads(threads[1][1])["matches"][0]["hits"][0]
    pdq = json.loads(threads[3][1])
    assert pdq["matches"][0]["truncated"] is True and len(pdq["matches"][0]["hits"]) == 4
    assert pdq["warnings"][0]["field"] == "hashes[1].quality"


async def _ready(pool: WorkerPool, size: int) -> tuple[int, ...]:
    pool.start()
    await pool.wait_ready()
    assert len(pool.pids) == size
    return pool.pids


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (an orphan's, until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


async def _busy(pool: WorkerPool, n: int) -> None:
    await eventually(lambda: pool.busy, until=lambda busy: busy == n, what=f"{n} jobs held")


async def _live(pool: WorkerPool, n: int) -> tuple[int, ...]:
    return await eventually(lambda: pool.pids, until=lambda p: len(p) == n, what=f"{n} workers")


async def _post(session: aiohttp.ClientSession, url: str, value: str) -> tuple[int, Any]:
    body = {"hashes": [_item("sha256", value)]}
    async with session.post(url + "/v1/match", json=body) as r:
        return r.status, await r.json()


async def test_a_killed_worker_fails_only_its_request_and_is_replaced(
    serve_with: ServeWith,
) -> None:
    async for served in serve_with(ApiLimits(workers=2, heavy_queue=4)):
        pool = served.server.runner.app[POOL_KEY]
        first, second = await _ready(pool, 2)
        for pid in (first, second):
            os.kill(pid, signal.SIGSTOP)
        async with served.session(served.subscriber) as s:
            requests = [asyncio.create_task(_post(s, served.url, VALUES[i])) for i in (0, 2)]
            await _busy(pool, 2)
            os.kill(first, signal.SIGKILL)
            os.kill(second, signal.SIGCONT)
            answers = sorted(await asyncio.gather(*requests), key=lambda a: a[0])
            (ok_status, ok_doc), (lost_status, lost_doc) = answers
            assert ok_status == 200 and len(ok_doc["matches"]) == 1
            assert lost_status == 503 and "worker process" in lost_doc["error"]
            pids = await _live(pool, 2)
            assert second in pids and first not in pids
            assert pool.replaced == 1
            # The pool serves again, and light requests never noticed.
            assert (await _post(s, served.url, VALUES[3]))[0] == 200
            async with s.get(served.url + "/v1/health") as r:
                assert r.status == 200


async def test_a_full_pool_answers_503_and_light_requests_are_served(
    serve_with: ServeWith,
) -> None:
    async for served in serve_with(ApiLimits(workers=1, heavy_queue=0)):
        pool = served.server.runner.app[POOL_KEY]
        (pid,) = await _ready(pool, 1)
        os.kill(pid, signal.SIGSTOP)
        try:
            async with served.session(served.subscriber) as s:
                held = asyncio.create_task(_post(s, served.url, VALUES[0]))
                await _busy(pool, 1)
                async with s.post(
                    served.url + "/v1/match", json={"hashes": [_item("sha256", VALUES[2])]}
                ) as r:
                    assert r.status == 503 and r.headers["Retry-After"] == "1"
                    assert "busy" in (await r.json())["error"]
                for path in ("/v1/health", f"/v1/checkpoint?origin={ORIGIN}"):
                    async with s.get(served.url + path) as r:
                        assert r.status == 200, path
                os.kill(pid, signal.SIGCONT)
                status, doc = await held
                assert status == 200 and doc["matches"][0]["i"] == 0
        finally:
            os.kill(pid, signal.SIGCONT)
        assert pool.lane.refused == 1 and pool.replaced == 0


async def test_an_abandoned_request_leaves_its_worker_usable(serve_with: ServeWith) -> None:
    async for served in serve_with(ApiLimits(workers=1)):
        pool = served.server.runner.app[POOL_KEY]
        (pid,) = await _ready(pool, 1)
        os.kill(pid, signal.SIGSTOP)
        try:
            async with served.session(served.subscriber) as s:
                abandoned = asyncio.create_task(_post(s, served.url, VALUES[0]))
                await _busy(pool, 1)
                abandoned.cancel()  # the client goes away; the server cancels its handler
                with contextlib.suppress(asyncio.CancelledError):
                    await abandoned
            os.kill(pid, signal.SIGCONT)
            await _busy(pool, 0)
            async with served.session(served.subscriber) as s:
                status, doc = await _post(s, served.url, VALUES[4])
            assert status == 200 and doc["matches"][0]["hits"][0]["index"] == 4
            assert pool.pids == (pid,) and pool.replaced == 0
        finally:
            os.kill(pid, signal.SIGCONT)


async def test_closing_the_server_leaves_no_worker_behind(serve_with: ServeWith) -> None:
    pids: tuple[int, ...] = ()
    async for served in serve_with(ApiLimits(workers=2)):
        pool = served.server.runner.app[POOL_KEY]
        pids = await _ready(pool, 2)
        os.kill(pids[0], signal.SIGSTOP)  # even a stuck worker is ended
        pool.stop_timeout = 0.5
    assert pids
    for pid in pids:
        assert _gone(pid), pid


async def test_a_server_closed_while_its_workers_start_leaves_none(
    serve_with: ServeWith,
) -> None:
    async for served in serve_with(ApiLimits(workers=2)):
        served.server.runner.app[POOL_KEY].start()  # closed before they are ready
    assert _our_workers() == []


def _our_workers() -> list[int]:
    """Worker processes that are children of this (the test) process."""
    found = []
    for pid in _children(os.getpid()):
        with contextlib.suppress(OSError):
            if b"node.api.workers" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return [pid for pid in found if not _gone(pid)]


def test_worker_settings_are_read_and_checked(node_dir: Path) -> None:
    config = node_dir / "config.toml"
    text = config.read_text(encoding="utf-8")
    assert load_config(node_dir).limits.workers == len(os.sched_getaffinity(0))
    config.write_text(text + "\n[api]\nworkers = 0\nworker_nice = 0\n", encoding="utf-8")
    limits = load_config(node_dir).limits
    assert (limits.workers, limits.worker_nice) == (0, 0)
    for bad, words in (("workers = -1", ">= 0"), ("worker_nice = 20", "0-19")):
        config.write_text(text + f"\n[api]\n{bad}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=words):
            load_config(node_dir)


async def test_a_served_node_stops_its_workers(tmp_path: Path, node_dir: Path) -> None:
    """``hashmesh serve`` as an operator runs it: SIGTERM ends the workers; so does SIGKILL."""
    from tests.adversary.served_process import serve_process

    client = make_identity(tmp_path, "subscriber")
    add_peer(node_dir, client, "subscriber")
    pem = load_config(node_dir).tls_cert_path.read_text(encoding="ascii")
    ctx = client_ssl_context(client.cert_path, client.key_path, pem)
    for stop in (signal.SIGTERM, signal.SIGKILL):
        served = await serve_process(node_dir)
        try:
            # Workers start with the first match.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
                status, _doc = await _post(s, served.url, VALUES[0])
            assert status == 200
            workers = await _workers_of(served.proc.pid)
            served.proc.send_signal(stop)
            await asyncio.wait_for(served.proc.wait(), PATIENCE)
            # Killed outright, the server cannot stop them: they see their
            # input end and exit by themselves.
            await _all_gone(workers, stop.name)
        finally:
            await served.stop()


async def _workers_of(pid: int) -> list[int]:
    return await eventually(
        lambda: _children(pid),
        until=lambda c: len(c) >= 1,
        what="the worker processes of serve",
    )


async def _all_gone(pids: list[int], after: str) -> None:
    await eventually(
        lambda: [pid for pid in pids if not _gone(pid)],
        until=lambda left: not left,
        what=f"the workers to exit after {after}",
    )


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        tasks = Path(f"/proc/{pid}/task")
        return [
            int(child)
            for task in tasks.iterdir()
            for child in (task / "children").read_text(encoding="ascii").split()
        ]
    return []


_CHURN = """
import resource, sys
import numpy as np
if sys.argv[1] == "kept":
    from node.api.workers import _keep_freed_memory
    _keep_freed_memory()
keep = [np.ones(1 << 10) for _ in range(50)]  # live objects, as a worker holds
def churn():
    # What a PDQ search does per block of queries: arrays of a few MB, freed.
    for _ in range(4):
        a = np.ones(3 << 17)
        b = a * 2
        del a, b
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_worker_keeps_freed_memory_instead_of_faulting_it_in_again() -> None:
    def faults(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True
        )
        return int(done.stdout)

    kept, default = faults("kept"), faults("default")
    # 240 arrays of 3 MB: with glibc's defaults most are faulted in page by
    # page (768 pages each); kept, the heap serves them from memory it holds.
    assert kept < 2_000 < default


async def test_the_pool_answers_the_same_with_the_active_key_file_damaged_or_gone(
    rich_node: Path, serve_with: ServeWith
) -> None:
    """Workers map index/active.seg: a retraction after it was written, a damaged
    file and no file at all give the same answers, byte for byte."""
    bodies = list(_bodies(rich_node))
    path = active_index_path(rich_node)
    with Ledger.open(rich_node) as ledger:
        build_active_file(ledger.store, path)
        ledger.append([RetractEntry(index=0, reason="after the file")])
    async for served in serve_with(ApiLimits(workers=1)):
        with_file = await _answers(served, served.url, bodies)
        segment = open_segment(path, "active-keys")
        keys_at = segment._infos["keys"].offset
        segment.close()
        data = bytearray(path.read_bytes())
        data[keys_at + 3] ^= 1  # inside the keys: found by the block checksum
        path.write_bytes(bytes(data))  # a new identity: the worker looks again
        damaged = await _answers(served, served.url, bodies)
        path.unlink()
        without = await _answers(served, served.url, bodies)
    assert with_file == damaged == without
    first = json.loads(without[0][1])
    assert [m["i"] for m in first["matches"]] == [3, 4, 5]  # 0 retracted after the file
