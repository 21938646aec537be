"""Match receipts: built from a real tree, verified with protocol/ alone, tampering caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.__main__ import main
from protocol.checkpoint import Checkpoint, cosign_checkpoint, sign_checkpoint
from protocol.encoding import encode_b64
from protocol.entry import AddEntry, OpinionEntry, RetractEntry
from protocol.errors import (
    MalformedError,
    OriginMismatchError,
    ProofError,
    QuorumError,
    RootMismatchError,
    UnknownKeyError,
)
from protocol.hashing import hash_leaf, hash_leaves
from protocol.keys import SIG_COSIGNATURE_V1, NoteSigner
from protocol.receipt import MatchReceipt, verify_receipt
from protocol.tree import CompactRange, NodeId, compute_inclusion_proof

ORIGIN = "hotline-receipt.example/hashmesh"


class Tree:
    """An in-memory tree with every perfect node kept, to compute proofs."""

    def __init__(self, datas: list[bytes]) -> None:
        self.datas = datas
        leaves = hash_leaves(datas)
        self.nodes: dict[NodeId, bytes] = {NodeId(0, i): h for i, h in enumerate(leaves)}
        cr = CompactRange.empty()
        for run in cr.extend(leaves, collect=True):
            for i, h in enumerate(run.hashes):
                self.nodes[NodeId(run.level, run.start + i)] = h
        self.root = cr.root()

    def get_node_hashes(self, ids: object) -> list[bytes]:
        return [self.nodes[n] for n in ids]  # type: ignore[attr-defined]

    def receipt(self, index: int, signer: NoteSigner, *, origin: str = ORIGIN) -> MatchReceipt:
        size = len(self.datas)
        note = sign_checkpoint(Checkpoint(origin=origin, size=size, root_hash=self.root), signer)
        return MatchReceipt(
            origin=origin,
            index=index,
            size=size,
            entry=self.datas[index],
            hashes=tuple(compute_inclusion_proof(index, size, self)),
            checkpoint=note,
        )


def adds(count: int) -> list[bytes]:
    return [
        AddEntry.create(
            signal_type="sha256", value=f"{i:064x}", labels=["iwf:category-a"]
        ).to_bytes()
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.mark.parametrize(("size", "index"), [(1, 0), (2, 1), (7, 3), (16, 15), (33, 0), (33, 32)])
def test_receipt_verifies_and_reports_what_it_proves(
    signer: NoteSigner, size: int, index: int
) -> None:
    tree = Tree(adds(size))
    receipt = tree.receipt(index, signer)
    verified = verify_receipt(receipt, signer.verifier())
    assert (verified.origin, verified.index, verified.size) == (ORIGIN, index, size)
    assert verified.root_hash == tree.root
    assert verified.leaf_hash == hash_leaf(tree.datas[index])
    assert isinstance(verified.entry, AddEntry)
    assert verified.entry.value == f"{index:064x}"
    assert verified.entry.labels == ("iwf:category-a",)


def test_json_round_trip_is_strict_and_canonical(signer: NoteSigner) -> None:
    receipt = Tree(adds(5)).receipt(2, signer)
    doc = receipt.to_json()
    assert MatchReceipt.from_json(doc) == receipt
    obj = json.loads(doc)
    assert set(obj) == {"receipt", "origin", "index", "size", "entry_b64", "hashes", "checkpoint"}
    assert obj["entry_b64"] == encode_b64(receipt.entry)
    assert all(h == h.lower() and len(h) == 64 for h in obj["hashes"])
    for change, field in [
        ({"extra": 1}, "extra"),
        ({"receipt": 2}, "receipt"),
        ({"receipt": True}, "receipt"),
        ({"index": -1}, "index"),
        ({"index": "2"}, "index"),
        ({"size": 2}, "index"),  # index must be below size
        ({"hashes": [h.upper() for h in obj["hashes"]]}, "hashes[0]"),
        ({"hashes": "00"}, "hashes"),
        ({"entry_b64": obj["entry_b64"] + "="}, "entry_b64"),
        ({"entry_b64": ""}, "entry_b64"),
        ({"origin": "has space"}, "origin"),
        ({"checkpoint": ""}, "checkpoint"),
    ]:
        with pytest.raises(MalformedError) as info:
            MatchReceipt.from_json(json.dumps({**obj, **change}))
        assert info.value.field == field, change
    missing = {k: v for k, v in obj.items() if k != "checkpoint"}
    with pytest.raises(MalformedError, match="missing"):
        MatchReceipt.from_json(json.dumps(missing))
    with pytest.raises(MalformedError, match="duplicate"):
        MatchReceipt.from_json(doc[:-1] + b',"index":0}')
    with pytest.raises(MalformedError, match="object"):
        MatchReceipt.from_json(b"[]")


def test_tampering_is_caught(signer: NoteSigner) -> None:
    tree = Tree(adds(9))
    receipt = tree.receipt(4, signer)
    other = tree.datas[5]
    fields = {
        "origin": receipt.origin,
        "index": receipt.index,
        "size": receipt.size,
        "entry": receipt.entry,
        "hashes": receipt.hashes,
        "checkpoint": receipt.checkpoint,
    }
    with pytest.raises(RootMismatchError):  # another entry's bytes at this index
        verify_receipt(MatchReceipt(**{**fields, "entry": other}), signer.verifier())
    with pytest.raises(RootMismatchError):  # the same bytes claimed at another index
        verify_receipt(MatchReceipt(**{**fields, "index": 5}), signer.verifier())
    flipped = (bytes([receipt.hashes[0][0] ^ 1]) + receipt.hashes[0][1:], *receipt.hashes[1:])
    with pytest.raises(RootMismatchError):
        verify_receipt(MatchReceipt(**{**fields, "hashes": flipped}), signer.verifier())
    with pytest.raises(ProofError):  # a proof of the wrong length
        verify_receipt(MatchReceipt(**{**fields, "hashes": receipt.hashes[:-1]}), signer.verifier())
    with pytest.raises(ProofError, match="size"):
        verify_receipt(MatchReceipt(**{**fields, "size": 10}), signer.verifier())
    with pytest.raises(UnknownKeyError):  # signed by someone else under the same name
        verify_receipt(receipt, NoteSigner.generate(ORIGIN).verifier())
    with pytest.raises(OriginMismatchError):  # a checkpoint of another log
        verify_receipt(MatchReceipt(**{**fields, "origin": "other.example/log"}), signer.verifier())


def test_witness_policy_is_applied(signer: NoteSigner) -> None:
    receipt = Tree(adds(3)).receipt(1, signer)
    witness = NoteSigner.generate("witness.example/w", SIG_COSIGNATURE_V1)
    with pytest.raises(QuorumError):
        verify_receipt(
            receipt, signer.verifier(), witnesses=[witness.verifier()], witness_threshold=1
        )
    cosigned = MatchReceipt(
        origin=receipt.origin,
        index=receipt.index,
        size=receipt.size,
        entry=receipt.entry,
        hashes=receipt.hashes,
        checkpoint=cosign_checkpoint(receipt.checkpoint, witness, 1_700_000_000),
    )
    verified = verify_receipt(
        cosigned, signer.verifier(), witnesses=[witness.verifier()], witness_threshold=1
    )
    assert verified.cosignatures == {"witness.example/w": 1_700_000_000}
    # Without the witness key the extra line is ignored, per the signed-note spec.
    assert verify_receipt(cosigned, signer.verifier()).cosignatures == {}


def test_non_canonical_entry_bytes_are_refused_even_when_included(signer: NoteSigner) -> None:
    datas = [*adds(2), b'{"kind": "add"}']
    receipt = Tree(datas).receipt(2, signer)
    with pytest.raises(MalformedError) as info:
        verify_receipt(receipt, signer.verifier())
    assert info.value.field is not None and info.value.field.startswith("entry_b64")


def test_cli_verify_receipt(
    signer: NoteSigner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opinion = OpinionEntry(
        origin="hotline-b.example/hashmesh", index=3, leaf_hash=b"\x07" * 32, verdict="dispute"
    ).to_bytes()
    retract = RetractEntry(index=0, reason="mistake").to_bytes()
    tree = Tree([*adds(3), opinion, retract])
    path = tmp_path / "receipt.json"
    vkey = signer.verifier().to_text()
    path.write_bytes(tree.receipt(1, signer).to_json())
    assert main(["verify-receipt", str(path), "--vkey", vkey]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: receipt verified: entry 1 of " + ORIGIN)
    assert f"add sha256 {1:064x}" in out and "iwf:category-a" in out and "size 5" in out
    path.write_bytes(tree.receipt(3, signer).to_json())
    assert main(["verify-receipt", str(path), "--vkey", vkey]) == 0
    assert "opinion 'dispute' on entry 3 of hotline-b.example/hashmesh" in capsys.readouterr().out
    # Another key: status 1 and one line on stderr.
    other = NoteSigner.generate(ORIGIN).verifier().to_text()
    assert main(["verify-receipt", str(path), "--vkey", other]) == 1
    assert "FAILED: UnknownKeyError" in capsys.readouterr().err
    # A damaged file: status 1, naming the field.
    doc = json.loads(path.read_text())
    doc["hashes"][0] = "zz"
    path.write_text(json.dumps(doc))
    assert main(["verify-receipt", str(path), "--vkey", vkey]) == 1
    assert "hashes[0]" in capsys.readouterr().err
    # A missing file is a usage error.
    assert main(["verify-receipt", str(tmp_path / "nope.json"), "--vkey", vkey]) == 2
