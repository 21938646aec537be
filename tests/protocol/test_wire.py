"""Strict parsing of proof documents (``protocol.wire``).

Table cases name each way a document can be wrong; Hypothesis feeds arbitrary
bytes and arbitrary JSON values and checks that the only error ever raised is
MalformedError.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import MalformedError
from protocol.hashing import hash_leaf
from protocol.merkle import verify_consistency, verify_inclusion
from protocol.tree import compute_inclusion_proof
from protocol.wire import (
    MAX_PROOF_HASHES,
    ConsistencyProof,
    InclusionProof,
    decode_entry_bundle,
    encode_entry_bundle,
)
from tests.protocol.test_merkle_properties import ListReader, ref_mth, ref_path, ref_proof

H = [hash_leaf(b"wire leaf %d" % i).hex() for i in range(8)]

GOOD_INCLUSION: dict[str, Any] = {"index": 5, "size": 8, "leaf_hash": H[5], "hashes": H[:3]}
GOOD_CONSISTENCY: dict[str, Any] = {"old_size": 4, "new_size": 8, "hashes": H[:1]}


def doc(base: dict[str, Any], **changes: Any) -> bytes:
    obj = dict(base)
    for key, value in changes.items():
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj).encode()


_DROP = object()


def test_round_trip_and_verify() -> None:
    leaves = [hash_leaf(b"wire leaf %d" % i) for i in range(8)]
    reader = ListReader(leaves)
    proof = InclusionProof(index=5, size=8, leaf_hash=leaves[5], hashes=tuple(ref_path(5, leaves)))
    raw = proof.to_json()
    assert raw == json.dumps(proof.to_json_obj(), sort_keys=True, separators=(",", ":")).encode()
    again = InclusionProof.from_json(raw)
    assert again == proof
    assert InclusionProof.from_json(raw.decode()) == proof
    assert InclusionProof.from_json(proof.to_json_obj()) == proof
    verify_inclusion(again.index, again.size, again.leaf_hash, again.hashes, ref_mth(leaves))
    assert list(again.hashes) == compute_inclusion_proof(5, 8, reader)

    cons = ConsistencyProof(old_size=3, new_size=8, hashes=tuple(ref_proof(3, leaves)))
    back = ConsistencyProof.from_json(cons.to_json())
    assert back == cons
    verify_consistency(3, 8, ref_mth(leaves[:3]), ref_mth(leaves), back.hashes)


def test_good_documents_parse() -> None:
    p = InclusionProof.from_json(doc(GOOD_INCLUSION))
    assert (p.index, p.size, p.leaf_hash.hex(), [h.hex() for h in p.hashes]) == (
        5,
        8,
        H[5],
        H[:3],
    )
    c = ConsistencyProof.from_json(doc(GOOD_CONSISTENCY))
    assert (c.old_size, c.new_size, c.hashes) == (4, 8, (bytes.fromhex(H[0]),))
    assert InclusionProof.from_json(doc(GOOD_INCLUSION, hashes=[])).hashes == ()
    big = InclusionProof.from_json(doc(GOOD_INCLUSION, hashes=[H[0]] * MAX_PROOF_HASHES))
    assert len(big.hashes) == MAX_PROOF_HASHES
    top = ConsistencyProof.from_json(doc(GOOD_CONSISTENCY, new_size=2**63 - 1))
    assert top.new_size == 2**63 - 1


INCLUSION_BAD: list[tuple[str, bytes, str | None]] = [
    ("unknown-key", doc(GOOD_INCLUSION, extra=1), "extra"),
    ("missing-index", doc(GOOD_INCLUSION, index=_DROP), "index"),
    ("missing-size", doc(GOOD_INCLUSION, size=_DROP), "size"),
    ("missing-leaf_hash", doc(GOOD_INCLUSION, leaf_hash=_DROP), "leaf_hash"),
    ("missing-hashes", doc(GOOD_INCLUSION, hashes=_DROP), "hashes"),
    (
        "duplicate-key",
        b'{"index":5,"index":5,"size":8,"leaf_hash":"' + H[5].encode() + b'","hashes":[]}',
        "index",
    ),
    ("bool-for-int", doc(GOOD_INCLUSION, index=True), "index"),
    ("bool-for-size", doc(GOOD_INCLUSION, size=False), "size"),
    ("string-for-int", doc(GOOD_INCLUSION, size="8"), "size"),
    (
        "float-for-int",
        b'{"index":5.0,"size":8,"leaf_hash":"' + H[5].encode() + b'","hashes":[]}',
        None,
    ),
    ("null-for-int", doc(GOOD_INCLUSION, index=None), "index"),
    ("negative-size", doc(GOOD_INCLUSION, size=-8), "size"),
    ("negative-index", doc(GOOD_INCLUSION, index=-1), "index"),
    ("size-2^63", doc(GOOD_INCLUSION, size=2**63), "size"),
    ("uppercase-hex-leaf", doc(GOOD_INCLUSION, leaf_hash=H[5].upper()), "leaf_hash"),
    ("uppercase-hex-proof", doc(GOOD_INCLUSION, hashes=[H[0].upper()]), "hashes[0]"),
    ("hex-62-chars", doc(GOOD_INCLUSION, hashes=[H[0][:62]]), "hashes[0]"),
    ("hex-66-chars", doc(GOOD_INCLUSION, hashes=[H[0] + "00"]), "hashes[0]"),
    ("hex-0x-prefix", doc(GOOD_INCLUSION, leaf_hash="0x" + H[5][2:]), "leaf_hash"),
    ("hex-space", doc(GOOD_INCLUSION, leaf_hash=H[5][:62] + " a"), "leaf_hash"),
    ("int-for-hash", doc(GOOD_INCLUSION, hashes=[7]), "hashes[0]"),
    ("65-hashes", doc(GOOD_INCLUSION, hashes=[H[0]] * (MAX_PROOF_HASHES + 1)), "hashes"),
    ("hashes-not-list", doc(GOOD_INCLUSION, hashes=H[0]), "hashes"),
    ("hashes-object", doc(GOOD_INCLUSION, hashes={"0": H[0]}), "hashes"),
    ("top-level-list", b"[]", None),
    ("top-level-string", b'"proof"', None),
    ("empty-document", b"", None),
    ("truncated", doc(GOOD_INCLUSION)[:-1], None),
    ("trailing-garbage", doc(GOOD_INCLUSION) + b"x", None),
    ("bom", b"\xef\xbb\xbf" + doc(GOOD_INCLUSION), None),
    ("not-utf8", b'{"index":5,"\xff":1}', None),
    ("nan", b'{"index":NaN,"size":8,"leaf_hash":"","hashes":[]}', None),
]

CONSISTENCY_BAD: list[tuple[str, bytes, str | None]] = [
    ("unknown-key", doc(GOOD_CONSISTENCY, index=0), "index"),
    ("missing-old_size", doc(GOOD_CONSISTENCY, old_size=_DROP), "old_size"),
    ("missing-new_size", doc(GOOD_CONSISTENCY, new_size=_DROP), "new_size"),
    ("missing-hashes", doc(GOOD_CONSISTENCY, hashes=_DROP), "hashes"),
    ("duplicate-key", b'{"old_size":4,"new_size":8,"new_size":9,"hashes":[]}', "new_size"),
    ("bool-for-int", doc(GOOD_CONSISTENCY, old_size=True), "old_size"),
    ("negative-size", doc(GOOD_CONSISTENCY, new_size=-1), "new_size"),
    ("size-2^63", doc(GOOD_CONSISTENCY, old_size=2**63), "old_size"),
    ("uppercase-hex", doc(GOOD_CONSISTENCY, hashes=[H[0].upper()]), "hashes[0]"),
    ("65-hashes", doc(GOOD_CONSISTENCY, hashes=[H[0]] * (MAX_PROOF_HASHES + 1)), "hashes"),
    ("null-hashes", doc(GOOD_CONSISTENCY, hashes=None), "hashes"),
    ("huge-int", b'{"old_size":' + b"9" * 30 + b',"new_size":8,"hashes":[]}', None),
]


@pytest.mark.parametrize(
    ("data", "field"), [c[1:] for c in INCLUSION_BAD], ids=[c[0] for c in INCLUSION_BAD]
)
def test_inclusion_from_json_rejects(data: bytes, field: str | None) -> None:
    with pytest.raises(MalformedError) as exc:
        InclusionProof.from_json(data)
    if field is not None:
        assert exc.value.field == field, str(exc.value)


@pytest.mark.parametrize(
    ("data", "field"), [c[1:] for c in CONSISTENCY_BAD], ids=[c[0] for c in CONSISTENCY_BAD]
)
def test_consistency_from_json_rejects(data: bytes, field: str | None) -> None:
    with pytest.raises(MalformedError) as exc:
        ConsistencyProof.from_json(data)
    if field is not None:
        assert exc.value.field == field, str(exc.value)


def test_case_tables_are_complete() -> None:
    assert len(INCLUSION_BAD) == 32
    assert len(CONSISTENCY_BAD) == 12
    assert len({c[0] for c in INCLUSION_BAD}) == len(INCLUSION_BAD)


def _call_only_malformed(data: Any) -> None:
    for parse in (InclusionProof.from_json, ConsistencyProof.from_json):
        with contextlib.suppress(MalformedError):
            parse(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_malformed(data: bytes) -> None:
    _call_only_malformed(data)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_malformed(data: str) -> None:
    _call_only_malformed(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from(H)
    | st.text(max_size=70),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["index", "size", "leaf_hash", "hashes", "old_size", "new_size", "x"]),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_arbitrary_json_raises_only_malformed(value: Any) -> None:
    _call_only_malformed(json.dumps(value).encode())
    if isinstance(value, dict):
        _call_only_malformed(value)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "index": st.integers(-2, 2**64) | st.booleans() | st.none(),
            "size": st.integers(-2, 2**64) | st.text(max_size=3),
            "leaf_hash": st.sampled_from(H) | st.text(max_size=66),
            "hashes": st.lists(st.sampled_from(H) | st.text(max_size=66), max_size=66),
        }
    )
)
def test_near_miss_inclusion_documents(obj: dict[str, Any]) -> None:
    raw = json.dumps(obj).encode()
    try:
        proof = InclusionProof.from_json(raw)
    except MalformedError:
        return
    # Whatever parses is exactly what was sent, and re-serialises canonically.
    assert proof.to_json_obj() == obj
    assert InclusionProof.from_json(proof.to_json()) == proof


# -- entry bundles ---------------------------------------------------------------

BUNDLED = [b'{"a":1}', b"x" * 300, b"y"]


def test_entry_bundle_round_trips() -> None:
    body = encode_entry_bundle(BUNDLED)
    assert body == b"\x00\x07" + BUNDLED[0] + b"\x01\x2c" + BUNDLED[1] + b"\x00\x01y"
    assert decode_entry_bundle(body, max_entries=3) == BUNDLED


BAD_BUNDLES = [
    ("empty body", b"", 5, "holds no entries"),
    ("one length byte", b"\x00", 5, "entries[0]: the length prefix is cut short"),
    ("trailing length byte", b"\x00\x01y\x00", 5, "entries[1]: the length prefix is cut short"),
    ("zero length", b"\x00\x00", 5, "entries[0]: empty entry"),
    ("entry cut short", b"\x00\x05abc", 5, "entries[0]: 5 bytes announced, 3 left"),
    ("length past the end", b"\x00\x01y\xff\xffzz", 5, "entries[1]: 65535 bytes announced"),
    ("more than asked", b"\x00\x01y\x00\x01z", 1, "entries[1]: more than the 1 entries asked"),
]


@pytest.mark.parametrize(
    ("body", "max_entries", "message"),
    [case[1:] for case in BAD_BUNDLES],
    ids=[case[0] for case in BAD_BUNDLES],
)
def test_bad_entry_bundles_are_named(body: bytes, max_entries: int, message: str) -> None:
    with pytest.raises(MalformedError, match=re.escape(message)):
        decode_entry_bundle(body, max_entries=max_entries)


@pytest.mark.parametrize("size", [0, 65536])
def test_entry_bundle_refuses_entries_it_cannot_frame(size: int) -> None:
    with pytest.raises(ValueError, match=f"entry 1 is {size} bytes"):
        encode_entry_bundle([b"ok", b"z" * size])


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=8))
@settings(max_examples=300, deadline=None)
def test_any_bytes_decode_or_raise_malformed(body: bytes, max_entries: int) -> None:
    with contextlib.suppress(MalformedError):
        out = decode_entry_bundle(body, max_entries=max_entries)
        assert 1 <= len(out) <= max_entries
        assert encode_entry_bundle(out) == body


@given(
    st.lists(st.binary(min_size=1, max_size=6), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=0, max_value=60),
    st.integers(min_value=0, max_value=255),
)
@settings(max_examples=400, deadline=None)
def test_bundles_of_equal_entries_decode_as_any_other(
    entries: list[bytes], max_entries: int, at: int, byte: int
) -> None:
    # Equal lengths take the uniform path; one byte changed anywhere (a
    # length prefix, say) must give what the general loop gives.
    length = len(entries[0])
    same = [(e * length)[:length] for e in entries]
    body = encode_entry_bundle(same)
    if len(same) <= max_entries:
        assert decode_entry_bundle(body, max_entries=max_entries) == same
    spoilt = bytearray(body)
    spoilt[at % len(body)] = byte
    for candidate in (bytes(spoilt), body[:-1], body + body[:3]):
        with contextlib.suppress(MalformedError):
            out = decode_entry_bundle(candidate, max_entries=max_entries)
            assert 1 <= len(out) <= max_entries
            assert encode_entry_bundle(out) == candidate
