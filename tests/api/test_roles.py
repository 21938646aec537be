"""Roles: auditors never see entry bytes, hash values or labels; nobody writes."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from node.api.app import ROUTES
from node.ledger import Ledger
from tests.api.conftest import LABELS, ORIGIN, VALUES, Served

QUERIES = {
    "/v1/health": {},
    "/v1/logs": {},
    "/v1/checkpoint": {"origin": ORIGIN},
    "/v1/checkpoints": {"origin": ORIGIN},
    "/v1/rotations": {"origin": ORIGIN},
    "/v1/entries": {"origin": ORIGIN, "start": "0"},
    "/v1/tile/entries/{bundle}": {"origin": ORIGIN},
    "/v1/leaf-hashes": {"origin": ORIGIN, "start": "0"},
    "/v1/proof/inclusion": {"origin": ORIGIN, "index": "0"},
    "/v1/proof/consistency": {"origin": ORIGIN, "old": "1"},
    "/v1/evidence": {},
    "/v1/card": {},
}
TARGETS = {"/v1/tile/entries/{bundle}": "/v1/tile/entries/000.p/6"}
"""Where a route with a path variable is asked (the fixture's log has 6 entries)."""


def _secrets(node_dir: Path) -> list[bytes]:
    """Every spelling of hash values, labels and entry bytes an auditor must not see."""
    out: list[bytes] = []
    for value in VALUES:
        out += [value.encode(), value.upper().encode(), base64.b64encode(bytes.fromhex(value))]
    out += [label.encode() for label in LABELS]
    out += [label.split(":")[1].encode() for label in LABELS]
    with Ledger.open(node_dir, read_only=True) as ledger:
        for _i, data, _leaf in ledger.store.iter_entries(ledger.own_log.log_id):
            out.append(base64.b64encode(bytes(data)))
            out.append(bytes(data).hex().encode())
    return out


async def _body(
    session: aiohttp.ClientSession, url: str, params: dict[str, str]
) -> tuple[int, bytes]:
    async with session.get(url, params=params) as resp:
        return resp.status, await resp.read()


async def test_every_route_is_covered_here() -> None:
    # POST /v1/match: auditors get 403, checked in tests/api/test_match.py.
    # POST /v1/witness/add-checkpoint: peers only, in tests/witness/test_witness_api.py.
    # POST /v1/peer-card: any role presents its own card (changing only what is trusted
    # for itself; the answer holds a serial and a count), in tests/ops/test_tls_renewal.py.
    assert {r.path for r in ROUTES} == set(QUERIES) | {
        "/v1/events",
        "/v1/match",
        "/v1/peer-card",
        "/v1/witness/add-checkpoint",
    }


async def test_auditor_never_receives_hash_values_or_labels(served: Served) -> None:
    secrets = _secrets(served.node_dir)
    statuses: dict[str, int] = {}
    async with served.session(served.auditor) as s:
        for path, params in QUERIES.items():
            status, body = await _body(s, served.url + TARGETS.get(path, path), params)
            statuses[path] = status
            for secret in secrets:
                assert secret not in body, f"{path} leaked {secret[:20]!r} to an auditor"
        # and the event stream: publish, read the first event, check it too
        async with s.get(served.url + "/v1/events") as resp:
            assert resp.status == 200
            assert (await resp.content.readuntil(b"\n\n")).startswith(b":")
            served.hub.publish(ORIGIN, 6)
            event = await resp.content.readuntil(b"\n\n")
            assert event.startswith(b"event: checkpoint")
            for secret in secrets:
                assert secret not in event
    assert statuses.pop("/v1/entries") == 403
    assert statuses.pop("/v1/tile/entries/{bundle}") == 403
    assert statuses.pop("/v1/card") == 404  # the fixture's node never renewed its certificate
    assert set(statuses.values()) == {200}


async def test_auditor_entries_is_403_before_parameters_are_read(served: Served) -> None:
    async with served.session(served.auditor) as s:
        status, body = await _body(s, served.url + "/v1/entries", {"start": "bogus"})
    assert status == 403
    assert b"auditor" in body


async def test_subscriber_and_peer_read_entries(served: Served) -> None:
    for ident in (served.subscriber, served.peer):
        async with served.session(ident) as s:
            status, body = await _body(s, served.url + "/v1/entries", QUERIES["/v1/entries"])
            assert status == 200
            assert VALUES[0].encode() not in body  # base64 inside JSON, not raw
            route = "/v1/tile/entries/{bundle}"
            status, body = await _body(s, served.url + TARGETS[route], QUERIES[route])
            assert status == 200
            assert VALUES[0].encode() in body  # an entry bundle: the entries' exact bytes


def _snapshot(node_dir: Path) -> str:
    conn = sqlite3.connect(f"file:{node_dir / 'ledger.db'}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_nobody_can_write(served: Served, method: str) -> None:
    before = _snapshot(served.node_dir)
    for ident in (served.subscriber, served.peer, served.auditor):
        async with served.session(ident) as s:
            for route in [*QUERIES, "/v1/events", "/v1/entries/0", "/v1/peers"]:
                path = TARGETS.get(route, route)
                async with s.request(
                    method, served.url + path, params={"origin": ORIGIN}, json={"x": 1}
                ) as resp:
                    assert resp.status in (404, 405), (method, path, resp.status)
                    assert resp.content_type == "application/json"
                    if resp.status == 405:
                        assert resp.headers["Allow"] == "GET"
    assert _snapshot(served.node_dir) == before
