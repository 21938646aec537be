"""Match receipts: built from a real tree, verified with protocol/ alone, tampering caught."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.__main__ import main
from protocol.checkpoint import Checkpoint, cosign_checkpoint, sign_checkpoint
from protocol.encoding import encode_b64
from protocol.entry import AddEntry, OpinionEntry, RetractEntry
from protocol.errors import (
    InvalidSignatureError,
    MalformedError,
    OriginMismatchError,
    ProofError,
    QuorumError,
    RootMismatchError,
    UnknownKeyError,
)
from protocol.hashing import hash_leaf, hash_leaves
from protocol.keys import SIG_COSIGNATURE_V1, NoteSigner
from protocol.receipt import MatchReceipt, parse_receipt, verify_receipt
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
    # The same command reads the tlog-proof form, told by content.
    proof = tmp_path / "receipt.tlog-proof"
    proof.write_bytes(tree.receipt(1, signer).to_tlog_proof())
    assert main(["verify-receipt", str(proof), "--vkey", vkey]) == 0
    assert f"entry 1 of {ORIGIN}" in capsys.readouterr().out
    proof.write_text(_flip_first_proof_hash(proof.read_text()))
    assert main(["verify-receipt", str(proof), "--vkey", vkey]) == 1
    assert "FAILED: RootMismatchError: inclusion proof for index 1" in capsys.readouterr().err
    proof.write_text(_swap_line(proof.read_text(), 3, "index 01"))
    assert main(["verify-receipt", str(proof), "--vkey", vkey]) == 1
    assert "index: expected a decimal number" in capsys.readouterr().err


# -- the C2SP tlog-proof form ------------------------------------------------------------


def _swap_line(text: str, number: int, line: str) -> str:
    lines = text.split("\n")
    lines[number - 1] = line
    return "\n".join(lines)


def _drop_line(text: str, number: int) -> str:
    lines = text.split("\n")
    del lines[number - 1]
    return "\n".join(lines)


def _flip_first_proof_hash(text: str) -> str:
    lines = text.split("\n")
    raw = bytearray(base64.b64decode(lines[3]))
    raw[0] ^= 1
    lines[3] = encode_b64(bytes(raw))
    return "\n".join(lines)


def _break_log_signature(text: str) -> str:
    head, sig = text.rsplit("\n— ", 1)
    name, b64 = sig.rstrip("\n").split(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 1
    return f"{head}\n— {name} {encode_b64(bytes(raw))}\n"


# (name, how the valid text of entry 3 of a 7-entry tree is damaged, the exact error).
# Lines: 1 header, 2 extra, 3 index, 4-6 the proof, 7 empty, 8- the checkpoint.
TLOG_PROOF_VECTORS: list[tuple[str, Callable[[str], str], type[Exception], str]] = [
    (
        "bad header",
        lambda t: t.replace("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2", 1),
        MalformedError,
        "line 1: the first line must be c2sp.org/tlog-proof@v1",
    ),
    (
        "header with CRLF",
        lambda t: t.replace("\n", "\r\n", 1),
        MalformedError,
        "line 1: the first line must be c2sp.org/tlog-proof@v1",
    ),
    (
        "index with a leading zero",
        lambda t: _swap_line(t, 3, "index 03"),
        MalformedError,
        "index: expected a decimal number without sign or leading zeros",
    ),
    (
        "index with a sign",
        lambda t: _swap_line(t, 3, "index +3"),
        MalformedError,
        "index: expected a decimal number without sign or leading zeros",
    ),
    (
        "index before extra",
        lambda t: _swap_line(_swap_line(t, 2, "index 3"), 3, t.split("\n")[1]),
        MalformedError,
        "line 2: expected 'extra <base64 of the entry bytes>': a receipt carries its entry",
    ),
    (
        "no extra data",
        lambda t: _drop_line(t, 2),
        MalformedError,
        "line 2: expected 'extra <base64 of the entry bytes>': a receipt carries its entry",
    ),
    (
        "no index line",
        lambda t: _drop_line(t, 3),
        MalformedError,
        "line 3: expected 'index <decimal>'",
    ),
    (
        "proof one hash short",
        lambda t: _drop_line(t, 6),
        ProofError,
        "wrong proof size 2, want 3",
    ),
    (
        "proof one hash long",
        lambda t: _swap_line(t, 6, t.split("\n")[5] + "\n" + t.split("\n")[5]),
        ProofError,
        "wrong proof size 4, want 3",
    ),
    (
        "proof hash in URL-safe base64",
        lambda t: _swap_line(t, 4, "_" + t.split("\n")[3][1:]),
        MalformedError,
        "line 4: expected standard padded base64",
    ),
    (
        "proof hash without padding",
        lambda t: _swap_line(t, 4, t.split("\n")[3].rstrip("=")),
        MalformedError,
        "line 4: expected standard padded base64",
    ),
    (
        "proof hash of 31 bytes",
        lambda t: _swap_line(t, 4, encode_b64(b"\x01" * 31)),
        MalformedError,
        "line 4: expected 32 bytes, got 31",
    ),
    (
        "extra data not base64",
        lambda t: _swap_line(t, 2, "extra not*base64"),
        MalformedError,
        "extra: expected standard padded base64",
    ),
    (
        "no empty line before the checkpoint",
        lambda t: _drop_line(t, 7),
        MalformedError,
        "tlog-proof: no empty line between the inclusion proof and the checkpoint",
    ),
    (
        "two empty lines before the checkpoint",
        lambda t: _swap_line(t, 7, "\n"),
        MalformedError,
        "line 7: unexpected empty line: exactly one separates the proof from the checkpoint",
    ),
    (
        "empty line inside the proof",
        lambda t: _swap_line(t, 5, "\n" + t.split("\n")[4]),
        MalformedError,
        "line 5: unexpected empty line: exactly one separates the proof from the checkpoint",
    ),
    (
        "empty line after the checkpoint",
        lambda t: t + "\n",
        MalformedError,
        "checkpoint: empty line after the checkpoint",
    ),
    (
        "checkpoint signature wrong",
        _break_log_signature,
        InvalidSignatureError,
        "signature by {name} ({key_id}) does not verify",
    ),
    (
        "proof not matching the root",
        _flip_first_proof_hash,
        RootMismatchError,
        "inclusion proof for index 3 at size 7 does not match",
    ),
    (
        "extra data of another entry",
        lambda t: _swap_line(t, 2, "extra " + encode_b64(adds(7)[4])),
        RootMismatchError,
        "inclusion proof for index 3 at size 7 does not match",
    ),
]


def _parse_and_verify(data: bytes, signer: NoteSigner) -> None:
    verify_receipt(parse_receipt(data), signer.verifier())


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [pytest.param(d, e, m, id=name) for name, d, e, m in TLOG_PROOF_VECTORS],
)
def test_tlog_proof_bad_input_is_named(
    signer: NoteSigner, damage: Callable[[str], str], error: type[Exception], message: str
) -> None:
    text = Tree(adds(7)).receipt(3, signer).to_tlog_proof().decode()
    _parse_and_verify(text.encode(), signer)  # the undamaged proof verifies
    with pytest.raises(error) as info:
        _parse_and_verify(damage(text).encode(), signer)
    message = message.format(name=ORIGIN, key_id=f"{signer.verifier().key_id:08x}")
    if error is RootMismatchError:  # the message goes on with both roots
        assert str(info.value).startswith(message + ": calculated root ")
    else:
        assert str(info.value) == message


def test_tlog_proof_extra_data_must_be_a_canonical_entry(signer: NoteSigner) -> None:
    # Included in the signed tree, so only the entry check can refuse it.
    datas = [*adds(2), b'{"kind": "add"}']
    data = Tree(datas).receipt(2, signer).to_tlog_proof()
    receipt = parse_receipt(data)
    assert receipt.form == "tlog-proof"
    with pytest.raises(MalformedError) as info:
        verify_receipt(receipt, signer.verifier())
    assert info.value.field is not None and info.value.field.startswith("extra")


def test_v1_and_v2_entries_are_carried_as_opaque_bytes(signer: NoteSigner) -> None:
    # Version 2 (salted, what the writer appends) and version 1 (older logs)
    # side by side in one tree; a receipt of each verifies in both forms.
    v2 = [
        AddEntry.create(signal_type="sha256", value=f"{i:064x}").salted(f"{i:032x}").to_bytes()
        for i in range(3)
    ]
    tree = Tree([*adds(2), *v2])
    for index in (1, 3):
        receipt = tree.receipt(index, signer)
        for data in (receipt.to_json(), receipt.to_tlog_proof()):
            verified = verify_receipt(parse_receipt(data), signer.verifier())
            assert verified.leaf_hash == hash_leaf(tree.datas[index])
            assert isinstance(verified.entry, AddEntry)
            assert verified.entry.to_bytes() == tree.datas[index]
        extra = receipt.to_tlog_proof().decode().split("\n")[1]
        assert extra == "extra " + encode_b64(tree.datas[index])
        assert (b'"salt":' in base64.b64decode(extra[6:])) == (index == 3)


def test_tlog_proof_layout_follows_the_spec(signer: NoteSigner) -> None:
    tree = Tree(adds(7))
    receipt = tree.receipt(3, signer)
    lines = receipt.to_tlog_proof().decode().split("\n")
    assert lines[0] == "c2sp.org/tlog-proof@v1"
    assert lines[1] == "extra " + encode_b64(tree.datas[3])
    assert lines[2] == "index 3"
    assert lines[3:6] == [encode_b64(h) for h in receipt.hashes]
    assert lines[6] == ""
    assert "\n".join(lines[7:]) == receipt.checkpoint
    # A one-entry tree has an empty proof: the index line is followed by the empty line.
    single = Tree(adds(1)).receipt(0, signer).to_tlog_proof().decode()
    assert single.split("\n")[2:4] == ["index 0", ""]
    assert verify_receipt(parse_receipt(single.encode()), signer.verifier()).index == 0


def test_tlog_proof_keeps_cosignatures_and_refuses_a_mismatched_receipt(
    signer: NoteSigner,
) -> None:
    receipt = Tree(adds(3)).receipt(1, signer)
    witness = NoteSigner.generate("witness.example/w", SIG_COSIGNATURE_V1)
    cosigned = replace(
        receipt, checkpoint=cosign_checkpoint(receipt.checkpoint, witness, 1_700_000_000)
    )
    parsed = parse_receipt(cosigned.to_tlog_proof())
    verified = verify_receipt(
        parsed, signer.verifier(), witnesses=[witness.verifier()], witness_threshold=1
    )
    assert verified.cosignatures == {"witness.example/w": 1_700_000_000}
    # The tlog-proof form reads origin and size from the checkpoint, so a
    # receipt that says otherwise cannot be written in it.
    with pytest.raises(MalformedError) as info:
        replace(receipt, index=0, size=2).to_tlog_proof()
    assert info.value.field == "checkpoint"
    with pytest.raises(MalformedError) as info:
        replace(receipt, form="yaml")  # type: ignore[arg-type]
    assert info.value.field == "form"


_ROUND_TRIP_SIGNER = NoteSigner.generate(ORIGIN)


@settings(max_examples=60, deadline=None)
@given(
    entry=st.binary(min_size=1, max_size=300),
    size=st.integers(min_value=1, max_value=2**63 - 1),
    data=st.data(),
    cosigned=st.booleans(),
)
def test_tlog_proof_round_trip(
    entry: bytes, size: int, data: st.DataObject, cosigned: bool
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    count = data.draw(st.integers(min_value=0, max_value=63))
    hashes = tuple(data.draw(st.binary(min_size=32, max_size=32)) for _ in range(count))
    root = data.draw(st.binary(min_size=32, max_size=32))
    note = sign_checkpoint(Checkpoint(origin=ORIGIN, size=size, root_hash=root), _ROUND_TRIP_SIGNER)
    if cosigned:
        note = cosign_checkpoint(
            note, NoteSigner.generate("witness.example/w", SIG_COSIGNATURE_V1), 1_700_000_000
        )
    receipt = MatchReceipt(
        origin=ORIGIN, index=index, size=size, entry=entry, hashes=hashes, checkpoint=note
    )
    proof = receipt.to_tlog_proof()
    parsed = parse_receipt(proof)
    assert parsed == receipt and parsed.form == "tlog-proof"
    assert parsed.to_tlog_proof() == proof
    as_json = parse_receipt(receipt.to_json())
    assert as_json == receipt and as_json.form == "json"
