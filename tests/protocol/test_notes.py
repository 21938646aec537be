"""Keys, signed notes, checkpoints and cosignatures.

Conformance: the shared vectors (Go's sumdb/note) are reproduced byte for
byte. Then named bad cases, one per way a note can be wrong, each asserting
the exact error class, and properties over arbitrary input.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.checkpoint import Checkpoint, cosign_checkpoint, open_checkpoint, sign_checkpoint
from protocol.cosignature import cosignature_message, decode_cosignature
from protocol.encoding import MAX_UINT63
from protocol.errors import (
    InvalidSignatureError,
    MalformedError,
    OriginMismatchError,
    QuorumError,
    UnknownKeyError,
)
from protocol.keys import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    NoteSigner,
    NoteVerifier,
    compute_key_id,
)
from protocol.note import MAX_SIGNATURES, Note, NoteSignature, parse_note, sign_note

ED25519_L = 2**252 + 27742317777372353535851937790883648493


@pytest.fixture(scope="module")
def sn(tlog_vectors: dict[str, Any]) -> dict[str, str]:
    data: dict[str, str] = tlog_vectors["signed_note"]
    return data


@pytest.fixture(scope="module")
def log_signer(sn: dict[str, str]) -> NoteSigner:
    return NoteSigner.from_seed(sn["name"], bytes.fromhex(sn["ed25519_seed_hex"]))


@pytest.fixture(scope="module")
def witness_signer(sn: dict[str, str]) -> NoteSigner:
    return NoteSigner.from_seed("witness-b.example", bytes.fromhex(sn["witness_seed_hex"]))


# --- conformance with the independent implementation -------------------------


def test_vector_keys(
    sn: dict[str, str], log_signer: NoteSigner, witness_signer: NoteSigner
) -> None:
    assert log_signer.to_text() == sn["signer_key"]
    assert log_signer.verifier().to_text() == sn["verifier_key"]
    assert NoteSigner.from_text(sn["signer_key"]) == log_signer
    assert NoteVerifier.from_text(sn["verifier_key"]) == log_signer.verifier()
    assert witness_signer.verifier().to_text() == sn["witness_verifier_key"]
    # The key ID is the spec's hash, computed independently here.
    pub = log_signer.verifier().public_key
    digest = hashlib.sha256(sn["name"].encode() + b"\n\x01" + pub).digest()
    assert f"{int.from_bytes(digest[:4], 'big'):08x}" == sn["verifier_key"].split("+")[1]


def test_vector_signed_checkpoint(sn: dict[str, str], log_signer: NoteSigner) -> None:
    checkpoint = Checkpoint.from_text(sn["checkpoint_text"])
    assert checkpoint.to_text() == sn["checkpoint_text"]
    assert checkpoint.size == 7
    # Ed25519 is deterministic: the same seed gives the same signature.
    assert sign_checkpoint(checkpoint, log_signer) == sn["signed_checkpoint"]
    verified = open_checkpoint(
        sn["signed_checkpoint"].encode(), NoteVerifier.from_text(sn["verifier_key"])
    )
    assert verified.checkpoint == checkpoint
    assert dict(verified.cosignatures) == {}


def test_vector_signed_by_both(
    sn: dict[str, str], log_signer: NoteSigner, witness_signer: NoteSigner
) -> None:
    assert sign_note(sn["checkpoint_text"], [log_signer, witness_signer]) == sn["signed_by_both"]
    assert cosign_checkpoint(sn["signed_checkpoint"], witness_signer, 0) == sn["signed_by_both"]
    verified = open_checkpoint(
        sn["signed_by_both"],
        NoteVerifier.from_text(sn["verifier_key"]),
        witnesses=[NoteVerifier.from_text(sn["witness_verifier_key"])],
        witness_threshold=1,
    )
    assert dict(verified.cosignatures) == {"witness-b.example": None}
    assert parse_note(sn["signed_by_both"]).to_text() == sn["signed_by_both"]


# --- cosignature/v1 -----------------------------------------------------------


def test_cosignature_v1_round_trip(sn: dict[str, str], log_signer: NoteSigner) -> None:
    cosigner = NoteSigner.from_seed("witness-c.example", b"\x07" * 32, SIG_COSIGNATURE_V1)
    vkey = cosigner.verifier()
    assert base64.b64decode(vkey.to_text().split("+", 2)[2])[0] == 0x04
    digest = hashlib.sha256(b"witness-c.example\n\x04" + vkey.public_key).digest()
    assert vkey.key_id == int.from_bytes(digest[:4], "big")
    note = cosign_checkpoint(sn["signed_checkpoint"], cosigner, 1_700_000_000)
    sig = parse_note(note).signatures[-1]
    timestamp, raw = decode_cosignature(sig.signature)
    assert timestamp == 1_700_000_000
    # The signed message is exactly the spec's: header, time line, note text.
    message = cosignature_message(sn["checkpoint_text"].encode(), timestamp)
    assert message == b"cosignature/v1\ntime 1700000000\n" + sn["checkpoint_text"].encode()
    vkey.verify(message, raw)
    verified = open_checkpoint(note, log_signer.verifier(), witnesses=[vkey], witness_threshold=1)
    assert dict(verified.cosignatures) == {"witness-c.example": 1_700_000_000}


def test_cosignature_is_not_a_plain_signature(sn: dict[str, str], log_signer: NoteSigner) -> None:
    """Domain separation: a 0x04 signature line under a 0x01 key of the same seed fails."""
    seed = b"\x09" * 32
    cosigner = NoteSigner.from_seed("w.example", seed, SIG_COSIGNATURE_V1)
    plain = NoteSigner.from_seed("w.example", seed, SIG_ED25519).verifier()
    note = parse_note(cosign_checkpoint(sn["signed_checkpoint"], cosigner, 5))
    sig = note.signatures[-1]
    forged = Note(
        text=note.text,
        signatures=(
            note.signatures[0],
            NoteSignature(name=sig.name, key_id=plain.key_id, signature=sig.signature[8:]),
        ),
    )
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(forged.to_text(), log_signer.verifier(), witnesses=[plain])


def test_cosignature_timestamp_above_2_63_is_malformed(
    sn: dict[str, str], log_signer: NoteSigner
) -> None:
    cosigner = NoteSigner.from_seed("w.example", b"\x01" * 32, SIG_COSIGNATURE_V1)
    with pytest.raises(MalformedError):
        cosign_checkpoint(sn["signed_checkpoint"], cosigner, MAX_UINT63 + 1)
    note = parse_note(cosign_checkpoint(sn["signed_checkpoint"], cosigner, 1))
    sig = note.signatures[-1]
    bad = NoteSignature(
        name=sig.name, key_id=sig.key_id, signature=(2**63).to_bytes(8, "big") + sig.signature[8:]
    )
    forged = Note(text=note.text, signatures=(note.signatures[0], bad)).to_text()
    with pytest.raises(MalformedError):
        open_checkpoint(forged, log_signer.verifier(), witnesses=[cosigner.verifier()])


# --- named bad cases ------------------------------------------------------------


def _flip_sig_bit(note: str, line: int, bit: int) -> str:
    lines = note.split("\n")
    head, b64 = lines[line].rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[bit // 8] ^= 1 << (bit % 8)
    lines[line] = head + " " + base64.b64encode(bytes(raw)).decode()
    return "\n".join(lines)


def _bad_notes(sn: dict[str, str]) -> dict[str, tuple[str, type[Exception]]]:
    good = sn["signed_checkpoint"]
    body, sig = good.split("\n\n")
    sig_line = sig.rstrip("\n")
    name, b64 = sig_line[2:].split(" ")
    raw = base64.b64decode(b64)
    s_big = int.from_bytes(raw[4 + 32 :], "little") + ED25519_L
    non_canonical_s = raw[: 4 + 32] + s_big.to_bytes(32, "little")
    wrong_id = (int.from_bytes(raw[:4], "big") ^ 1).to_bytes(4, "big") + raw[4:]
    lines = body.split("\n")
    return {
        "flipped bit in key id": (_flip_sig_bit(good, 4, 3), UnknownKeyError),
        "flipped bit in R": (_flip_sig_bit(good, 4, 40), InvalidSignatureError),
        "flipped bit in S": (_flip_sig_bit(good, 4, 8 * 40), InvalidSignatureError),
        "wrong key hash": (
            f"{body}\n\n— {name} {base64.b64encode(wrong_id).decode()}\n",
            UnknownKeyError,
        ),
        "truncated signature (63 bytes)": (
            f"{body}\n\n— {name} {base64.b64encode(raw[:-1]).decode()}\n",
            InvalidSignatureError,
        ),
        "non-canonical S (S + L)": (
            f"{body}\n\n— {name} {base64.b64encode(non_canonical_s).decode()}\n",
            InvalidSignatureError,
        ),
        "flipped body: size": (good.replace("\n7\n", "\n8\n", 1), InvalidSignatureError),
        "non-canonical size (leading zero)": (
            good.replace("\n7\n", "\n07\n", 1),
            InvalidSignatureError,  # the signature is checked before the body
        ),
        "hyphen instead of em dash": (good.replace("\u2014", "-"), MalformedError),
        "en dash instead of em dash": (good.replace("\u2014", "\u2013"), MalformedError),
        "em dash without space": (good.replace("\u2014 ", "\u2014"), MalformedError),
        "two spaces after the name": (good.replace(f"{name} ", f"{name}  "), MalformedError),
        "trailing garbage after signatures": (good + "garbage", MalformedError),
        "trailing garbage line": (good + "garbage\n", MalformedError),
        "missing final newline": (good[:-1], MalformedError),
        "no blank line": (good.replace("\n\n", "\n"), MalformedError),
        "no signature": (body + "\n\n", MalformedError),
        "CRLF line ends": (good.replace("\n", "\r\n"), MalformedError),
        "tab in body": (good.replace("\n7\n", "\n7\t\n", 1), MalformedError),
        "unpadded base64 signature": (good[:-2] + "\n", MalformedError),
        "base64 with non-zero pad bits": (
            good.replace(b64, b64[:-2] + chr(ord(b64[-2]) + 1) + "="),
            MalformedError,
        ),
        "signature of 4 bytes": (
            f"{body}\n\n— {name} {base64.b64encode(raw[:4]).decode()}\n",
            MalformedError,
        ),
        "name with plus": (good.replace(f"— {name}", f"— a+{name}"), MalformedError),
        "only an unknown key": (
            f"{body}\n\n— someone.example {b64}\n",
            UnknownKeyError,
        ),
        "extra line in signed body is signed (size line altered)": (
            "\n".join([lines[0], lines[1] + "0", lines[2]]) + f"\n\n{sig}",
            InvalidSignatureError,
        ),
    }


BAD_NOTE_IDS = [
    "flipped bit in key id",
    "flipped bit in R",
    "flipped bit in S",
    "wrong key hash",
    "truncated signature (63 bytes)",
    "non-canonical S (S + L)",
    "flipped body: size",
    "non-canonical size (leading zero)",
    "hyphen instead of em dash",
    "en dash instead of em dash",
    "em dash without space",
    "two spaces after the name",
    "trailing garbage after signatures",
    "trailing garbage line",
    "missing final newline",
    "no blank line",
    "no signature",
    "CRLF line ends",
    "tab in body",
    "unpadded base64 signature",
    "base64 with non-zero pad bits",
    "signature of 4 bytes",
    "name with plus",
    "only an unknown key",
    "extra line in signed body is signed (size line altered)",
]


@pytest.mark.parametrize("case", BAD_NOTE_IDS)
def test_bad_checkpoint_note(sn: dict[str, str], case: str) -> None:
    note, error = _bad_notes(sn)[case]
    with pytest.raises(error):
        open_checkpoint(note, NoteVerifier.from_text(sn["verifier_key"]))


def test_bad_note_table_is_complete(sn: dict[str, str]) -> None:
    assert sorted(_bad_notes(sn)) == sorted(BAD_NOTE_IDS)


def test_checkpoint_of_another_log_never_verifies(log_signer: NoteSigner) -> None:
    """Cross-log replay: a key named X signing a body with origin Y is rejected."""
    root = hashlib.sha256(b"r").digest()
    other = Checkpoint(origin="hotline-b.example/hashmesh", size=1, root_hash=root)
    with pytest.raises(MalformedError):
        sign_checkpoint(other, log_signer)  # we refuse to produce it
    forged = sign_note(other.to_text(), [log_signer])
    with pytest.raises(OriginMismatchError):
        open_checkpoint(forged, log_signer.verifier())
    own = sign_checkpoint(Checkpoint(origin=log_signer.name, size=1, root_hash=root), log_signer)
    with pytest.raises(OriginMismatchError):
        open_checkpoint(own, log_signer.verifier(), origin="hotline-b.example/hashmesh")


def test_unknown_key_sharing_name_or_id_is_ignored(
    sn: dict[str, str], log_signer: NoteSigner
) -> None:
    good = parse_note(sn["signed_checkpoint"])
    real = good.signatures[0]
    same_name = NoteSignature(name=real.name, key_id=real.key_id ^ 0xFF, signature=b"x" * 64)
    same_id = NoteSignature(name="impostor.example", key_id=real.key_id, signature=b"x" * 64)
    note = Note(text=good.text, signatures=(same_name, same_id, real)).to_text()
    verified = open_checkpoint(note, log_signer.verifier())
    assert verified.checkpoint.size == 7


def test_known_key_bad_signature_beside_good_rejects_note(
    sn: dict[str, str], log_signer: NoteSigner
) -> None:
    good = parse_note(sn["signed_checkpoint"])
    real = good.signatures[0]
    bad = NoteSignature(name=real.name, key_id=real.key_id, signature=bytes(64))
    for order in [(real, bad), (bad, real)]:
        with pytest.raises(InvalidSignatureError):
            open_checkpoint(Note(text=good.text, signatures=order).to_text(), log_signer.verifier())


def test_duplicate_witness_signatures_count_once(
    sn: dict[str, str], log_signer: NoteSigner, witness_signer: NoteSigner
) -> None:
    note = parse_note(sn["signed_by_both"])
    doubled = Note(text=note.text, signatures=(*note.signatures, note.signatures[1])).to_text()
    other = NoteSigner.from_seed("witness-z.example", b"\x05" * 32).verifier()
    with pytest.raises(QuorumError):
        open_checkpoint(
            doubled,
            log_signer.verifier(),
            witnesses=[witness_signer.verifier(), other],
            witness_threshold=2,
        )
    ok = open_checkpoint(
        doubled, log_signer.verifier(), witnesses=[witness_signer.verifier()], witness_threshold=1
    )
    assert list(ok.cosignatures) == ["witness-b.example"]


def test_impossible_witness_policy_is_malformed(sn: dict[str, str], log_signer: NoteSigner) -> None:
    with pytest.raises(MalformedError):
        open_checkpoint(sn["signed_checkpoint"], log_signer.verifier(), witness_threshold=1)


def test_log_key_must_sign_not_only_a_witness(
    sn: dict[str, str], log_signer: NoteSigner, witness_signer: NoteSigner
) -> None:
    only_witness = sign_note(sn["checkpoint_text"], [witness_signer])
    with pytest.raises(UnknownKeyError):
        open_checkpoint(only_witness, log_signer.verifier(), witnesses=[witness_signer.verifier()])


def test_too_many_signatures_rejected(sn: dict[str, str]) -> None:
    line = sn["signed_checkpoint"].split("\n\n")[1]
    note = sn["checkpoint_text"] + "\n" + line * (MAX_SIGNATURES + 1)
    with pytest.raises(MalformedError):
        parse_note(note)
    assert len(parse_note(sn["checkpoint_text"] + "\n" + line * 16).signatures) == 16


def test_small_order_public_key_verifies_nothing(sn: dict[str, str]) -> None:
    identity = b"\x01" + bytes(31)  # encoding of the neutral point, order 1
    verifier = NoteVerifier(name="evil.example", sig_type=SIG_ED25519, public_key=identity)
    # With A = identity and R = identity, S = 0 satisfies the naive equation.
    with pytest.raises(InvalidSignatureError):
        verifier.verify(b"anything", identity + bytes(32))


# --- key text forms -------------------------------------------------------------

GOOD_VKEY = "hotline-a.example/hashmesh+6ae53554+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("", "vkey"),
        ("no-plus-at-all", "vkey"),
        ("name+6ae53554", "vkey"),
        (GOOD_VKEY.replace("6ae53554", "6AE53554"), "vkey.key_id"),
        (GOOD_VKEY.replace("6ae53554", "6ae53555"), "vkey.key_id"),
        (GOOD_VKEY.replace("6ae53554", "6ae5355"), "vkey.key_id"),
        (GOOD_VKEY.replace("+AQ", "+Ag"), "vkey.type"),  # an ECDSA (0x02) key
        (GOOD_VKEY[:-1], "vkey.key"),
        (GOOD_VKEY + "AAAA", "vkey.key"),
        ("hotline a+6ae53554+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4", "vkey.name"),
        ("PRIVATE+KEY+x+00000000+AQ==", "vkey"),
    ],
)
def test_bad_verifier_key_text(text: str, field: str) -> None:
    with pytest.raises(MalformedError) as info:
        NoteVerifier.from_text(text)
    assert info.value.field == field


def test_unsupported_signature_type() -> None:
    key = bytes(range(32))
    raw = b"\x02" + key
    text = f"x.example+{compute_key_id('x.example', 2, key):08x}+{base64.b64encode(raw).decode()}"
    with pytest.raises(MalformedError) as info:
        NoteVerifier.from_text(text)
    assert info.value.field == "vkey.type"


def test_signer_repr_and_errors_never_show_the_seed(log_signer: NoteSigner) -> None:
    secret = log_signer.to_text().rsplit("+", 1)[1]
    assert secret not in repr(log_signer)
    broken = log_signer.to_text()[:-2] + "=="
    with pytest.raises(MalformedError) as info:
        NoteSigner.from_text(broken)
    assert secret[:10] not in str(info.value)


def test_generated_keys_differ_and_round_trip() -> None:
    a, b = NoteSigner.generate("a.example"), NoteSigner.generate("a.example")
    assert a.seed != b.seed
    assert NoteSigner.from_text(a.to_text()) == a
    assert NoteVerifier.from_text(a.verifier().to_text()) == a.verifier()


# --- checkpoint bodies ----------------------------------------------------------

ROOT_B64 = "924nU48kfWU9lZTnrPEI1GR+1UDqO2kvs+pOvlIliRg="


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("o\n7\n" + ROOT_B64, "checkpoint"),
        ("o\n7\n", "checkpoint"),
        ("\n7\n" + ROOT_B64 + "\n", "checkpoint.origin"),
        ("o\n07\n" + ROOT_B64 + "\n", "checkpoint.size"),
        ("o\n+7\n" + ROOT_B64 + "\n", "checkpoint.size"),
        ("o\n7 \n" + ROOT_B64 + "\n", "checkpoint.size"),
        ("o\n\uff17\n" + ROOT_B64 + "\n", "checkpoint.size"),
        ("o\n9223372036854775808\n" + ROOT_B64 + "\n", "checkpoint.size"),
        ("o\n7\n" + ROOT_B64[:-1] + "\n", "checkpoint.root"),
        ("o\n7\n" + base64.b64encode(bytes(31)).decode() + "\n", "checkpoint.root"),
        ("o\n7\n" + ROOT_B64 + "\n\n", "checkpoint line 4"),
        ("o\n7\n" + ROOT_B64 + "\next\n\n", "checkpoint line 5"),
    ],
)
def test_bad_checkpoint_body(text: str, field: str) -> None:
    with pytest.raises(MalformedError) as info:
        Checkpoint.from_text(text)
    assert info.value.field == field


def test_checkpoint_extension_lines_round_trip(log_signer: NoteSigner) -> None:
    cp = Checkpoint(
        origin=log_signer.name, size=3, root_hash=bytes(32), extensions=("ext one", "two")
    )
    note = sign_checkpoint(cp, log_signer)
    assert open_checkpoint(note, log_signer.verifier()).checkpoint == cp


def test_empty_tree_checkpoint(log_signer: NoteSigner) -> None:
    cp = Checkpoint(origin=log_signer.name, size=0, root_hash=hashlib.sha256(b"").digest())
    assert cp.to_text().split("\n")[1] == "0"
    assert open_checkpoint(sign_checkpoint(cp, log_signer), log_signer.verifier()).checkpoint == cp


# --- properties -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parse_note_arbitrary_bytes_raises_only_malformed(data: bytes) -> None:
    try:
        note = parse_note(data)
    except MalformedError:
        return
    assert note.to_bytes() == data


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_checkpoint_and_key_parsers_raise_only_malformed(text: str) -> None:
    for parse in (Checkpoint.from_text, NoteVerifier.from_text, NoteSigner.from_text):
        with contextlib.suppress(MalformedError):
            parse(text)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=MAX_UINT63),
    root=st.binary(min_size=32, max_size=32),
    position=st.integers(min_value=0),
)
def test_any_single_bit_flip_in_a_signed_checkpoint_is_rejected(
    size: int, root: bytes, position: int
) -> None:
    signer = NoteSigner.from_seed("prop.example/log", b"\x11" * 32)
    note = sign_checkpoint(Checkpoint(origin=signer.name, size=size, root_hash=root), signer)
    raw = bytearray(note.encode())
    bit = position % (len(raw) * 8)
    raw[bit // 8] ^= 1 << (bit % 8)
    try:
        verified = open_checkpoint(bytes(raw), signer.verifier())
    except (MalformedError, InvalidSignatureError, UnknownKeyError, OriginMismatchError):
        return
    pytest.fail(f"bit {bit} flipped and the note still verified: {verified.checkpoint}")
