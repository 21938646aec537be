"""The background scrub of ``hashmesh serve`` and the refusal to serve a damaged log.

A real node served by ``run_server`` over mutual TLS, its database damaged
on disk before or while it serves; the scrub is paced fast (``[scrub]`` in
the node's config) so a pass takes moments.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from node.api.server import RunningServer, run_server
from node.cli import main as hashmesh
from node.config import load_config
from node.ledger import Ledger
from node.ledger.damage import DamageRegister
from node.ledger.scrub import read_progress
from node.tls import client_ssl_context
from tests.adversary.corrupter import tamper
from tests.api.conftest import ORIGIN, Identity, add_peer, make_identity
from tests.waiting import PATIENCE, eventually

FAST = "\n[scrub]\nentries_per_second = 100000\nslice = 4\n"


@asynccontextmanager
async def serving(node_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Identity]]:
    peer = make_identity(tmp_path, "peer")
    add_peer(node_dir, peer, "peer")
    with (node_dir / "config.toml").open("a", encoding="utf-8") as f:
        f.write(FAST)
    stop = asyncio.Event()
    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_server(node_dir, "127.0.0.1:0", sync=False, stop=stop, on_started=started.set_result)
    )
    done, _ = await asyncio.wait({task, started}, timeout=PATIENCE, return_when="FIRST_COMPLETED")
    assert started in done, task.exception() if task.done() else "server did not start"
    try:
        yield started.result(), peer
    finally:
        stop.set()
        await asyncio.wait_for(task, PATIENCE)


async def get(server: RunningServer, node_dir: Path, peer: Identity, path: str) -> tuple[int, str]:
    pem = load_config(node_dir).tls_cert_path.read_text(encoding="ascii")
    ctx = client_ssl_context(peer.cert_path, peer.key_path, pem)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(server.url + path) as resp,
    ):
        return resp.status, await resp.text()


def passes(node_dir: Path) -> int:
    doc = read_progress(node_dir)
    return int(doc.get("passes", 0)) if doc is not None else 0  # type: ignore[call-overload]


async def test_a_sound_node_is_scrubbed_and_served(node_dir: Path, tmp_path: Path) -> None:
    async with serving(node_dir, tmp_path) as (server, peer):
        await eventually(lambda: passes(node_dir) >= 2, what="two scrub passes")
        doc = read_progress(node_dir)
        assert doc is not None and doc["findings"] == [] and doc["damaged"] == []
        assert doc["logs"][0]["origin"] == ORIGIN  # type: ignore[index]
        status, _ = await get(server, node_dir, peer, f"/v1/checkpoint?origin={ORIGIN}")
        assert status == 200


async def test_the_scrub_finds_a_damaged_entry_and_the_log_is_no_longer_served(
    node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One byte of entry 3's value changed (the hex digit 'a' -> 'b', say).
    tamper(
        node_dir / "ledger.db",
        'UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), \'"value":"\', '
        '\'"value":"f\') AS BLOB) WHERE idx = 3',
    )
    async with serving(node_dir, tmp_path) as (server, peer):
        _status, body = await eventually(
            lambda: get(server, node_dir, peer, f"/v1/checkpoint?origin={ORIGIN}"),
            until=lambda r: r[0] == 503,
            what="the damaged log to be refused",
        )
        assert f"log {ORIGIN} is damaged from entry 3" in body and "found by scrub" in body
        for path in (
            f"/v1/entries?origin={ORIGIN}&start=0",
            f"/v1/proof/inclusion?origin={ORIGIN}&index=0",
        ):
            assert (await get(server, node_dir, peer, path))[0] == 503
        assert (await get(server, node_dir, peer, "/v1/health"))[0] == 200
        damage = DamageRegister(node_dir).get(ORIGIN)
        assert damage is not None and damage.first_bad_index == 3 and damage.found_by == "scrub"
        await eventually(
            lambda: (read_progress(node_dir) or {}).get("findings"),
            what="the finding saved in scrub.json",
        )
    # The CLI shows it, and signs nothing for the log.
    capsys.readouterr()
    assert hashmesh(["--dir", str(node_dir), "status"]) == 0
    out = capsys.readouterr().out
    assert f"DAMAGED:          {ORIGIN} from entry 3" in out and "found by scrub" in out
    assert "scrub:            " in out
    assert hashmesh(["--dir", str(node_dir), "status", "--json"]) == 0
    integrity = json.loads(capsys.readouterr().out)["integrity"]
    assert [d["first_bad_index"] for d in integrity["damaged"]] == [3]
    assert integrity["scrub"]["findings"][0]["index"] == 3
    assert hashmesh(["--dir", str(node_dir), "add", "--type", "md5", "--value", "c" * 32]) == 1


async def test_damage_recorded_by_fsck_is_honoured_while_serving(
    node_dir: Path, tmp_path: Path
) -> None:
    async with serving(node_dir, tmp_path) as (server, peer):
        path = f"/v1/entries?origin={ORIGIN}&start=0"
        assert (await get(server, node_dir, peer, path))[0] == 200
        DamageRegister(node_dir).mark(ORIGIN, 2, "entries do not hash to the root", "fsck")
        await eventually(
            lambda: get(server, node_dir, peer, path),
            until=lambda r: r[0] == 503,
            what="the recorded damage to be honoured",
        )
        DamageRegister(node_dir).clear(ORIGIN)
        await eventually(
            lambda: get(server, node_dir, peer, path),
            until=lambda r: r[0] == 200,
            what="the repaired log to be served again",
        )


async def test_damaged_derived_data_is_reported_and_still_served(
    node_dir: Path, tmp_path: Path
) -> None:
    tamper(node_dir / "ledger.db", "UPDATE active SET idx = idx + 500 WHERE idx = 2")
    async with serving(node_dir, tmp_path) as (server, peer):
        await eventually(lambda: passes(node_dir) >= 1, what="a scrub pass")
        doc = read_progress(node_dir)
        assert doc is not None
        tables = {f["table"] for f in doc["findings"]}  # type: ignore[union-attr, index]
        assert tables == {"active"}
        assert doc["damaged"] == []
        assert (await get(server, node_dir, peer, f"/v1/checkpoint?origin={ORIGIN}"))[0] == 200


async def test_a_restart_resumes_the_pass_where_it_was_left(node_dir: Path, tmp_path: Path) -> None:
    with Ledger.open(node_dir, read_only=True) as ledger:
        sizes = [r.size for r in ledger.stored_checkpoints(ledger.own_log)]
    middle = sizes[-2]  # a signed size below the latest one
    # What a serve stopped in the middle of a pass leaves (scrub.json).
    (node_dir / "scrub.json").write_text(
        json.dumps({"logs": [{"origin": ORIGIN, "resume": middle}, {"origin": "x", "resume": 7}]})
    )
    async with serving(node_dir, tmp_path):
        await eventually(lambda: passes(node_dir) >= 1, what="a scrub pass")
        doc = read_progress(node_dir)
        assert doc is not None and doc["resumed"] == {ORIGIN: middle}
        # The next pass starts from the first entry again (and checks derived data).
        await eventually(lambda: passes(node_dir) >= 2, what="a second pass")
        doc = read_progress(node_dir)
        assert doc is not None and doc["logs"][0]["start"] == 0  # type: ignore[index]


async def test_a_resume_point_that_is_not_a_signed_size_is_not_used(
    node_dir: Path, tmp_path: Path
) -> None:
    (node_dir / "scrub.json").write_text(json.dumps({"logs": [{"origin": ORIGIN, "resume": 3}]}))
    async with serving(node_dir, tmp_path):
        await eventually(lambda: passes(node_dir) >= 1, what="a scrub pass")
        doc = read_progress(node_dir)
        assert doc is not None and doc["resumed"] == {}
