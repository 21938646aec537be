"""protocol.witness: the add-checkpoint body and the answers, strictly."""

from __future__ import annotations

import hashlib

import pytest

from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.cosignature import verify_cosignature
from protocol.encoding import encode_b64
from protocol.errors import MalformedError
from protocol.keys import SIG_COSIGNATURE_V1, NoteSigner
from protocol.note import NoteSignature, open_note, parse_note
from protocol.witness import (
    MAX_PROOF_LINES,
    AddCheckpointRequest,
    attach_cosignatures,
    encode_cosignature_lines,
    encode_size_body,
    parse_cosignature_lines,
    parse_size_body,
)

ORIGIN = "example.com/behind-the-sofa"
LOG = NoteSigner.from_seed(ORIGIN, b"\x01" * 32)
W1 = NoteSigner.from_seed("witness.example/w1", b"\x02" * 32, SIG_COSIGNATURE_V1)
W2 = NoteSigner.from_seed("witness.example/w2", b"\x03" * 32, SIG_COSIGNATURE_V1)
ROOT = hashlib.sha256(b"root").digest()
NOTE = sign_checkpoint(Checkpoint(origin=ORIGIN, size=20, root_hash=ROOT), LOG)
PROOF = tuple(hashlib.sha256(b"%d" % i).digest() for i in range(4))


def cosign(signer: NoteSigner, timestamp: int = 1_700_000_000) -> NoteSignature:
    note = parse_note(NOTE)
    from protocol.cosignature import sign_cosignature

    raw = sign_cosignature(signer, note.text.encode(), timestamp)
    return NoteSignature(name=signer.name, key_id=signer.verifier().key_id, signature=raw)


def test_request_round_trips_in_the_spec_layout() -> None:
    req = AddCheckpointRequest(old_size=10, proof=PROOF, note=NOTE)
    body = req.to_bytes()
    lines = body.decode().split("\n")
    assert lines[0] == "old 10"
    assert lines[1:5] == [encode_b64(h) for h in PROOF]
    assert lines[5] == ""
    assert body.endswith(NOTE.encode())
    assert AddCheckpointRequest.from_bytes(body) == req
    assert req.checkpoint.size == 20


def test_request_without_proof_lines() -> None:
    body = b"old 0\n\n" + NOTE.encode()
    req = AddCheckpointRequest.from_bytes(body)
    assert (req.old_size, req.proof, req.note) == (0, (), NOTE)
    assert req.to_bytes() == body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"old 010\n\n" + NOTE.encode(), "line 1"),
        (b"old -1\n\n" + NOTE.encode(), "line 1"),
        (b"old 10\r\n\n" + NOTE.encode(), "line 1"),
        (b"Old 10\n\n" + NOTE.encode(), "line 1"),
        (b"old  10\n\n" + NOTE.encode(), "line 1"),
        (b"old 10\n" + NOTE.encode(), "line 2"),  # no blank line: the origin is no proof line
        (b"old 10\nAAAA\n\n" + NOTE.encode(), "line 2"),  # not 32 bytes
        (
            b"old 10\n" + encode_b64(PROOF[0]).rstrip("=").encode() + b"\n\n" + NOTE.encode(),
            "line 2",
        ),
        (b"old 10\n\nnot a note\n", "note"),
        (b"old 10\n\n" + NOTE.encode()[:-1], "note"),  # no final newline
        (b"old 10\n\n\xff" + NOTE.encode(), "body"),
    ],
)
def test_request_parsing_is_strict(body: bytes, field: str) -> None:
    with pytest.raises(MalformedError) as info:
        AddCheckpointRequest.from_bytes(body)
    assert info.value.field == field


def test_request_refuses_more_than_63_proof_lines() -> None:
    proof = PROOF[:1] * (MAX_PROOF_LINES + 1)
    body = ("old 1\n" + "".join(encode_b64(h) + "\n" for h in proof) + "\n" + NOTE).encode()
    with pytest.raises(MalformedError, match="63"):
        AddCheckpointRequest.from_bytes(body)
    ok = ("old 1\n" + "".join(encode_b64(h) + "\n" for h in proof[:-1]) + "\n" + NOTE).encode()
    assert len(AddCheckpointRequest.from_bytes(ok).proof) == MAX_PROOF_LINES


def test_request_body_must_hold_a_checkpoint() -> None:
    from protocol.note import sign_note

    not_checkpoint = sign_note("hello\n", [LOG])
    with pytest.raises(MalformedError):
        AddCheckpointRequest.from_bytes(b"old 0\n\n" + not_checkpoint.encode())


def test_size_body() -> None:
    assert encode_size_body(20852014) == b"20852014\n"
    assert parse_size_body(b"0\n") == 0
    for bad in (b"12", b"012\n", b"12\n\n", b" 12\n", b"-1\n", b"\xff\n"):
        with pytest.raises(MalformedError):
            parse_size_body(bad)


def test_cosignature_lines_round_trip_and_verify() -> None:
    sigs = (cosign(W1), cosign(W2, 1_700_000_001))
    body = encode_cosignature_lines(sigs)
    assert body.decode().count("\n") == 2
    parsed = parse_cosignature_lines(body)
    assert parsed == sigs
    text = parse_note(NOTE).text.encode()
    assert verify_cosignature(W1.verifier(), text, parsed[0].signature) == 1_700_000_000
    # The spec's suggested client check: append the lines to the note and open it.
    opened = open_note(NOTE + body.decode(), [W1.verifier(), W2.verifier()])
    assert {v.verifier.name for v in opened.verified} == {W1.name, W2.name}


@pytest.mark.parametrize(
    "body",
    [b"", b"\n", b"- witness AAAA\n", "\u2014 witness\n".encode(), "\u2014 w AAAAAA==\n".encode()],
)
def test_cosignature_lines_are_strict(body: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_cosignature_lines(body)


def test_attach_skips_keys_already_present() -> None:
    first, again = cosign(W1, 1), cosign(W1, 2)
    note = attach_cosignatures(NOTE, [first, cosign(W2)])
    assert [s.name for s in note.signatures] == [ORIGIN, W1.name, W2.name]
    twice = attach_cosignatures(note, [again])
    assert twice == note
    # The result is a note every verifier parses and accepts.
    open_note(note.to_text(), [LOG.verifier(), W1.verifier(), W2.verifier()])
