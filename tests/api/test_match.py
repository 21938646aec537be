"""POST /v1/match over real mutual TLS: hits, per-item errors, limits, live index, receipts."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.api.match import MAX_BODY
from node.api.state import ApiLimits
from node.cli import main as cli
from node.cli.cards import make_card
from node.ledger import Ledger
from node.ledger.matching import MAX_BATCH
from protocol.entry import AddEntry, RetractEntry
from protocol.keys import NoteVerifier
from protocol.receipt import MatchReceipt, verify_receipt
from tests.api.conftest import LABELS, ORIGIN, VALUES, Served


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with session.post(url + "/v1/match", **kwargs) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


def item(signal_type: str, value: str) -> dict[str, str]:
    return {"type": signal_type, "value": value}


def pdq_value(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def flip(value: str, count: int) -> str:
    return f"{int(value, 16) ^ ((1 << count) - 1):064x}"


async def test_exact_hits_misses_and_retracted(served: Served) -> None:
    body = {
        "hashes": [item("sha256", VALUES[0]), item("sha256", "0" * 64), item("sha256", VALUES[1])]
    }
    async with served.session(served.subscriber) as s:
        status, doc = await post(s, served.url, body)
    assert status == 200
    assert doc["checked"] == 3 and doc["errors"] == [] and doc["max_distance"] == 31
    (found,) = doc["matches"]  # VALUES[1] is retracted (entry 1), the zeros never listed
    assert found["i"] == 0 and found["hidden"] == 0
    assert found["hits"] == [
        {
            "origin": ORIGIN,
            "index": 0,
            "type": "sha256",
            "value": VALUES[0],
            "distance": 0,
            "labels": sorted(LABELS),
            "opinions": [],
        }
    ]


async def test_auditor_may_not_match_but_peer_may(served: Served) -> None:
    body = {"hashes": [item("sha256", VALUES[0])]}
    async with served.session(served.auditor) as s:
        status, doc = await post(s, served.url, body)
    assert status == 403 and "auditor" in doc["error"]
    async with served.session(served.peer) as s:
        status, doc = await post(s, served.url, body)
    assert status == 200 and len(doc["matches"]) == 1


async def test_bad_items_are_reported_one_by_one_and_the_rest_matched(served: Served) -> None:
    md5 = "ab" * 16
    bad = [
        (item("sha256", VALUES[0].upper()), "hashes[0].value", "lowercase"),
        (item("sha256", " " + VALUES[0]), "hashes[1].value", None),
        (item("sha256", VALUES[0][:-2]), "hashes[2].value", "64"),
        (item("sha512", VALUES[0]), "hashes[3].type", "unknown signal type"),
        (item("sha256", md5), "hashes[4].value", "md5"),  # type confusion is named
        ("sha256:" + VALUES[0], "hashes[5]", "object"),
        ({"type": "sha256"}, "hashes[6].value", "missing"),
        (
            {"type": "sha256", "value": VALUES[0], "quality": 9},
            "hashes[7].quality",
            "pdq queries only",
        ),
        ({"type": "sha256", "value": 7}, "hashes[8].value", "string"),
        (item("pdq", "0x" + "a" * 62), "hashes[9].value", None),
        (item("photodna", "AAAA"), "hashes[10].value", None),
        (None, "hashes[11]", "object"),
    ]
    hashes = [b[0] for b in bad] + [item("sha256", VALUES[2])]
    async with served.session(served.subscriber) as s:
        status, doc = await post(s, served.url, {"hashes": hashes})
    assert status == 200
    assert doc["checked"] == 1
    assert [m["i"] for m in doc["matches"]] == [len(bad)]
    errors = {e["i"]: e for e in doc["errors"]}
    assert sorted(errors) == list(range(len(bad)))
    for i, (_item, field, words) in enumerate(bad):
        assert errors[i]["field"] == field, (i, errors[i])
        if words:
            assert words in errors[i]["error"], (i, errors[i])


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"", 400, None),
        (b"not json", 400, None),
        (b'{"hashes": [], "hashes": []}', 400, "hashes"),
        (b"[]", 400, None),
        (b'{"hashes": {}}', 400, "hashes"),
        (b'{"hashes": [], "origin": "x"}', 400, "origin"),
        (b'{"hashes": [], "max_distance": 65}', 400, "max_distance"),
        (b'{"hashes": [], "max_distance": -1}', 400, "max_distance"),
        (b'{"hashes": [], "max_distance": 3.5}', 400, "max_distance"),
        (b'{"hashes": [], "receipts": "yes"}', 400, "receipts"),
        (b"\xef\xbb\xbf{}", 400, None),
        (b'{"hashes": [\xff]}', 400, None),
    ],
)
async def test_malformed_requests_are_400_never_500(
    served: Served, body: bytes, status: int, field: str | None
) -> None:
    async with served.session(served.peer) as s:
        got, doc = await post(s, served.url, body)
    assert (got, doc.get("field")) == (status, field), doc


async def test_batch_limits(served: Served) -> None:
    full = {"hashes": [item("sha256", f"{i:064x}") for i in range(MAX_BATCH - 1)]}
    full["hashes"].append(item("sha256", VALUES[3]))
    async with served.session(served.peer) as s:
        status, doc = await post(s, served.url, full)
        assert status == 200 and doc["checked"] == MAX_BATCH
        assert [m["i"] for m in doc["matches"]] == [MAX_BATCH - 1]
        status, doc = await post(
            s, served.url, {"hashes": [*full["hashes"], item("md5", "a" * 32)]}
        )
        assert status == 400 and doc["field"] == "hashes" and "split" in doc["error"]
        big = io.BytesIO(b"[" + b" " * MAX_BODY + b"]")
        async with s.post(served.url + "/v1/match", data=big) as resp:
            assert resp.status == 413
        async with s.get(served.url + "/v1/match") as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST"
        async with s.post(served.url + "/v1/match?x=1", json={"hashes": []}) as resp:
            assert resp.status == 400 and (await resp.json())["field"] == "x"


async def test_pdq_added_and_retracted_while_serving(served: Served) -> None:
    rng = random.Random(7)
    values = [pdq_value(rng) for _ in range(20)]
    with Ledger.open(served.node_dir) as ledger:  # the CLI, another connection
        first = ledger.append(
            [
                AddEntry.create(signal_type="pdq", value=v, quality=80, labels=["x:y"])
                for v in values
            ]
        ).start
    query = {"hashes": [item("pdq", flip(values[3], 12)), item("pdq", flip(values[3], 40))]}
    async with served.session(served.peer) as s:
        status, doc = await post(s, served.url, query)
        assert status == 200
        (found,) = doc["matches"]
        assert found["i"] == 0
        (hit,) = found["hits"]
        assert (hit["index"], hit["distance"], hit["value"], hit["quality"]) == (
            first + 3,
            12,
            values[3],
            80,
        )
        status, doc = await post(s, served.url, {**query, "max_distance": 40})
        assert [m["i"] for m in doc["matches"]] == [0, 1]
        assert doc["matches"][1]["hits"][0]["distance"] == 40
        with Ledger.open(served.node_dir) as ledger:
            ledger.append([RetractEntry(index=first + 3, reason="false positive")])
        status, doc = await post(s, served.url, {**query, "max_distance": 40})
        assert status == 200 and doc["matches"] == []


async def test_receipts_verify_offline(served: Served) -> None:
    with Ledger.open(served.node_dir, read_only=True) as ledger:
        vkey = NoteVerifier.from_text(ledger.own_log.verifier_key)
    body = {"hashes": [item("sha256", VALUES[4]), item("sha256", VALUES[0])], "receipts": True}
    async with served.session(served.subscriber) as s:
        status, doc = await post(s, served.url, body)
    assert status == 200
    for found, index in zip(doc["matches"], (4, 0), strict=True):
        (hit,) = found["hits"]
        receipt = MatchReceipt.from_json(hit["receipt"])
        verified = verify_receipt(receipt, vkey)
        assert (verified.origin, verified.index, verified.size) == (ORIGIN, index, 6)
        assert isinstance(verified.entry, AddEntry) and verified.entry.value == hit["value"]


async def test_cli_matches_on_a_remote_node_over_mtls(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Ledger.open(served.node_dir, read_only=True) as ledger:
        vkey = ledger.own_log.verifier_key
    server_pem = tmp_path / "server.pem"
    server_pem.write_text(served.server_pem, encoding="ascii")
    ident = ["--cert", str(served.subscriber.cert_path), "--key", str(served.subscriber.key_path)]
    argv = ["match", "--type", "sha256", VALUES[0].upper(), VALUES[1], "--json", "--receipts"]
    status = await asyncio.to_thread(
        cli, [*argv, "--remote", served.url, "--server-cert", str(server_pem), *ident]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    doc = json.loads(out)
    assert doc["checked"] == 2 and "lower-cased hex" in doc["normalised"]
    ((found, hit),) = [(m, h) for m in doc["matches"] for h in m["hits"]]
    assert (found["source"], hit["origin"], hit["index"]) == ("argument 1", ORIGIN, 0)
    receipt = MatchReceipt.from_json(hit["receipt"])
    assert verify_receipt(receipt, NoteVerifier.from_text(vkey)).index == 0
    # The same through the node's card; an auditor's identity is refused.
    card = tmp_path / "card.json"
    card.write_text(
        make_card(name=ORIGIN, url=served.url, tls_cert=served.server_pem, vkey=vkey).to_json()
    )
    status = await asyncio.to_thread(
        cli, ["match", "--type", "sha256", VALUES[0], "--card", str(card), *ident]
    )
    out, _ = capsys.readouterr()
    assert status == 0 and f"{ORIGIN} #0" in out
    auditor = ["--cert", str(served.auditor.cert_path), "--key", str(served.auditor.key_path)]
    status = await asyncio.to_thread(
        cli, ["match", "--type", "sha256", VALUES[0], "--card", str(card), *auditor]
    )
    assert status == 2 and "403" in capsys.readouterr().err  # an error, like grep's 2


def with_match_settings(node_dir: Path, table: str) -> Path:
    with (node_dir / "config.toml").open("a", encoding="utf-8") as f:
        f.write(f"\n[match]\n{table}\n")
    return node_dir


def flat_image_pdq(path: Path) -> str:
    """The PDQ hash of a flat grey image written to ``path`` (PDQ quality 0)."""
    from PIL import Image

    from node.ledger.filehash import hash_file

    Image.new("RGB", (64, 64), (128, 128, 128)).save(path)
    hashes = hash_file(path, pdq=True)
    assert hashes.pdq is not None and hashes.low_quality
    return hashes.pdq


async def test_pdq_quality_floor_and_hit_cap(
    node_dir: Path,
    serve_with: Callable[..., AsyncIterator[Served]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = random.Random(18)
    base = pdq_value(rng)
    cluster = [base] + [flip(base, n) for n in range(1, 9)]  # distances 0-8 from base
    low = pdq_value(rng)
    flat = flat_image_pdq(tmp_path / "flat.png")
    with Ledger.open(node_dir) as ledger:
        first = ledger.append(
            [AddEntry.create(signal_type="pdq", value=v, quality=80) for v in cluster]
            + [
                AddEntry.create(signal_type="pdq", value=low, quality=20),
                AddEntry.create(signal_type="pdq", value=flat, quality=49),
            ]
        ).start
    with_match_settings(node_dir, "max_hits = 5")
    body = {
        "hashes": [
            item("pdq", base),
            item("pdq", low),
            item("pdq", flip(low, 3)),
            {"type": "pdq", "value": base, "quality": 49},
            {"type": "pdq", "value": base, "quality": 101},
            {"type": "pdq", "value": flip(base, 3), "quality": 50},
        ]
    }
    async for served in serve_with(ApiLimits()):
        async with served.session(served.peer) as s:
            status, doc = await post(s, served.url, body)
        assert status == 200, doc
        matches = {m["i"]: m for m in doc["matches"]}
        assert sorted(matches) == [0, 1, 3, 5]
        # The nearest five of nine, flagged as cut short.
        assert matches[0]["truncated"] is True
        assert [h["distance"] for h in matches[0]["hits"]] == [0, 1, 2, 3, 4]
        assert [h["index"] for h in matches[0]["hits"]] == [first + n for n in range(5)]
        # A stored hash below the floor is found exactly, never near.
        ((hit,),) = [matches[1]["hits"]]
        assert (hit["index"], hit["distance"], hit["quality"]) == (first + 9, 0, 20)
        assert "truncated" not in matches[1]
        # A query below the floor: exact only, with a warning naming its field.
        assert [h["distance"] for h in matches[3]["hits"]] == [0]
        (warning,) = doc["warnings"]
        assert (
            warning["i"] == 3
            and warning["field"] == "hashes[3].quality"
            and "below" in warning["warning"]
        )
        assert "49" in warning["warning"] and "50" in warning["warning"]
        (error,) = doc["errors"]
        assert (error["i"], error["field"]) == (4, "hashes[4].quality")
        # Quality at the floor is near-matched as usual.
        assert matches[5]["truncated"] is True and matches[5]["hits"][0]["distance"] == 0
        async with served.session(served.peer) as s:
            status, doc = await post(s, served.url, {"hashes": [], "max_distance": 65})
        assert (status, doc["field"]) == (400, "max_distance")

        # hashmesh match: the flat image's hash (quality 0) is looked up exactly
        # only, with the warning on stderr; the cluster's cut is shown.
        server_pem = tmp_path / "server.pem"
        server_pem.write_text(served.server_pem, encoding="ascii")
        remote = [
            "--remote",
            served.url,
            "--server-cert",
            str(server_pem),
            "--cert",
            str(served.peer.cert_path),
            "--key",
            str(served.peer.key_path),
        ]
        for where in (remote, ["--dir", str(node_dir)]):
            argv = ["match", "--file", str(tmp_path / "flat.png"), "--type", "pdq", base]
            status = await asyncio.to_thread(cli, [*argv, *where])
            out, err = capsys.readouterr()
            assert status == 0, err
            assert "quality 0 is below this node's minimum 50" in err, (where, err)
            assert f"{ORIGIN} #{first + 10}" in out  # the flat hash, found exactly
            assert "only the nearest" in out
            status = await asyncio.to_thread(cli, [*argv, *where, "--json"])
            doc = json.loads(capsys.readouterr().out)
            (warned,) = doc["warnings"]
            assert warned["type"] == "pdq" and warned["value"] == flat
            by_value = {m["value"]: m for m in doc["matches"] if m["type"] == "pdq"}
            assert by_value[base]["truncated"] is True and len(by_value[base]["hits"]) == 5
            assert [h["distance"] for h in by_value[flat]["hits"]] == [0]
