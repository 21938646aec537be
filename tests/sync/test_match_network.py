"""Matching over the three-node network: a hash added at A matches at C, with a receipt.

A <-> B <-> C, C follows A (relayed by B) and B; every node is what
``hashmesh serve`` runs, in this process, with real mutual TLS on 127.0.0.1.
The receipt C hands out is checked with nothing but A's verifier key.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.cli import main as hashmesh
from node.config import load_config
from node.ledger import Ledger
from node.ledger.matching import make_opinion
from node.tls import client_ssl_context
from protocol.__main__ import main as audit
from protocol.entry import AddEntry, RetractEntry
from protocol.keys import NoteVerifier
from protocol.receipt import parse_receipt, verify_receipt
from tests.sync.conftest import A, B, Serving
from tests.waiting import eventually

pytestmark = pytest.mark.integration

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


async def post_match(client: Path, server: Serving, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/match to ``server`` as the node in ``client`` (one of its peers)."""
    mine, theirs = load_config(client), load_config(server.node_dir)
    ctx = client_ssl_context(
        mine.tls_cert_path, mine.tls_key_path, theirs.tls_cert_path.read_text(encoding="ascii")
    )
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.post(server.url + "/v1/match", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc


async def wait_hits(
    client: Path, server: Serving, body: dict[str, Any], count: int
) -> dict[str, Any]:
    return await eventually(
        lambda: post_match(client, server, body),
        until=lambda doc: sum(len(m["hits"]) for m in doc["matches"]) == count,
        what=f"{count} hit(s) at {server.node_dir.name}",
    )


async def test_hash_added_at_a_matches_at_c_with_a_receipt_verified_by_a_key(
    network: tuple[Serving, Serving, Serving],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b, c = network
    rng = random.Random(9)
    pdq = f"{rng.getrandbits(256):064x}"
    near = f"{int(pdq, 16) ^ 0xFFF:064x}"  # 12 bits away
    with Ledger.open(a.node_dir) as ledger:  # the CLI at A, another connection
        ledger.append(
            [
                AddEntry.create(signal_type="sha256", value=SHA, labels=["iwf:category-a"]),
                AddEntry.create(
                    signal_type="pdq", value=pdq, quality=92, labels=["iwf:category-b"]
                ),
            ]
        )
        a_vkey = ledger.own_log.verifier_key
    body = {
        "hashes": [{"type": "sha256", "value": SHA}, {"type": "pdq", "value": near}],
        "receipts": True,
    }
    doc = await wait_hits(b.node_dir, c, body, 2)
    exact, close = doc["matches"]
    (hit,) = exact["hits"]
    assert (hit["origin"], hit["index"], hit["labels"]) == (A, 0, ["iwf:category-a"])
    (near_hit,) = close["hits"]
    assert (near_hit["origin"], near_hit["index"], near_hit["distance"]) == (A, 1, 12)
    for found in (hit, near_hit):
        path = tmp_path / f"receipt-{found['index']}.json"
        path.write_text(json.dumps(found["receipt"]), encoding="utf-8")
        capsys.readouterr()
        assert audit(["verify-receipt", str(path), "--vkey", a_vkey]) == 0
        out = capsys.readouterr().out
        assert f"entry {found['index']} of {A} is in its signed log" in out
    # The same hit through `hashmesh match` at C, as B, saved as a C2SP
    # tlog-proof: it verifies with nothing but A's key.
    folder = tmp_path / "tlog-proofs"
    b_config, c_config = load_config(b.node_dir), load_config(c.node_dir)
    argv = ["match", "--type", "sha256", SHA, "--remote", c.url]
    argv += ["--server-cert", str(c_config.tls_cert_path)]
    argv += ["--cert", str(b_config.tls_cert_path), "--key", str(b_config.tls_key_path)]
    argv += ["--save-receipts", str(folder), "--receipt-format", "tlog-proof"]
    capsys.readouterr()
    status = await asyncio.to_thread(hashmesh, argv)
    assert status == 0, capsys.readouterr().err
    (saved,) = folder.iterdir()
    assert saved.suffix == ".tlog-proof"
    verified = verify_receipt(parse_receipt(saved.read_bytes()), NoteVerifier.from_text(a_vkey))
    assert (verified.origin, verified.index) == (A, 0)
    assert audit(["verify-receipt", str(saved), "--vkey", a_vkey]) == 0
    assert f"entry 0 of {A} is in its signed log" in capsys.readouterr().out
    # Under C's key (the node that served it) the receipt proves nothing.
    with Ledger.open(c.node_dir, read_only=True) as ledger:
        c_key = ledger.own_log.verifier_key
    assert audit(["verify-receipt", str(saved), "--vkey", c_key]) == 1
    assert "FAILED: UnknownKeyError" in capsys.readouterr().err
    # B disputes the PDQ entry; the opinion travels B -> C and shows there.
    with Ledger.open(b.node_dir) as ledger:
        ledger.append([make_opinion(ledger, A, 1, "dispute", note="a cartoon")])
    doc = await eventually(
        lambda: post_match(b.node_dir, c, {"hashes": body["hashes"]}),
        until=lambda doc: doc["matches"][1]["hits"][0]["opinions"],
        what="B's opinion to show at C",
    )
    opinions = doc["matches"][1]["hits"][0]["opinions"]
    assert opinions == [
        {"origin": B, "index": 0, "verdict": "dispute", "note": "a cartoon", "trusted": True}
    ]
    # A retracts the PDQ entry: C stops matching it as soon as the retraction arrives.
    with Ledger.open(a.node_dir) as ledger:
        ledger.append([RetractEntry(index=1, reason="false positive")])
    doc = await wait_hits(b.node_dir, c, body, 1)
    assert [m["i"] for m in doc["matches"]] == [0]
