"""/readyz, /metrics and the access log, on real nodes serving and syncing on 127.0.0.1.

Node A writes its own log; node B follows it over real mutual TLS. Both run
``run_server`` with ``[ops] listen``. ``/metrics`` is parsed with
prometheus_client's own parser, and no label value of any metric may hold a
hash value, a salt or an entry label.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import node.api.ops as ops_module
from node.api.ops import OpsContext, make_ops_app
from node.api.server import RunningServer, run_server, start_ops_server
from node.cli import main as hashmesh
from node.config import load_config
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.tls import client_ssl_context
from protocol.entry import AddEntry
from tests.adversary.corrupter import tamper
from tests.api.conftest import add_peer, make_expired_identity
from tests.sync.conftest import A, B, add_card, make_node, sha
from tests.waiting import PATIENCE, eventually

TOKEN = "metrics-token-0123456789"
LABEL = "iwf:category-secret-label"


@dataclass
class Node:
    node_dir: Path
    api: RunningServer
    ops: RunningServer
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def get(self, path: str) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            aiohttp.ClientSession() as s,
            s.get(self.ops.url + path, headers=headers) as resp,
        ):
            return resp.status, await resp.text()

    async def samples(self) -> list[Sample]:
        status, text = await self.get("/metrics")
        assert status == 200
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=PATIENCE)


def configure(node_dir: Path, extra: str = "") -> Path:
    with (node_dir / "config.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[ops]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\n{extra}\n')
    return node_dir


async def start(node_dir: Path, *, sync: bool, poll: float = 3600.0) -> Node:
    loop = asyncio.get_running_loop()
    api: asyncio.Future[RunningServer] = loop.create_future()
    ops: asyncio.Future[RunningServer] = loop.create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_server(
            node_dir,
            "127.0.0.1:0",
            sync=sync,
            poll_interval=poll,
            on_started=api.set_result,
            on_ops_started=ops.set_result,
            stop=stop,
        )
    )
    await asyncio.wait_for(asyncio.gather(api, ops), timeout=PATIENCE)
    return Node(node_dir, api.result(), ops.result(), stop, task)


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    """A serves its own log; B follows A (polling every 0.2 s once A is gone)."""
    a_dir = configure(make_node(tmp_path, "a", A))
    b_dir = configure(make_node(tmp_path, "b", B), "peer_failing_after = 0.001")
    a = await start(a_dir, sync=False)
    b = await start(b_dir, sync=True, poll=0.2)
    add_card(a_dir, b_dir, b.api.url)  # A lets B in (role peer)
    add_card(b_dir, a_dir, a.api.url)  # B follows A
    try:
        yield a, b
    finally:
        for n in (a, b):
            if not n.task.done():
                await n.close()


async def match_at(a: Node, b_dir: Path, values: list[str]) -> dict[str, object]:
    """POST /v1/match to A with B's certificate (B is a peer of A)."""
    mine = load_config(b_dir)
    theirs = load_config(a.node_dir).tls_cert_path.read_text(encoding="ascii")
    ctx = client_ssl_context(mine.tls_cert_path, mine.tls_key_path, theirs)
    body = {"hashes": [{"type": "sha256", "value": v} for v in values]}

    async def attempt() -> dict[str, object] | None:
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
                s.post(a.api.url + "/v1/match", json=body) as resp,
            ):
                return await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, OSError):
            return None  # A's watcher has not trusted B's certificate yet

    result = await eventually(attempt, what="A to answer B's match")
    assert result is not None
    return result


async def test_metrics_readyz_and_access_log_of_a_syncing_pair(
    pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hashmesh")
    a, b = pair
    with Ledger.open(a.node_dir) as ledger:
        ledger.append(
            [AddEntry.create(signal_type="sha256", value=sha(i), labels=[LABEL]) for i in range(5)]
        )
    with Ledger.open(a.node_dir, read_only=True) as ledger:
        salts = [
            json.loads(data)["salt"] for _i, data, _leaf in ledger.entries(ledger.own_log, 0, 5)
        ]
    assert len(salts) == 5

    # B follows A live: its metrics show A's log as a replica of 5 entries.
    async def replica_size() -> float | None:
        return value(await b.samples(), "hashmesh_log_entries", origin=A, kind="replica")

    await eventually(replica_size, until=lambda n: n == 5, what="B to hold A's 5 entries")
    result = await match_at(a, b.node_dir, [sha(1), sha(99)])
    assert len(result["matches"]) == 1  # type: ignore[arg-type]

    status, body = await a.get("/readyz")
    assert status == 200, body
    assert json.loads(body) == {"ready": True, "reasons": [], "warnings": []}

    a_samples = await a.samples()
    assert value(a_samples, "hashmesh_log_entries", origin=A, kind="own") == 5
    assert value(a_samples, "hashmesh_match_hashes_total", type="sha256", result="hit") == 1
    assert value(a_samples, "hashmesh_match_hashes_total", type="sha256", result="miss") == 1
    requests = value(
        a_samples,
        "hashmesh_api_requests_total",
        listener="api",
        route="/v1/match",
        role="peer",
        status="200",
    )
    assert requests == 1
    assert (
        value(
            a_samples,
            "hashmesh_api_request_duration_seconds_count",
            route="/v1/match",
            role="peer",
        )
        == 1
    )
    assert value(a_samples, "hashmesh_pdq_index_hashes") == 0
    age = value(a_samples, "hashmesh_log_checkpoint_age_seconds", origin=A)
    assert age is not None and 0 <= age < 3600
    expiry = value(a_samples, "hashmesh_tls_certificate_expiry_timestamp_seconds")
    assert expiry is not None and expiry > time.time() + 30 * 86400
    peer_expiry = value(a_samples, "hashmesh_peer_tls_certificate_expiry_timestamp_seconds", peer=B)
    assert peer_expiry is not None and peer_expiry > time.time()
    assert value(a_samples, "hashmesh_witness_cosignatures", state="missing") == 0

    b_samples = await b.samples()
    assert value(b_samples, "hashmesh_peer_up", peer=A) == 1
    entries = value(b_samples, "hashmesh_sync_entries_total", peer=A)
    assert entries == 5
    assert value(b_samples, "hashmesh_sync_rounds_total", peer=A, result="ok")
    assert value(b_samples, "hashmesh_peer_sync_consecutive_failures", peer=A) == 0
    # B holds all A proved it holds of A's log: no lag, in entries or seconds.
    assert value(b_samples, "hashmesh_peer_lag_entries", peer=A, origin=A) == 0
    assert value(b_samples, "hashmesh_peer_lag_seconds", peer=A, origin=A) == 0
    # B's requests to A were counted and logged at A under route patterns.
    assert value(a_samples, "hashmesh_api_requests_total", route="/v1/entries", role="peer")

    # No label anywhere carries a hash value, a salt or an entry label.
    secrets = {sha(i) for i in (*range(5), 99)} | {LABEL, "category-secret-label"}
    secrets |= set(salts)
    for s in a_samples + b_samples:
        for label_value in s.labels.values():
            assert not any(secret in label_value for secret in secrets), s

    access = [r for r in caplog.records if r.name == "hashmesh.access"]
    matches = [r for r in access if "/v1/match" in r.getMessage()]
    assert len(matches) == 1
    line = matches[0].getMessage()
    assert f"{B}(peer) POST /v1/match 200" in line
    assert "hashes=2 hits=1" in line
    assert matches[0].access["hashes"] == 2  # type: ignore[attr-defined]
    for r in access:
        assert not any(secret in r.getMessage() for secret in secrets)
        assert "?" not in r.getMessage()  # route patterns, never the raw target

    # A goes away: B logs the failures at WARNING, counts them, and is not ready.
    await a.close()

    async def b_not_ready() -> tuple[int, str]:
        return await b.get("/readyz")

    status, body = await eventually(
        b_not_ready, until=lambda r: r[0] == 503, what="B's /readyz to report A failing"
    )
    reasons = json.loads(body)["reasons"]
    assert len(reasons) == 1 and reasons[0].startswith(f"peer {A}: failing for ")
    b_samples = await b.samples()
    assert value(b_samples, "hashmesh_peer_up", peer=A) == 0
    assert value(b_samples, "hashmesh_sync_errors_total", peer=A, reason="peer_unavailable")

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and A in r.getMessage()
        ]

    assert any(m.startswith(f"sync with {A} failed") for m in warnings()), warnings()
    # The event stream ended when A shut down; its reconnection fails after a backoff.
    await eventually(
        warnings,
        until=lambda ws: any(m.startswith(f"event stream of {A} failed") for m in ws),
        what="B to log its failing event stream at WARNING",
    )


async def test_readyz_names_an_expiring_certificate(tmp_path: Path) -> None:
    node_dir = configure(make_node(tmp_path, "a", A), "certificate_warn_days = 100000")
    node = await start(node_dir, sync=False)
    try:

        async def reasons() -> list[str]:
            status, body = await node.get("/readyz")
            assert status == 503
            return list(json.loads(body)["reasons"])

        # Once the PDQ index has loaded, the certificate is the only reason.
        (reason,) = await eventually(reasons, until=lambda r: len(r) == 1, what="one reason")
        assert reason.startswith("certificate: the node's TLS certificate expires in ")
        assert "hashmesh tls renew" in reason
        assert value(await node.samples(), "hashmesh_tls_certificate_expiring", holder="own") == 1
    finally:
        await node.close()


async def test_readyz_reports_an_unloaded_index_and_a_locked_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node_dir = make_node(tmp_path, "a", A)
    monkeypatch.setattr(ops_module, "PROBE_TIMEOUT", 0.3)
    db = await Database.open(node_dir)
    try:
        app = make_ops_app(OpsContext(db=db, hub=CheckpointHub(), config=load_config(node_dir)))
        server = await start_ops_server(app)
        # Another process holds the write lock (as a long import would).
        blocker = sqlite3.connect(node_dir / "ledger.db", timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            async with aiohttp.ClientSession() as s, s.get(server.url + "/readyz") as resp:
                assert resp.status == 503
                reasons = (await resp.json())["reasons"]
        finally:
            blocker.rollback()
            blocker.close()
            await server.close()
        # Nothing loaded the PDQ index: this database was never served.
        assert reasons == [
            "database: no write transaction within 0.3 s",
            "indexes: the PDQ index is still loading",
        ]
    finally:
        await db.close()


async def test_readyz_and_metrics_show_a_log_the_scrub_found_damaged(tmp_path: Path) -> None:
    node_dir = configure(
        make_node(tmp_path, "a", A), "\n[scrub]\nentries_per_second = 100000\nslice = 4"
    )
    with Ledger.open(node_dir) as ledger:
        ledger.append([AddEntry.create(signal_type="sha256", value=sha(i)) for i in range(8)])
    # Entry 5's bytes damaged on disk (one more character in its value).
    tamper(
        node_dir / "ledger.db",
        'UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), \'"value":"\', '
        '\'"value":"f\') AS BLOB) WHERE idx = 5',
    )
    node = await start(node_dir, sync=False)
    try:

        async def damaged() -> float | None:
            return value(await node.samples(), "hashmesh_log_damaged", origin=A)

        assert await eventually(damaged, what="the scrub to find the damage") == 1.0
        samples = await node.samples()
        assert value(samples, "hashmesh_scrub_findings", origin=A) == 1.0
        status, body = await node.get("/readyz")
        assert status == 503
        reasons = json.loads(body)["reasons"]
        assert any(
            r.startswith(f"log {A} is damaged from entry 5") and "not served until repaired" in r
            for r in reasons
        ), reasons
    finally:
        await node.close()


async def test_metrics_show_scrub_progress_of_a_sound_node(tmp_path: Path) -> None:
    node_dir = configure(
        make_node(tmp_path, "a", A), "\n[scrub]\nentries_per_second = 100000\nslice = 4"
    )
    with Ledger.open(node_dir) as ledger:
        ledger.append([AddEntry.create(signal_type="sha256", value=sha(i)) for i in range(8)])
    node = await start(node_dir, sync=False)
    try:

        async def passes() -> float | None:
            return value(await node.samples(), "hashmesh_scrub_passes")

        await eventually(passes, until=lambda n: n is not None and n >= 1, what="a scrub pass")
        samples = await node.samples()
        assert value(samples, "hashmesh_scrub_entries_held", origin=A) == 8.0
        assert value(samples, "hashmesh_log_damaged", origin=A) is None
    finally:
        await node.close()


async def test_every_path_warns_of_expiry_by_the_ledgers_one_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """status, peer list, /metrics and /readyz: a peer whose certificate ends in 10 days
    warns everywhere; a peer in renewal (its old certificate ends in 10 days, the new
    one in 800) warns nowhere, as the link goes on with the new one."""
    node_dir = configure(make_node(tmp_path, "a", A))
    soon = make_expired_identity(tmp_path, "soon", days_left=10)
    add_peer(node_dir, soon, "subscriber")
    old = make_expired_identity(tmp_path, "renewing", days_left=10)
    new = make_expired_identity(tmp_path, "renewing-new", days_left=800)
    add_peer(node_dir, old, "peer")
    renewing = "renewing.example/log"
    with Ledger.open(node_dir) as ledger:
        ledger.peers.accept_card(renewing, 1, "(card)", [(new.spki, new.pem), (old.spki, old.pem)])
    assert hashmesh(["--dir", str(node_dir), "status"]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("WARNING")]
    assert len(warned) == 1 and warned[0].startswith("WARNING: soon.example/log: TLS")
    assert hashmesh(["--dir", str(node_dir), "peer", "list", "--json"]) == 0
    captured = capsys.readouterr()
    assert [ln for ln in captured.err.splitlines() if ln.startswith("WARNING")] == warned
    expires = {row["name"]: row["tls_expires"] for row in json.loads(captured.out)}
    assert expires[renewing] > expires["soon.example/log"]  # the renewed one counts

    node = await start(node_dir, sync=False)
    try:
        samples = await node.samples()
        assert value(samples, "hashmesh_tls_certificate_expiring", holder="own") == 0
        assert value(samples, "hashmesh_tls_certificate_expiring", holder="soon.example/log") == 1
        assert value(samples, "hashmesh_tls_certificate_expiring", holder=renewing) == 0
        in_800 = value(
            samples, "hashmesh_peer_tls_certificate_expiry_timestamp_seconds", peer=renewing
        )
        assert in_800 is not None and in_800 > time.time() + 700 * 86400
        _status, body = await node.get("/readyz")
        doc = json.loads(body)
        assert [w.split(":")[0] for w in doc["warnings"]] == ["peer soon.example/log"]
        assert not any("certificate" in r for r in doc["reasons"])
    finally:
        await node.close()
