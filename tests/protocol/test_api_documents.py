"""The HTTP API's documents: canonical round trips and strict parsing, naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.api_documents import (
    CheckpointEvent,
    CheckpointList,
    EntriesPage,
    ErrorBody,
    EvidenceList,
    Health,
    LeafHashesPage,
    LogList,
    MatchResponseBody,
    RotationList,
)
from protocol.errors import MalformedError

H = "ab" * 32
NOTE = "o\n1\nq83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=\n\n— o AAAA\n"

# Canonical documents as docs/api.md shows them (sorted keys, no whitespace).
DOCUMENTS: list[tuple[Any, dict[str, Any]]] = [
    (ErrorBody, {"error": "start 7 is beyond the tree size 6", "field": "start"}),
    (ErrorBody, {"error": "internal error", "field": None}),
    (Health, {"origin": "o.example/log", "status": "ok", "version": "0.1.0"}),
    (
        LogList,
        {
            "logs": [
                {"checkpoint": NOTE, "frozen": False, "origin": "o", "size": 1, "vkey": "o+1+A"}
            ]
        },
    ),
    (CheckpointList, {"checkpoints": [{"note": NOTE, "size": 1}], "origin": "o"}),
    (
        RotationList,
        {
            "origin": "o",
            "rotations": [{"checkpoint": None, "entry_b64": "eyJ9", "index": 5, "proof": [H]}],
        },
    ),
    (EntriesPage, {"entries": ["eyJ9"], "origin": "o", "start": 3}),
    (LeafHashesPage, {"leaf_hashes": [H, H], "origin": "o", "start": 0}),
    (EvidenceList, {"evidence": []}),
    (CheckpointEvent, {"origin": "o", "size": 7}),
    (
        MatchResponseBody,
        {
            "checked": 2,
            "errors": [{"error": "expected 64 hex characters", "field": "hashes[1].value", "i": 1}],
            "matches": [
                {
                    "hidden": 0,
                    "hits": [{"index": 3, "origin": "o"}],
                    "i": 0,
                    "type": "sha256",
                    "value": H,
                }
            ],
            "max_distance": 31,
        },
    ),
]


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(("kind", "obj"), DOCUMENTS, ids=lambda v: getattr(v, "__name__", ""))
def test_round_trip_is_byte_exact(kind: Any, obj: dict[str, Any]) -> None:
    raw = canonical(obj)
    assert kind.from_json(raw).to_json() == raw
    assert kind.from_json(obj) == kind.from_json(raw)


BAD: list[tuple[Any, dict[str, Any], str]] = [
    (Health, {"origin": "o", "status": "ok"}, "version"),
    (Health, {"origin": "", "status": "ok", "version": "1"}, "origin"),
    (Health, {"origin": "o", "status": "ok", "version": "1", "x": 1}, "x"),
    (
        LogList,
        {"logs": [{"checkpoint": NOTE, "frozen": 0, "origin": "o", "size": 1, "vkey": "k"}]},
        "logs[0].frozen",
    ),
    (
        LogList,
        {"logs": [{"checkpoint": NOTE, "frozen": False, "origin": "o", "size": -1, "vkey": "k"}]},
        "logs[0].size",
    ),
    (
        CheckpointList,
        {"checkpoints": [{"note": NOTE, "size": 2}, {"note": NOTE, "size": 2}], "origin": "o"},
        "checkpoints[1]",
    ),
    (
        RotationList,
        {
            "origin": "o",
            "rotations": [{"checkpoint": 5, "entry_b64": "eyJ9", "index": 5, "proof": []}],
        },
        "rotations[0].checkpoint",
    ),
    (
        RotationList,
        {
            "origin": "o",
            "rotations": [{"checkpoint": None, "entry_b64": "eyJ9", "index": 5, "proof": ["AB"]}],
        },
        "rotations[0].proof[0]",
    ),
    (EntriesPage, {"entries": ["eyJ9="], "origin": "o", "start": 0}, "entries[0]"),
    (LeafHashesPage, {"leaf_hashes": [H.upper()], "origin": "o", "start": 0}, "leaf_hashes[0]"),
    (
        LeafHashesPage,
        {"leaf_hashes": [H, H[:-2] + " a"], "origin": "o", "start": 0},
        "leaf_hashes[1]",
    ),
    (LeafHashesPage, {"leaf_hashes": [H, H + "ab"], "origin": "o", "start": 0}, "leaf_hashes[1]"),
    (CheckpointEvent, {"origin": "o", "size": True}, "size"),
    (ErrorBody, {"error": "x", "field": 3}, "field"),
    (
        MatchResponseBody,
        {"checked": 0, "errors": [], "matches": [{"i": 0}], "max_distance": 31},
        "matches[0].hidden",
    ),
]


@pytest.mark.parametrize(("kind", "obj", "field"), BAD, ids=[f for _, _, f in BAD])
def test_strict_parsing_names_the_field(kind: Any, obj: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedError) as caught:
        kind.from_json(canonical(obj))
    assert caught.value.field == field


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(MalformedError, match="duplicate"):
        CheckpointEvent.from_json(b'{"origin":"o","origin":"p","size":1}')
