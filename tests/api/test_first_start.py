"""A first start without the PDQ index file: the match workers wait for serve's file.

``hashmesh serve`` runs in this process (``run_server``) with a real match
worker process, mutual TLS and the operations listener. With more PDQ rows
than ``[match] worker_read_max`` and no ``index/pdq.seg``, the server reads
the table and writes the file; the worker must not read the table itself.
While the server reads, PDQ queries are answered 503 with ``Retry-After``
and a message saying why, exact look-ups are answered, ``/readyz`` says the
node is not ready and why; once the server has loaded the index it answers
PDQ queries itself while it writes the file; once the file is written the
worker maps it and answers them.

To look at each moment, the server's first read of the table is held in its
reader thread, and its write just before the file's rename (the
``before_rename`` hook of the real writer, in the server's background
thread: the file is complete under its temporary name, which the worker
must not take for the index either). The worker process is not held.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.api import match
from node.api.server import RunningServer, run_server
from node.config import load_config
from node.ledger import Ledger
from node.ledger.live_pdq import LivePdqIndex, pdq_index_path
from node.storage.ledger_store import LedgerStore
from node.tls import client_ssl_context
from protocol.entry import AddEntry
from tests.api.conftest import VALUES, add_peer, init_api_node, make_identity
from tests.waiting import PATIENCE, eventually

N_PDQ = 300


@dataclass
class Node:
    path: Path
    pdq: list[str]


def _node(tmp_path: Path, worker_read_max: int, workers: int = 1) -> Node:
    path = init_api_node(tmp_path / "node", VALUES)
    rng = random.Random(18)
    pdq = [f"{rng.getrandbits(256):064x}" for _ in range(N_PDQ)]
    with Ledger.open(path) as ledger:
        ledger.append([AddEntry.create(signal_type="pdq", value=v, quality=90) for v in pdq])
    with (path / "config.toml").open("a", encoding="utf-8") as f:
        f.write(
            f"\n[match]\nworker_read_max = {worker_read_max}\n"
            f'\n[api]\nworkers = {workers}\n\n[ops]\nlisten = "127.0.0.1:0"\n'
        )
    return Node(path, pdq)


@dataclass
class Running:
    api: str
    ops: str
    session: aiohttp.ClientSession

    async def match(self, *items: tuple[str, str]) -> tuple[int, dict[str, str], Any]:
        body = {"hashes": [{"type": t, "value": v} for t, v in items]}
        async with self.session.post(self.api + "/v1/match", json=body) as r:
            return r.status, dict(r.headers), await r.json()

    async def answered(self, value: str) -> Any:
        """The document of a PDQ query of ``value``, once one is answered 200."""
        _, _, doc = await eventually(
            lambda: self.match(("pdq", value)),
            until=lambda answer: answer[0] == 200,
            what=f"a PDQ answer for {value[:8]}",
        )
        return doc

    async def readyz(self) -> tuple[int, Any]:
        async with self.session.get(self.ops + "/readyz") as r:
            return r.status, await r.json()


@asynccontextmanager
async def _serving(node: Path, tmp_path: Path) -> AsyncIterator[Running]:
    client = make_identity(tmp_path, "subscriber")
    add_peer(node, client, "subscriber")
    server_pem = load_config(node).tls_cert_path.read_text(encoding="ascii")
    ctx = client_ssl_context(client.cert_path, client.key_path, server_pem)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    api: asyncio.Future[RunningServer] = loop.create_future()
    ops: asyncio.Future[RunningServer] = loop.create_future()
    task = asyncio.create_task(
        run_server(
            node,
            "127.0.0.1:0",
            sync=False,
            stop=stop,
            on_started=api.set_result,
            on_ops_started=ops.set_result,
            start_workers=True,
        )
    )
    try:
        await asyncio.wait_for(asyncio.shield(ops), PATIENCE)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            ops_url = f"http://{ops.result().host}:{ops.result().port}"
            yield Running(api.result().url, ops_url, session)
    finally:
        stop.set()
        await asyncio.wait_for(task, PATIENCE)


def _hold_the_write(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold serve's PDQ file write just before its rename; (writing, release)."""
    writing, release = threading.Event(), threading.Event()
    real = LivePdqIndex.persist

    def held(
        self: LivePdqIndex,
        store: LedgerStore | Path,
        *,
        before_rename: Callable[[Path], None] | None = None,
    ) -> bool:
        def wait(_temporary: Path) -> None:
            writing.set()
            release.wait(PATIENCE)

        return real(self, store, before_rename=wait)

    monkeypatch.setattr(LivePdqIndex, "persist", held)
    return writing, release


def _hold_the_load(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold serve's first read of the ``pdq`` table (in its reader thread); (reading, release).

    Only the server's own, writable index is held: the worker is another
    process, which this patch does not reach.
    """
    reading, release = threading.Event(), threading.Event()
    real = LivePdqIndex.read_step

    def held(self: LivePdqIndex, matching: Any, limit: int = 100_000) -> int:
        if self.writable:
            reading.set()
            release.wait(PATIENCE)
        return real(self, matching, limit)

    monkeypatch.setattr(LivePdqIndex, "read_step", held)
    return reading, release


async def test_workers_wait_for_serves_file_and_exact_lookups_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = _node(tmp_path, worker_read_max=100)
    reading, loaded = _hold_the_load(monkeypatch)
    writing, written = _hold_the_write(monkeypatch)
    hit = [(len(VALUES) + 7, 0)]
    in_server: list[int] = []
    matched_here = match.match_document

    def counted(*args: Any) -> Any:
        in_server.append(1)
        return matched_here(*args)

    # The server process's own matcher; the worker process imports its own.
    monkeypatch.setattr(match, "match_document", counted)
    try:
        async with _serving(node.path, tmp_path) as running:
            # 1. The server is still reading the table: the worker does not read it too.
            await eventually(reading.is_set, what="serve reading the pdq table")
            status, headers, doc = await running.match(("pdq", node.pdq[7]))
            assert status == 503 and headers["Retry-After"] == "30", doc
            assert "PDQ index is being built" in doc["error"]
            assert "exact look-ups meanwhile" in doc["error"]
            # A request mixing both waits too (a partial answer would read as no hit) ...
            status, _, doc = await running.match(("sha256", VALUES[0]), ("pdq", node.pdq[7]))
            assert status == 503
            # ... but exact look-ups are answered.
            status, _, doc = await running.match(("sha256", VALUES[0]), ("sha256", VALUES[2]))
            assert status == 200 and [m["i"] for m in doc["matches"]] == [0, 1], doc
            status, ready = await running.readyz()
            assert status == 503 and "indexes: the PDQ index is still loading" in ready["reasons"]
            # 2. Loaded, writing the file (held before its rename): the server answers
            # PDQ itself, which the worker, without the file, would still refuse.
            loaded.set()
            await eventually(writing.is_set, what="serve writing the PDQ index file")
            assert not pdq_index_path(node.path).exists()
            assert list(pdq_index_path(node.path).parent.glob("*.tmp*")), "a temporary file"
            status, _, doc = await running.match(("pdq", node.pdq[7]), ("sha256", VALUES[3]))
            assert status == 200, doc
            assert [(h["index"], h["distance"]) for h in doc["matches"][0]["hits"]] == hit
            assert [m["i"] for m in doc["matches"]] == [0, 1]
            assert len(in_server) == 1
            status, ready = await running.readyz()
            assert status == 200 and ready["reasons"] == [], ready
            # 3. Written: the worker maps it and answers.
            written.set()
            await eventually(pdq_index_path(node.path).exists, what="the file in place")
            doc = await running.answered(node.pdq[7])
            assert [(h["index"], h["distance"]) for h in doc["matches"][0]["hits"]] == hit

            # Once serve has mapped its new file, PDQ goes to the worker again.
            async def by_the_worker() -> bool:
                before = len(in_server)
                status, _, _ = await running.match(("pdq", node.pdq[7]))
                return status == 200 and len(in_server) == before

            await eventually(by_the_worker, until=bool, what="PDQ answered by the worker")
            before = len(in_server)
            status, _, doc = await running.match(("pdq", node.pdq[7]))
            assert status == 200 and len(in_server) == before  # not matched in the server
            assert [(h["index"], h["distance"]) for h in doc["matches"][0]["hits"]] == hit
    finally:
        loaded.set()
        written.set()


async def test_a_small_table_is_read_by_the_workers_at_once(tmp_path: Path) -> None:
    node = _node(tmp_path, worker_read_max=N_PDQ)
    async with _serving(node.path, tmp_path) as running:
        doc = await running.answered(node.pdq[11])
        (found,) = doc["matches"]
        assert [h["index"] for h in found["hits"]] == [len(VALUES) + 11]
        _, ready = await eventually(
            running.readyz, until=lambda answer: answer[0] == 200, what="ready"
        )
    # 300 rows: below what makes a file worth writing; no worker waited for one.
    assert not pdq_index_path(node.path).exists()
    assert json.dumps(ready).count("indexes") == 0


async def test_a_failed_write_is_tried_again_while_the_workers_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle node whose first write fails (a full disk) must not leave PDQ at 503 for good."""
    node = _node(tmp_path, worker_read_max=100)
    real = LivePdqIndex.persist
    tries: list[int] = []

    def full_once(self: LivePdqIndex, store: LedgerStore | Path, **kwargs: Any) -> bool:
        if isinstance(store, Path):  # serve's call (it opens a store and calls again)
            tries.append(1)
            if len(tries) == 1:
                raise OSError(28, "No space left on device")
        return real(self, store, **kwargs)

    monkeypatch.setattr(LivePdqIndex, "persist", full_once)
    monkeypatch.setattr(match, "PERSIST_RETRY", 0.2)
    async with _serving(node.path, tmp_path) as running:
        await eventually(pdq_index_path(node.path).exists, what="the second write")
        doc = await running.answered(node.pdq[3])
        (found,) = doc["matches"]
        assert [h["index"] for h in found["hits"]] == [len(VALUES) + 3]
    assert len(tries) == 2


async def test_without_workers_a_large_first_load_answers_pdq_503_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``workers = 0``: a PDQ request does not hold the heavy lane behind a long first load."""
    node = _node(tmp_path, worker_read_max=100, workers=0)
    reading, release = threading.Event(), threading.Event()
    real = LivePdqIndex.read_step
    steps: list[int] = []

    def held(self: LivePdqIndex, matching: Any, limit: int = 100_000) -> int:
        if self.writable:
            steps.append(1)
            if len(steps) == 2:  # all 300 rows read, the load not finished
                reading.set()
                release.wait(PATIENCE)
        return real(self, matching, limit)

    monkeypatch.setattr(LivePdqIndex, "read_step", held)
    try:
        async with _serving(node.path, tmp_path) as running:
            await eventually(reading.is_set, what="serve's first load under way")
            status, headers, doc = await running.match(("pdq", node.pdq[5]))
            assert status == 503 and headers["Retry-After"] == "30", doc
            assert "the PDQ index is loading (300 PDQ hashes read so far)" in doc["error"]
            status, _, doc = await running.match(("sha256", VALUES[4]))
            assert status == 200 and doc["matches"][0]["hits"][0]["index"] == 4, doc
            release.set()
            doc = await running.answered(node.pdq[5])
            assert [h["index"] for h in doc["matches"][0]["hits"]] == [len(VALUES) + 5]
    finally:
        release.set()
