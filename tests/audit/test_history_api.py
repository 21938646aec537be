"""``GET /v1/checkpoints``: every stored signed note, by size, paged, for any role."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.api.history import MAX_CHECKPOINTS_PAGE
from node.audit.client import AuditClient
from node.ledger import Ledger
from protocol.checkpoint import open_checkpoint
from protocol.keys import NoteVerifier
from tests.api.conftest import ORIGIN, Served
from tests.audit.conftest import add_hashes

pytestmark = pytest.mark.integration


async def get(s: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, Any]:
    async with s.get(url, params=params) as resp:
        return resp.status, await resp.json()


def stored(node_dir: Path) -> list[tuple[int, str]]:
    with Ledger.open(node_dir, read_only=True) as ledger:
        return [(c.size, c.note) for c in ledger.store.iter_checkpoints(ledger.own_log.log_id)]


async def test_every_role_reads_every_checkpoint_in_size_order(served: Served) -> None:
    expected = stored(served.node_dir)
    vkey = NoteVerifier.from_text(_vkey(served.node_dir))
    for ident in (served.auditor, served.subscriber, served.peer):
        async with served.session(ident) as s:
            status, doc = await get(s, served.url + "/v1/checkpoints", origin=ORIGIN)
        assert status == 200
        assert doc["origin"] == ORIGIN
        assert [(c["size"], c["note"]) for c in doc["checkpoints"]] == expected
    for size, note in expected:
        assert open_checkpoint(note, vkey).checkpoint.size == size


async def test_start_pages_from_a_size(served: Served) -> None:
    expected = stored(served.node_dir)
    async with served.session(served.auditor) as s:
        status, doc = await get(s, served.url + "/v1/checkpoints", origin=ORIGIN, start="3")
        assert status == 200
        assert [c["size"] for c in doc["checkpoints"]] == [n for n, _ in expected if n >= 3]
        status, doc = await get(s, served.url + "/v1/checkpoints", origin=ORIGIN, start="999")
        assert (status, doc["checkpoints"]) == (200, [])


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({}, 400, "origin"),
        ({"origin": ORIGIN, "start": "01"}, 400, "start"),
        ({"origin": ORIGIN, "start": "-1"}, 400, "start"),
        ({"origin": ORIGIN, "end": "3"}, 400, "end"),
        ({"origin": "nobody.example/log"}, 404, "origin"),
    ],
)
async def test_bad_queries(served: Served, params: dict[str, str], status: int, field: str) -> None:
    async with served.session(served.auditor) as s:
        got, doc = await get(s, served.url + "/v1/checkpoints", **params)
    assert (got, doc["field"]) == (status, field)


async def test_more_than_a_page_is_read_by_the_client_in_pages(served: Served) -> None:
    size = stored(served.node_dir)[-1][0]
    add_hashes(served.node_dir, 1000, MAX_CHECKPOINTS_PAGE + 5)  # one checkpoint per entry
    expected = stored(served.node_dir)
    async with served.session(served.auditor) as s:
        status, doc = await get(s, served.url + "/v1/checkpoints", origin=ORIGIN)
    assert status == 200 and len(doc["checkpoints"]) == MAX_CHECKPOINTS_PAGE
    client = AuditClient(
        "node",
        served.url,
        server_cert_pem=served.server_pem,
        cert_path=served.auditor.cert_path,
        key_path=served.auditor.key_path,
    )
    async with client:
        first = await client.checkpoints(ORIGIN, 0)
        rest = await client.checkpoints(ORIGIN, first[-1][0] + 1)
        assert [s for s, _ in first + rest] == [s for s, _ in expected]
        assert rest[-1][0] == size + MAX_CHECKPOINTS_PAGE + 5
        assert len(await client.leaf_hashes(ORIGIN, 0, 3)) == 3


def _vkey(node_dir: Path) -> str:
    with Ledger.open(node_dir, read_only=True) as ledger:
        return ledger.own_log.verifier_key
