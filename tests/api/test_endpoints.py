"""Every endpoint over real mutual TLS: happy paths, strict parameters, paging."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from node.api.handlers import VERSION
from node.api.state import ApiLimits
from node.ledger import Ledger
from protocol.checkpoint import open_checkpoint
from protocol.entry import AddEntry, RetractEntry, parse_entry
from protocol.hashing import hash_leaf
from protocol.keys import NoteVerifier
from protocol.merkle import verify_consistency, verify_inclusion
from protocol.wire import (
    ENTRY_BUNDLE_MEDIA_TYPE,
    ConsistencyProof,
    InclusionProof,
    decode_entry_bundle,
)
from tests.api.conftest import LABELS, ORIGIN, VALUES, Served

SIZE = len(VALUES) + 1  # five adds and one retraction


async def get(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, Any]:
    async with session.get(url, params=params) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def test_health(served: Served) -> None:
    async with served.session(served.peer) as s:
        status, body = await get(s, served.url + "/v1/health")
    assert status == 200
    assert body == {"status": "ok", "origin": ORIGIN, "version": VERSION}


async def test_logs_and_checkpoint_verify(served: Served) -> None:
    async with served.session(served.subscriber) as s:
        status, body = await get(s, served.url + "/v1/logs")
        assert status == 200
        (item,) = body["logs"]
        assert item["origin"] == ORIGIN and item["size"] == SIZE and item["frozen"] is False
        verifier = NoteVerifier.from_text(item["vkey"])
        checked = open_checkpoint(item["checkpoint"], verifier, origin=ORIGIN)
        assert checked.checkpoint.size == SIZE
        async with s.get(served.url + "/v1/checkpoint", params={"origin": ORIGIN}) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            assert resp.headers["Cache-Control"] == "no-store"
            assert await resp.text() == item["checkpoint"]


async def _root(session: aiohttp.ClientSession, url: str) -> bytes:
    _, body = await get(session, url + "/v1/logs")
    item = body["logs"][0]
    return open_checkpoint(
        item["checkpoint"], NoteVerifier.from_text(item["vkey"])
    ).checkpoint.root_hash


async def test_entries_are_exact_and_leaf_hashes_match(served: Served) -> None:
    async with served.session(served.peer) as s:
        status, body = await get(s, served.url + "/v1/entries", origin=ORIGIN, start="0", end="100")
        assert status == 200
        assert body["origin"] == ORIGIN and body["start"] == 0
        datas = [base64.b64decode(e) for e in body["entries"]]
        assert len(datas) == SIZE
        parsed = [parse_entry(d) for d in datas]
        assert [p.value for p in parsed if isinstance(p, AddEntry)] == VALUES
        assert isinstance(parsed[-1], RetractEntry) and parsed[-1].index == 1
        status, body = await get(s, served.url + "/v1/leaf-hashes", origin=ORIGIN, start="2")
        assert status == 200 and body["start"] == 2
        assert body["leaf_hashes"] == [hash_leaf(d).hex() for d in datas[2:]]
        # start == size is an empty page, not an error
        status, body = await get(s, served.url + "/v1/entries", origin=ORIGIN, start=str(SIZE))
        assert status == 200 and body["entries"] == []


async def test_entries_as_a_bundle_are_the_same_bytes(served: Served) -> None:
    async with served.session(served.peer) as s:
        _, body = await get(s, served.url + "/v1/entries", origin=ORIGIN, start="1", end="5")
        as_json = [base64.b64decode(e) for e in body["entries"]]
        for accept in (
            ENTRY_BUNDLE_MEDIA_TYPE,
            f"application/json;q=0.5, {ENTRY_BUNDLE_MEDIA_TYPE}",
        ):
            async with s.get(
                served.url + "/v1/entries",
                params={"origin": ORIGIN, "start": "1", "end": "5"},
                headers={"Accept": accept},
            ) as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == ENTRY_BUNDLE_MEDIA_TYPE
                bundle = await r.read()
            assert decode_entry_bundle(bundle, max_entries=4) == as_json
            # The C2SP tlog-tiles entry bundle layout: uint16 length, bytes.
            assert bundle[:2] == len(as_json[0]).to_bytes(2, "big")
    # An auditor may not read entries in either form.
    async with (
        served.session(served.auditor) as s,
        s.get(
            served.url + "/v1/entries",
            params={"origin": ORIGIN, "start": "0"},
            headers={"Accept": ENTRY_BUNDLE_MEDIA_TYPE},
        ) as r,
    ):
        assert r.status == 403


async def test_proofs_verify_against_the_checkpoint(served: Served) -> None:
    async with served.session(served.auditor) as s:
        root = await _root(s, served.url)
        _, leaves = await get(s, served.url + "/v1/leaf-hashes", origin=ORIGIN, start="0")
        for index in range(SIZE):
            status, body = await get(
                s, served.url + "/v1/proof/inclusion", origin=ORIGIN, index=str(index)
            )
            assert status == 200
            proof = InclusionProof.from_json(body)
            assert proof.leaf_hash.hex() == leaves["leaf_hashes"][index]
            verify_inclusion(index, SIZE, proof.leaf_hash, proof.hashes, root)
        status, body = await get(
            s, served.url + "/v1/proof/inclusion", origin=ORIGIN, index="0", size="3"
        )
        assert status == 200 and InclusionProof.from_json(body).size == 3
    with Ledger.open(served.node_dir, read_only=True) as ledger:
        roots = {
            cp.size: cp.root_hash for cp in ledger.store.iter_checkpoints(ledger.own_log.log_id)
        }
    async with served.session(served.peer) as s:
        for old in roots:
            status, body = await get(
                s, served.url + "/v1/proof/consistency", origin=ORIGIN, old=str(old), new=str(SIZE)
            )
            assert status == 200
            proof = ConsistencyProof.from_json(body)
            assert (proof.old_size, proof.new_size) == (old, SIZE)
            verify_consistency(old, SIZE, roots[old], root, proof.hashes)
        status, body = await get(s, served.url + "/v1/proof/consistency", origin=ORIGIN, old="0")
        assert status == 200 and body["new_size"] == SIZE


async def test_inclusion_proof_by_leaf_hash(served: Served) -> None:
    async with served.session(served.auditor) as s:
        root = await _root(s, served.url)
        _, leaves = await get(s, served.url + "/v1/leaf-hashes", origin=ORIGIN, start="0")
        for index, leaf in enumerate(leaves["leaf_hashes"]):
            status, by_hash = await get(
                s, served.url + "/v1/proof/inclusion", origin=ORIGIN, leaf_hash=leaf
            )
            assert status == 200
            _, by_index = await get(
                s, served.url + "/v1/proof/inclusion", origin=ORIGIN, index=str(index)
            )
            assert by_hash == by_index
            proof = InclusionProof.from_json(by_hash)
            verify_inclusion(index, SIZE, bytes.fromhex(leaf), proof.hashes, root)
        # In an older tree: found below its size, not found at or above it.
        last = leaves["leaf_hashes"][3]
        status, body = await get(
            s, served.url + "/v1/proof/inclusion", origin=ORIGIN, leaf_hash=last, size="4"
        )
        assert status == 200 and (body["index"], body["size"]) == (3, 4)
        status, body = await get(
            s, served.url + "/v1/proof/inclusion", origin=ORIGIN, leaf_hash=last, size="3"
        )
        assert status == 404 and body["field"] == "leaf_hash"


async def test_evidence_empty(served: Served) -> None:
    async with served.session(served.auditor) as s:
        assert await get(s, served.url + "/v1/evidence") == (200, {"evidence": []})


NO_LEAF = hash_leaf(b"no such entry").hex()

BAD = [
    ("/v1/entries", {"origin": ORIGIN, "start": "01"}, 400, "start"),
    ("/v1/entries", {"origin": ORIGIN, "start": "-1"}, 400, "start"),
    ("/v1/entries", {"origin": ORIGIN, "start": "+1"}, 400, "start"),
    ("/v1/entries", {"origin": ORIGIN, "start": " 1"}, 400, "start"),
    ("/v1/entries", {"origin": ORIGIN, "start": "1.0"}, 400, "start"),
    ("/v1/entries", {"origin": ORIGIN, "start": "0x1"}, 400, "start"),
    ("/v1/entries", {"origin": ORIGIN, "start": "\u0661"}, 400, "start"),
    ("/v1/entries", {"origin": ORIGIN, "start": "99999999999999999999"}, 400, "start"),
    ("/v1/entries", {"origin": ORIGIN, "start": ""}, 400, "start"),
    ("/v1/entries", {"origin": ORIGIN}, 400, "start"),
    ("/v1/entries", {"start": "0"}, 400, "origin"),
    ("/v1/entries", {"origin": ORIGIN, "start": "3", "end": "2"}, 400, "end"),
    ("/v1/entries", {"origin": ORIGIN, "start": "7"}, 400, "start"),
    ("/v1/entries", {"origin": ORIGIN, "start": "0", "limit": "5"}, 400, "limit"),
    ("/v1/entries", {"origin": "nobody.example/log", "start": "0"}, 404, "origin"),
    ("/v1/entries", {"origin": "x" * 300, "start": "0"}, 400, "origin"),
    ("/v1/leaf-hashes", {"origin": ORIGIN, "start": "7"}, 400, "start"),
    ("/v1/checkpoint", {}, 400, "origin"),
    ("/v1/checkpoint", {"origin": "nobody.example/log"}, 404, "origin"),
    ("/v1/checkpoint", {"origin": ""}, 400, "origin"),
    ("/v1/proof/inclusion", {"origin": ORIGIN, "index": "6"}, 400, "index"),
    ("/v1/proof/inclusion", {"origin": ORIGIN, "index": "0", "size": "7"}, 400, "size"),
    ("/v1/proof/inclusion", {"origin": ORIGIN, "index": "0", "size": "0"}, 400, "index"),
    ("/v1/proof/inclusion", {"origin": ORIGIN, "index": "a"}, 400, "index"),
    ("/v1/proof/inclusion", {"origin": ORIGIN}, 400, "index"),
    ("/v1/proof/inclusion", {"origin": ORIGIN, "index": "0", "leaf_hash": "00" * 32}, 400, "index"),
    ("/v1/proof/inclusion", {"origin": ORIGIN, "leaf_hash": "AB" * 32}, 400, "leaf_hash"),
    ("/v1/proof/inclusion", {"origin": ORIGIN, "leaf_hash": "ab" * 31}, 400, "leaf_hash"),
    ("/v1/proof/inclusion", {"origin": ORIGIN, "leaf_hash": "ab" * 32, "size": "7"}, 400, "size"),
    ("/v1/proof/inclusion", {"origin": ORIGIN, "leaf_hash": NO_LEAF}, 404, "leaf_hash"),
    ("/v1/proof/inclusion", {"origin": "nobody.example/log", "leaf_hash": NO_LEAF}, 404, "origin"),
    ("/v1/proof/consistency", {"origin": ORIGIN, "old": "3", "new": "2"}, 400, "old"),
    ("/v1/proof/consistency", {"origin": ORIGIN, "old": "7"}, 400, "old"),
    ("/v1/proof/consistency", {"origin": ORIGIN, "old": "1", "new": "7"}, 400, "new"),
    ("/v1/proof/consistency", {"origin": ORIGIN, "old": "01"}, 400, "old"),
    ("/v1/health", {"x": "1"}, 400, "x"),
]


@pytest.mark.parametrize(("path", "params", "status", "field"), BAD)
async def test_malformed_parameters_are_4xx_json_naming_the_field(
    served: Served, path: str, params: dict[str, str], status: int, field: str
) -> None:
    async with served.session(served.peer) as s, s.get(served.url + path, params=params) as resp:
        assert resp.status == status
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["field"] == field
    assert isinstance(body["error"], str) and body["error"]


async def test_repeated_parameter_is_rejected(served: Served) -> None:
    url = served.url + f"/v1/entries?origin={ORIGIN}&start=0&start=1"
    async with served.session(served.peer) as s, s.get(url) as resp:
        assert resp.status == 400
        assert (await resp.json())["field"] == "start"


async def test_unknown_path_and_writes_are_json_404_405(served: Served) -> None:
    async with served.session(served.peer) as s:
        async with s.get(served.url + "/v1/nothing") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"].startswith("no endpoint")
        async with s.get(served.url + "/") as resp:
            assert resp.status == 404


async def test_oversized_request_body_is_413(served: Served) -> None:
    async with (
        served.session(served.peer) as s,
        s.get(served.url + "/v1/health", data=b"x" * (65 * 1024)) as resp,
    ):
        assert resp.status == 413
        assert resp.content_type == "application/json"


async def test_page_cap(serve_with: Callable[[ApiLimits], AsyncIterator[Served]]) -> None:
    async for served in serve_with(ApiLimits(max_page=2)):
        async with served.session(served.peer) as s:
            _, body = await get(s, served.url + "/v1/entries", origin=ORIGIN, start="1", end="6")
            assert body["start"] == 1 and len(body["entries"]) == 2
            _, body = await get(s, served.url + "/v1/leaf-hashes", origin=ORIGIN, start="5")
            assert len(body["leaf_hashes"]) == 1
            _, body = await get(s, served.url + "/v1/entries", origin=ORIGIN, start="0", end="1")
            assert len(body["entries"]) == 1


def test_labels_are_in_the_entries(served: Served) -> None:
    # Guard for the auditor test: the strings it looks for really are in the data.
    with Ledger.open(served.node_dir, read_only=True) as ledger:
        data = ledger.store.get_entry(ledger.own_log.log_id, 0)
    assert data is not None
    assert VALUES[0].encode() in data and LABELS[0].encode() in data


async def test_evidence_is_served_and_the_log_is_frozen(served: Served) -> None:
    from node.config import load_config
    from node.ledger.key_files import load_signer
    from protocol.checkpoint import Checkpoint, sign_checkpoint
    from protocol.evidence import ForkEvidence, verify_fork_evidence

    signer = load_signer(load_config(served.node_dir))
    note_a = sign_checkpoint(Checkpoint(origin=ORIGIN, size=3, root_hash=b"\x01" * 32), signer)
    note_b = sign_checkpoint(Checkpoint(origin=ORIGIN, size=3, root_hash=b"\x02" * 32), signer)
    evidence = ForkEvidence(
        origin=ORIGIN, note_a=note_a, note_b=note_b, prefix_root=b"\x02" * 32, proof=()
    )
    verify_fork_evidence(evidence, signer.verifier())
    await served.db.write(
        lambda ledger: ledger.peers.add_evidence(ORIGIN, evidence.to_json(), "test")
    )
    async with served.session(served.auditor) as s:
        status, body = await get(s, served.url + "/v1/evidence")
        assert status == 200
        (doc,) = body["evidence"]
        assert ForkEvidence.from_json(doc) == evidence
        _, logs = await get(s, served.url + "/v1/logs")
        assert logs["logs"][0]["frozen"] is True
