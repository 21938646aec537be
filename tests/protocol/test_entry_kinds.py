"""Opinion and rotate entries: canonical round trips and named bad cases."""

from __future__ import annotations

import pytest

from protocol.encoding import dumps_canonical
from protocol.entry import (
    MAX_ENTRY_BYTES,
    MAX_NOTE_CHARS,
    OPINION_VERDICTS,
    OpinionEntry,
    RotateEntry,
    parse_entry,
)
from protocol.errors import MalformedError
from protocol.keys import SIG_COSIGNATURE_V1, NoteSigner

ORIGIN = "hotline-b.example/hashmesh"
LEAF = bytes(range(32))


def _vkey(name: str = "hotline-a.example/hashmesh", sig_type: int | None = None) -> str:
    if sig_type is None:
        return NoteSigner.from_seed(name, b"\x07" * 32).verifier().to_text()
    return NoteSigner.from_seed(name, b"\x07" * 32, sig_type).verifier().to_text()


@pytest.mark.parametrize("verdict", OPINION_VERDICTS)
@pytest.mark.parametrize("note", [None, "seen twice; cat. A", "é ünïcode"])
def test_opinion_round_trip(verdict: str, note: str | None) -> None:
    entry = OpinionEntry(origin=ORIGIN, index=7, leaf_hash=LEAF, verdict=verdict, note=note)
    data = entry.to_bytes()
    assert data == dumps_canonical(entry.to_json_obj())
    assert parse_entry(data) == entry
    assert entry.kind == "opinion"


def test_opinion_exact_bytes() -> None:
    entry = OpinionEntry(origin=ORIGIN, index=7, leaf_hash=LEAF, verdict="dispute")
    assert entry.to_bytes() == (
        b'{"index":7,"kind":"opinion","leaf_hash":"' + LEAF.hex().encode() + b'",'
        b'"origin":"hotline-b.example/hashmesh","v":1,"verdict":"dispute"}'
    )


def test_rotate_round_trip_and_bytes() -> None:
    key = _vkey()
    entry = RotateEntry(key=key, reason="scheduled yearly rotation")
    assert entry.to_bytes() == (
        b'{"key":"' + key.encode() + b'","kind":"rotate","reason":"scheduled yearly rotation",'
        b'"v":1}'
    )
    assert parse_entry(entry.to_bytes()) == entry
    assert entry.verifier.to_text() == key
    assert entry.kind == "rotate"


def _opinion_obj(**change: object) -> dict[str, object]:
    obj: dict[str, object] = {
        "index": 7,
        "kind": "opinion",
        "leaf_hash": LEAF.hex(),
        "origin": ORIGIN,
        "v": 1,
        "verdict": "confirm",
    }
    for key, value in change.items():
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value
    return obj


_DROP = object()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"verdict": "agree"}, "verdict"),
        ({"verdict": 1}, "verdict"),
        ({"verdict": _DROP}, "verdict"),
        ({"leaf_hash": LEAF.hex().upper()}, "leaf_hash"),
        ({"leaf_hash": LEAF.hex()[:-2]}, "leaf_hash"),
        ({"leaf_hash": 5}, "leaf_hash"),
        ({"origin": ""}, "origin"),
        ({"origin": "has space"}, "origin"),
        ({"origin": _DROP}, "origin"),
        ({"index": -1}, "index"),
        ({"index": True}, "index"),
        ({"index": "7"}, "index"),
        ({"note": ""}, "note"),
        ({"note": "x" * (MAX_NOTE_CHARS + 1)}, "note"),
        ({"note": "tab\there"}, "note"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_opinion_names_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(MalformedError) as info:
        parse_entry(dumps_canonical(_opinion_obj(**change)))
    assert info.value.field == field


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"key": "not a key", "kind": "rotate", "reason": "r", "v": 1}, "key"),
        ({"key": 5, "kind": "rotate", "reason": "r", "v": 1}, "key"),
        ({"kind": "rotate", "reason": "r", "v": 1}, "key"),
        ({"key": _vkey(), "kind": "rotate", "reason": "", "v": 1}, "reason"),
        ({"key": _vkey(), "kind": "rotate", "v": 1}, "reason"),
        (
            {"key": _vkey(sig_type=SIG_COSIGNATURE_V1), "kind": "rotate", "reason": "r", "v": 1},
            "key",
        ),
        ({"key": _vkey(), "kind": "rotate", "reason": "r", "v": 1, "when": 0}, "when"),
    ],
)
def test_bad_rotate_names_field(obj: dict[str, object], field: str) -> None:
    with pytest.raises(MalformedError) as info:
        parse_entry(dumps_canonical(obj))
    assert info.value.field == field


def test_non_canonical_forms_rejected() -> None:
    good = OpinionEntry(origin=ORIGIN, index=1, leaf_hash=LEAF, verdict="confirm").to_bytes()
    for bad in (good.replace(b",", b", ", 1), good + b"\n", b" " + good):
        with pytest.raises(MalformedError):
            parse_entry(bad)
    rotate = RotateEntry(key=_vkey(), reason="r").to_bytes()
    reordered = b'{"kind":"rotate",' + rotate[1:].replace(b'"kind":"rotate",', b"")
    assert reordered != rotate
    with pytest.raises(MalformedError, match="canonical"):
        parse_entry(reordered)


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(MalformedError, match="'opinion', 'rotate'") as info:
        parse_entry(b'{"kind":"vote","v":1}')
    assert info.value.field == "kind"


def test_oversized_rotate_reason_rejected() -> None:
    with pytest.raises(MalformedError):
        RotateEntry(key=_vkey(), reason="x" * (MAX_ENTRY_BYTES + 1))
