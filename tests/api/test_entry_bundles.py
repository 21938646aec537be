"""C2SP tlog-tiles entry bundles over the mutual-TLS API (``/v1/tile/entries/...``).

A log of 300 entries: bundle 000 is full, bundle 001 is partial (44 entries).
The bundles' entries hash to the level-0 hash tiles :mod:`protocol.tiles`
computes from the leaf hashes the API serves, only entry readers get them,
and the path is checked as sent (raw request targets, no client-side
normalising).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import quote

import pytest

from node.api.app import ROUTES
from node.ledger import Ledger
from protocol.encoding import decode_hex
from protocol.tiles import EntryBundleId, TileId, compute_tiles_from_leaf_hashes
from protocol.wire import ENTRY_BUNDLE_MEDIA_TYPE, decode_entry_bundle
from tests.api.conftest import ORIGIN, Identity, Served, init_api_node, raw_request, signal_value

SIZE = 300
QUERY = "?origin=" + quote(ORIGIN, safe="")


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    """Overrides conftest's: a log with one full and one partial entry bundle."""
    return init_api_node(tmp_path / "node", [signal_value(i) for i in range(SIZE)])


async def raw_get(
    served: Served, ident: Identity, target: str
) -> tuple[int, dict[str, str], bytes]:
    """One GET as ``ident`` with exactly this request target."""
    return await raw_request(
        served.server.host, served.server.port, served.client_ctx(ident), "GET", target
    )


async def level0_tiles(served: Served, size: int) -> dict[TileId, bytes]:
    """Hash tiles of the tree of ``size`` from the leaf hashes the API serves (auditor role)."""
    target = f"/v1/leaf-hashes{QUERY}&start=0&end={size}"
    status, _headers, body = await raw_get(served, served.auditor, target)
    assert status == 200, body
    leaves = [decode_hex(h, field="leaf") for h in json.loads(body)["leaf_hashes"]]
    assert len(leaves) == size
    return dict(compute_tiles_from_leaf_hashes(leaves))


@pytest.mark.parametrize(
    ("path", "tree", "count"),
    [
        ("tile/entries/000", SIZE, 256),
        ("tile/entries/001.p/44", SIZE, 44),
        # A partial bundle of an earlier size of the tree (C2SP lets a log serve it).
        ("tile/entries/001.p/10", 266, 10),
    ],
)
async def test_bundle_entries_hash_to_the_level0_tile(
    served: Served, path: str, tree: int, count: int
) -> None:
    bundle = EntryBundleId.from_path(path)
    tiles = await level0_tiles(served, tree)
    for ident in (served.peer, served.subscriber):
        status, headers, body = await raw_get(served, ident, f"/v1/{path}{QUERY}")
        assert status == 200, body
        assert headers["content-type"] == ENTRY_BUNDLE_MEDIA_TYPE
        assert headers["cache-control"] == "no-store"  # entries are never cached
        entries = decode_entry_bundle(body, max_entries=count)
        assert len(entries) == count
        leaves = b"".join(hashlib.sha256(b"\x00" + e).digest() for e in entries)
        assert leaves == tiles[bundle.tile]
    # The exact stored bytes, in order.
    with Ledger.open(served.node_dir) as ledger:
        stored = [
            bytes(d) for _i, d, _l in ledger.entries(ledger.own_log, bundle.start, bundle.end)
        ]
    assert entries == stored


async def test_auditors_may_not_read_bundles(served: Served) -> None:
    status, headers, body = await raw_get(served, served.auditor, f"/v1/tile/entries/000{QUERY}")
    assert status == 403
    assert headers["content-type"].startswith("application/json")
    assert "may not read /v1/tile/entries/{bundle}" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("bundle", "status", "field", "words"),
    [
        ("0", 400, "index", "not 3 digits"),
        ("0000", 400, "index", "not 3 digits"),
        ("001/000", 400, "index", "needs an 'x' prefix"),
        ("x000/001", 400, "index", "leading zero group"),
        ("%30%30%30", 400, "index", "3 digits"),
        ("000.p/0", 400, "width", "out of range"),
        ("000.p/07", 400, "width", "leading zero"),
        ("000.p/256", 400, "width", "full tile"),
        ("000.p", 400, "width", "without a width"),
        ("000/", 400, "path", "empty segment"),
        ("../0/000", 400, "path", "dot segment"),
        ("001.p/45", 404, "bundle", "beyond the tree size 300"),
        ("001", 404, "bundle", "beyond the tree size 300"),
        ("x001/000", 404, "bundle", "beyond the tree size 300"),
    ],
)
async def test_bad_bundle_paths_are_json_errors_naming_the_field(
    served: Served, bundle: str, status: int, field: str, words: str
) -> None:
    got, headers, body = await raw_get(served, served.peer, f"/v1/tile/entries/{bundle}{QUERY}")
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert error["field"] == field
    assert words in error["error"]


async def test_origin_is_required_and_must_be_held(served: Served) -> None:
    status, _headers, body = await raw_get(served, served.peer, "/v1/tile/entries/000")
    assert status == 400 and json.loads(body)["field"] == "origin"
    status, _headers, body = await raw_get(
        served, served.peer, "/v1/tile/entries/000?origin=elsewhere.example%2Flog"
    )
    assert status == 404 and json.loads(body)["field"] == "origin"


@pytest.mark.parametrize("target", ["/v1/tile/0/000", "/v1/tile/1/000", "/v1/tile/entries"])
async def test_hash_tiles_are_not_served_on_the_api(served: Served, target: str) -> None:
    status, headers, body = await raw_get(served, served.peer, target + QUERY)
    assert status in (400, 404), body
    assert headers["content-type"].startswith("application/json")


def test_the_route_is_documented_by_its_template() -> None:
    (route,) = [r for r in ROUTES if r.handler.__name__ == "entry_bundle"]
    assert route.path == "/v1/tile/entries/{bundle}"
    assert route.roles == frozenset({"peer", "subscriber"})
