"""Leaf hashes are hiding commitments: an attacker with the auditor's view cannot test membership.

The attacker holds everything the auditor role can read over the real
mutual-TLS API (leaf hashes, checkpoints, inclusion proofs, including the
``leaf_hash=`` look-up that answers 404 for a hash not in the log), the
public hash tiles of the tree (as ``hashmesh publish`` writes them, and as
``protocol.tiles`` computes them), every value listed in
the ledger and the whole label vocabulary of ``docs/labels.md``. It
recomputes candidate leaf hashes for every value under every plausible
label set and looks for them. On a version 2 (salted) log it finds
nothing; the same attack on version 1 encodings of the same entries (what
the log held before salting) finds every one, which shows the attack
itself works. Two nodes that import the same list in the same order under
the same origin share no leaf hash.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import aiohttp
import pytest

from node.ledger import Ledger
from node.ledger.publish import publish
from node.tls import client_ssl_context
from protocol.entry import LABEL_PATTERN, AddEntry, parse_entry
from protocol.hashing import hash_leaf
from protocol.tiles import compute_tiles_from_leaf_hashes
from tests.api.conftest import Identity, make_identity
from tests.audit.conftest import ORIGIN, ROOT, new_node, serve

pytestmark = pytest.mark.integration

SIGNAL_TYPES = ("md5", "sha1", "sha256")


def vocabulary() -> list[str]:
    """Every label docs/labels.md spells out (in backticks), as the attacker would collect them."""
    text = (ROOT / "docs" / "labels.md").read_text(encoding="utf-8")
    found = {m for m in re.findall(r"`([^`\s]+)`", text) if re.fullmatch(LABEL_PATTERN, m)}
    return sorted(found)


def listed(count: int, labels: list[str]) -> list[AddEntry]:
    """Drafts of a hotline's list: distinct values, one or two vocabulary labels each."""
    out = []
    for i in range(count):
        digest = hashlib.sha256(f"listed-{i}".encode()).digest()
        signal_type = SIGNAL_TYPES[i % len(SIGNAL_TYPES)]
        length = {"md5": 16, "sha1": 20, "sha256": 32}[signal_type]
        chosen = [labels[i % len(labels)]]
        if i % 2:
            chosen.append(labels[(i * 7 + 3) % len(labels)])
        out.append(
            AddEntry.create(signal_type=signal_type, value=digest[:length].hex(), labels=chosen)
        )
    return out


def candidate_encodings(
    values: Iterable[tuple[str, str]], labels: list[str]
) -> Iterator[tuple[tuple[str, str], bytes]]:
    """Every encoding the attacker can build for each value: no label, one, or two labels.

    Version 1 (what the value's entry was before salting), and version 2
    with every salt an attacker could guess without the entry's bytes: all
    zeros, all ones, the value itself, and a hash of the value.
    """
    label_sets = [(), *((x,) for x in labels), *itertools.combinations(labels, 2)]
    for signal_type, value in values:
        guesses = [
            "00" * 16,
            "ff" * 16,
            value[:32].ljust(32, "0"),
            hashlib.sha256(value.encode()).hexdigest()[:32],
        ]
        for label_set in label_sets:
            draft = AddEntry.create(signal_type=signal_type, value=value, labels=label_set)
            yield (signal_type, value), draft.to_bytes()
            for salt in guesses:
                yield (signal_type, value), draft.salted(salt).to_bytes()


def attack(
    values: list[tuple[str, str]], labels: list[str], known: set[bytes]
) -> set[tuple[str, str]]:
    """The values whose membership the attacker confirms against a set of leaf hashes."""
    return {
        identity
        for identity, data in candidate_encodings(values, labels)
        if hash_leaf(data) in known
    }


def published_hashes(out: Path) -> set[bytes]:
    """Every 32-byte hash in every file ``hashmesh publish`` wrote (the public surface)."""
    out_hashes: set[bytes] = set()
    for path in out.rglob("*"):
        if path.is_file() and path.parts[len(out.parts)] == "tile":
            data = path.read_bytes()
            assert len(data) % 32 == 0
            out_hashes |= {data[i : i + 32] for i in range(0, len(data), 32)}
    return out_hashes


def tile_hashes(leaf_hashes: list[bytes]) -> set[bytes]:
    """Every hash in the public hash tiles of a tree with these leaves (all levels)."""
    out: set[bytes] = set()
    for _tile, data in compute_tiles_from_leaf_hashes(leaf_hashes):
        out |= {data[i : i + 32] for i in range(0, len(data), 32)}
    return out


async def auditor_view(url: str, cert_pem: str, ident: Identity, size: int) -> dict[str, object]:
    """What the auditor role reads: the checkpoint, every leaf hash, an inclusion proof."""
    ctx = client_ssl_context(ident.cert_path, ident.key_path, cert_pem)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async with s.get(f"{url}/v1/entries", params={"origin": ORIGIN, "start": "0"}) as r:
            assert r.status == 403  # the auditor never reads entry bytes
        async with s.get(f"{url}/v1/checkpoint", params={"origin": ORIGIN}) as r:
            assert r.status == 200
            checkpoint = await r.text()
        leaf_hashes: list[bytes] = []
        while len(leaf_hashes) < size:
            params = {"origin": ORIGIN, "start": str(len(leaf_hashes))}
            async with s.get(f"{url}/v1/leaf-hashes", params=params) as r:
                assert r.status == 200
                page = json.loads(await r.read())["leaf_hashes"]
            assert page
            leaf_hashes += [bytes.fromhex(h) for h in page]
        async with s.get(f"{url}/v1/proof/inclusion", params={"origin": ORIGIN, "index": "0"}) as r:
            assert r.status == 200
            proof = await r.read()
    return {"checkpoint": checkpoint, "leaf_hashes": leaf_hashes, "proof": proof}


async def lookup_oracle(
    url: str, cert_pem: str, ident: Identity, candidates: Iterable[bytes]
) -> int:
    """How many candidate leaf hashes ``/v1/proof/inclusion?leaf_hash=`` finds (200, not 404)."""
    ctx = client_ssl_context(ident.cert_path, ident.key_path, cert_pem)
    hits = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        for leaf_hash in candidates:
            params = {"origin": ORIGIN, "leaf_hash": leaf_hash.hex()}
            async with s.get(f"{url}/v1/proof/inclusion", params=params) as r:
                assert r.status in (200, 404), await r.text()
                hits += r.status == 200
    return hits


async def test_the_auditor_view_confirms_no_listed_value(tmp_path: Path) -> None:
    labels = vocabulary()
    assert len(labels) >= 10, labels  # the attacker's vocabulary is the real one
    drafts = listed(60, labels)
    node = new_node(tmp_path, "a")
    with Ledger.open(node) as ledger:
        ledger.append(drafts)
        ledger.retract(5, "false positive")
        stored = [bytes(d) for _i, d, _h in ledger.entries(ledger.own_log)]
    written = [parse_entry(d) for d in stored]
    assert [e.version for e in written] == [2] * len(written)
    values = [(e.signal_type, e.value) for e in drafts]
    with Ledger.open(node) as ledger:
        publish(ledger, tmp_path / "public")
    public = published_hashes(tmp_path / "public")
    # The published tree holds no entry bytes and no salt.
    published_text = b"".join(
        p.read_bytes() for p in (tmp_path / "public").rglob("*") if p.is_file()
    )
    assert not any(e.salt and e.salt.encode() in published_text for e in written)
    assert not (tmp_path / "public" / "tile" / "entries").exists()

    auditor = make_identity(tmp_path, "auditor")
    served = await serve(node, auditor)
    try:
        view = await auditor_view(served.url, served.cert_pem, auditor, len(stored))
        leaf_hashes = view["leaf_hashes"]
        assert isinstance(leaf_hashes, list)
        assert leaf_hashes == [hash_leaf(d) for d in stored]
        known = set(leaf_hashes) | tile_hashes(leaf_hashes) | public
        assert set(leaf_hashes) <= public  # the published level-0 tiles are the leaf hashes
        # No salt reaches the auditor: the entry bytes are the only place it lives.
        seen = repr(view).encode()
        for entry in written:
            assert entry.salt is not None and entry.salt.encode() not in seen

        # The attack on the salted log: nothing.
        assert attack(values, labels, known) == set()
        # The API's look-up by leaf hash is no oracle either: the exact
        # version 1 encoding of every listed entry, and its guessed salts.
        exact = [hash_leaf(d.to_bytes()) for d in drafts]
        exact += [hash_leaf(d.salted("00" * 16).to_bytes()) for d in drafts]
        assert await lookup_oracle(served.url, served.cert_pem, auditor, exact) == 0
        # ... while a leaf hash the auditor did see is found (the oracle works).
        assert await lookup_oracle(served.url, served.cert_pem, auditor, leaf_hashes[:3]) == 3
    finally:
        await served.close()

    # The same attack on the same entries encoded as version 1 finds every one.
    v1_leaf_hashes = [hash_leaf(d.to_bytes()) for d in drafts]
    assert all(b'"v":1' in d.to_bytes() and b"salt" not in d.to_bytes() for d in drafts)
    v1_known = set(v1_leaf_hashes) | tile_hashes(v1_leaf_hashes)
    assert attack(values, labels, v1_known) == set(values)


def test_two_nodes_importing_the_same_list_share_no_leaf_hash(tmp_path: Path) -> None:
    drafts = listed(300, vocabulary())
    leaf_sets = []
    for name in ("one", "two"):
        node = new_node(tmp_path, name)  # the same origin for both
        with Ledger.open(node) as ledger:
            ledger.append(drafts)
            assert ledger.own_log.origin == ORIGIN
            leaves = [bytes(h) for _i, _d, h in ledger.entries(ledger.own_log)]
        assert len(leaves) == len(drafts)
        leaf_sets.append(leaves)
    one, two = leaf_sets
    assert not set(one) & set(two)
    # Nor any hash of their public tiles above the leaves.
    assert not tile_hashes(one) & tile_hashes(two)
    # Within one log every leaf hash differs too, and salts are fresh per entry.
    assert len(set(one)) == len(one)
