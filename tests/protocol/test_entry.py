"""Canonical entry encoding: round trips, a corpus of bad inputs, fuzzing."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import PROTOCOL_VERSION, READ_VERSIONS
from protocol.encoding import MAX_UINT63, dumps_canonical
from protocol.entry import (
    LABEL_PATTERN,
    MAX_ENTRY_BYTES,
    MAX_LABELS,
    MAX_NOTE_CHARS,
    MAX_REASON_CHARS,
    SALT_BYTES,
    AddEntry,
    Entry,
    OpinionEntry,
    RetractEntry,
    parse_entry,
    salt_entries,
)
from protocol.errors import MalformedError, UnsupportedVersionError
from protocol.signal import SIGNAL_TYPES

H16 = "ab" * 16
SALT = "5a" * 16
H20 = "cd" * 20
H32 = "ef" * 32
PHOTODNA = base64.b64encode(bytes(range(144))).decode("ascii")

ANY_FIELD = object()  # the corpus does not pin the field for this case


def add_obj(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "kind": "add",
        "labels": [],
        "signal": {"type": "sha256", "value": H32},
        "v": 1,
    }
    obj.update(changes)
    return obj


def signal(type_: Any, value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "value": value, **extra}


def retract_obj(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"index": 3, "kind": "retract", "reason": "false positive", "v": 1}
    obj.update(changes)
    return obj


def without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


enc = dumps_canonical

# ---------------------------------------------------------------------------
# Exact forms and round trips


def test_benchmark_form_is_exact() -> None:
    # A version 1 vector (still read, never written) ...
    data = b'{"kind":"add","labels":[],"signal":{"type":"sha256","value":"%064x"},"v":1}' % 7
    entry = parse_entry(data)
    assert entry == AddEntry.create(signal_type="sha256", value=f"{7:064x}")
    assert entry.to_bytes() == data and entry.version == 1
    # ... and the version 2 form benchmarks/bench_ledger.py hashes directly.
    data = (
        b'{"kind":"add","labels":[],"salt":"%032x","signal":{"type":"sha256","value":"%064x"},'
        b'"v":2}' % (7, 7)
    )
    entry = parse_entry(data)
    assert entry == AddEntry.create(signal_type="sha256", value=f"{7:064x}", salt=f"{7:032x}")
    assert entry.to_bytes() == data and entry.version == 2


def test_pdq_form_is_exact() -> None:
    entry = AddEntry.create(
        signal_type="pdq", value=H32, quality=90, labels=["src:legacy", "iwf:category-a"]
    )
    assert entry.to_bytes() == (
        b'{"kind":"add","labels":["iwf:category-a","src:legacy"],'
        b'"signal":{"quality":90,"type":"pdq","value":"' + H32.encode() + b'"},"v":1}'
    )


def test_note_and_retract_forms_are_exact() -> None:
    entry = AddEntry.create(signal_type="md5", value=H16, note='caf\u00e9 "x"')
    assert entry.to_bytes() == (
        b'{"kind":"add","labels":[],"note":"caf\xc3\xa9 \\"x\\"",'
        b'"signal":{"type":"md5","value":"' + H16.encode() + b'"},"v":1}'
    )
    assert RetractEntry(index=12, reason="dup").to_bytes() == (
        b'{"index":12,"kind":"retract","reason":"dup","v":1}'
    )


ROUND_TRIP: list[Entry] = [
    AddEntry.create(signal_type="md5", value=H16),
    AddEntry.create(signal_type="sha1", value=H20, labels=["iwf:category-b"]),
    AddEntry.create(signal_type="sha256", value=H32, note="n"),
    AddEntry.create(signal_type="pdq", value=H32, quality=0),
    AddEntry.create(signal_type="pdq", value=H32, quality=100, note="x" * MAX_NOTE_CHARS),
    AddEntry.create(signal_type="photodna", value=PHOTODNA, labels=["a:b", "src:feed/2024:q1"]),
    RetractEntry(index=0, reason="r"),
    RetractEntry(index=MAX_UINT63, reason="\U0001f600" * 100),
]
# The same entries as written (version 2): one salt each.
ROUND_TRIP += [e.salted(f"{i:032x}") for i, e in enumerate(ROUND_TRIP)]


@pytest.mark.parametrize("entry", ROUND_TRIP, ids=lambda e: f"{e.kind}-v{e.version}")
def test_round_trip(entry: Entry) -> None:
    data = entry.to_bytes()
    assert parse_entry(data) == entry
    assert dumps_canonical(entry.to_json_obj()) == data
    assert entry.to_json_obj()["v"] == entry.version == (1 if entry.salt is None else 2)
    assert ('"salt":' in data.decode()) == (entry.version == PROTOCOL_VERSION)


def test_salted_forms_are_exact() -> None:
    # The salt sits where sorting puts it: after "note", before "signal".
    entry = AddEntry.create(signal_type="md5", value=H16, labels=["a:b"], salt=SALT)
    assert entry.to_bytes() == (
        b'{"kind":"add","labels":["a:b"],"salt":"' + SALT.encode() + b'",'
        b'"signal":{"type":"md5","value":"' + H16.encode() + b'"},"v":2}'
    )
    noted = AddEntry.create(signal_type="md5", value=H16, note="n", salt=SALT)
    assert noted.to_bytes() == (
        b'{"kind":"add","labels":[],"note":"n","salt":"' + SALT.encode() + b'",'
        b'"signal":{"type":"md5","value":"' + H16.encode() + b'"},"v":2}'
    )
    assert RetractEntry(index=12, reason="dup", salt=SALT).to_bytes() == (
        b'{"index":12,"kind":"retract","reason":"dup","salt":"' + SALT.encode() + b'","v":2}'
    )
    assert PROTOCOL_VERSION == 2 and READ_VERSIONS == (1, 2)


def test_salt_entries_is_salted_to_bytes() -> None:
    # The writer's bulk encoder equals salting each entry and encoding it,
    # for every kind and with or without a note; any given salt is replaced.
    entries = [
        *ROUND_TRIP,
        OpinionEntry(origin="a.example/x", index=1, leaf_hash=bytes(32), verdict="confirm"),
    ]
    random = bytes(range(256)) * (len(entries) * SALT_BYTES // 256 + 1)
    random = random[: len(entries) * SALT_BYTES]
    datas = salt_entries(entries, random)
    for i, (entry, data) in enumerate(zip(entries, datas, strict=True)):
        salt = random[i * SALT_BYTES : (i + 1) * SALT_BYTES].hex()
        assert data == entry.salted(salt).to_bytes()
        assert parse_entry(data) == entry.salted(salt) and parse_entry(data).version == 2
    with pytest.raises(ValueError):
        salt_entries(entries, random[:-1])
    # Different random bytes, different encodings and leaf hashes, same identities.
    again = salt_entries(entries, bytes(len(random)))
    assert all(a != b for a, b in zip(datas, again, strict=True))


def test_salt_entries_across_changing_families() -> None:
    # The encoder reuses a family's frame while the family stays the same:
    # runs of one family, a switch back, a note in between, a PDQ quality.
    def add(type_: str, value: str, labels: list[str], **kw: Any) -> AddEntry:
        return AddEntry.create(signal_type=type_, value=value, labels=labels, **kw)

    entries: list[Entry] = [
        add("sha256", H32, ["a:b"]),
        add("sha256", "01" * 32, ["a:b"]),
        add("sha256", "02" * 32, ["a:c"]),
        add("md5", H16, ["a:c"]),
        add("sha256", "03" * 32, ["a:b"]),
        add("sha256", "04" * 32, ["a:b"], note="seen twice"),
        add("sha256", "05" * 32, ["a:b"]),
        add("pdq", "0f" * 32, [], quality=90),
        add("pdq", "f0" * 32, [], quality=80),
        RetractEntry(index=0, reason="wrong"),
        add("pdq", "ff" * 32, [], quality=80),
    ]
    random = bytes(range(len(entries) * SALT_BYTES))
    datas = salt_entries(entries, random)
    for i, (entry, data) in enumerate(zip(entries, datas, strict=True)):
        salt = random[i * SALT_BYTES : (i + 1) * SALT_BYTES].hex()
        assert data == entry.salted(salt).to_bytes()


def test_salt_is_not_identity() -> None:
    a = AddEntry.create(signal_type="md5", value=H16, labels=["a:b"], salt=SALT)
    b = a.salted("00" * 16)
    assert a.identity == b.identity == (a.salted(SALT).identity)
    assert a != b and a.to_bytes() != b.to_bytes()


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (add_obj(v=2), "missing required field"),
        (retract_obj(v=2), "missing required field"),
        (add_obj(salt=SALT), "version 1 entry has no salt"),
        (retract_obj(salt=SALT), "version 1 entry has no salt"),
        (add_obj(v=2, salt=SALT.upper()), "lowercase hex"),
        (add_obj(v=2, salt=SALT[:-2]), "expected 32 hex characters"),
        (add_obj(v=2, salt=SALT + "00"), "expected 32 hex characters"),
        (add_obj(v=2, salt="g" * 32), "lowercase hex"),
        (add_obj(v=2, salt=base64.b64encode(bytes(16)).decode()), "hex characters"),
        (add_obj(v=2, salt=5), "string"),
        (add_obj(v=2, salt=None), "string"),
    ],
)
def test_salt_is_checked_and_named(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedError) as info:
        parse_entry(enc(obj))
    assert not isinstance(info.value, UnsupportedVersionError)
    assert info.value.field == "salt"
    assert reason in info.value.reason


def test_salt_is_checked_on_construction() -> None:
    for bad in ("AB" * 16, "ab" * 15, "", "zz" * 16):
        with pytest.raises(MalformedError) as info:
            AddEntry.create(signal_type="md5", value=H16, salt=bad)
        assert info.value.field == "salt"
        with pytest.raises(MalformedError):
            RetractEntry(index=1, reason="r").salted(bad)
        with pytest.raises(MalformedError):
            AddEntry.create(signal_type="md5", value=H16).salted(bad)


def test_every_registered_type_round_trips() -> None:
    for name, row in SIGNAL_TYPES.items():
        raw = bytes(range(row.length))
        value = raw.hex() if row.encoding == "hex" else base64.b64encode(raw).decode()
        quality = 50 if row.requires_quality else None
        entry = AddEntry.create(signal_type=name, value=value, quality=quality)
        assert parse_entry(entry.to_bytes()) == entry
        assert entry.identity == (name, value)


def test_parse_accepts_bytearray_and_memoryview() -> None:
    data = ROUND_TRIP[0].to_bytes()
    assert parse_entry(bytearray(data)) == ROUND_TRIP[0]  # type: ignore[arg-type]
    assert parse_entry(memoryview(data)) == ROUND_TRIP[0]  # type: ignore[arg-type]


def test_parse_rejects_text() -> None:
    with pytest.raises(MalformedError):
        parse_entry(ROUND_TRIP[0].to_bytes().decode())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Value types


def test_kind_identity_and_immutability() -> None:
    add = AddEntry.create(signal_type="md5", value=H16)
    retract = RetractEntry(index=1, reason="x")
    assert (add.kind, retract.kind) == ("add", "retract")
    assert add.identity == ("md5", H16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        add.value = H16  # type: ignore[misc]
    assert len({add, AddEntry.create(signal_type="md5", value=H16)}) == 1


def test_create_sorts_and_deduplicates_without_lowercasing() -> None:
    entry = AddEntry.create(
        signal_type="md5", value=H16, labels=iter(["src:b", "iwf:category-a", "src:b"])
    )
    assert entry.labels == ("iwf:category-a", "src:b")
    with pytest.raises(MalformedError) as info:
        AddEntry.create(signal_type="md5", value=H16, labels=["IWF:category-a"])
    assert info.value.field == "labels[0]"


def test_create_rejects_a_bare_string_and_non_strings() -> None:
    with pytest.raises(MalformedError) as info:
        AddEntry.create(signal_type="md5", value=H16, labels="iwf:category-a")
    assert info.value.field == "labels"
    with pytest.raises(MalformedError) as info:
        AddEntry.create(signal_type="md5", value=H16, labels=["a:b", 3])  # type: ignore[list-item]
    assert info.value.field == "labels[1]"


CONSTRUCTOR_BAD: list[tuple[str, dict[str, Any], str | None]] = [
    ("labels-list", {"labels": ["a:b"]}, "labels"),
    ("labels-unsorted", {"labels": ("b:a", "a:b")}, "labels[1]"),
    ("labels-duplicate", {"labels": ("a:b", "a:b")}, "labels[1]"),
    ("note-empty", {"note": ""}, "note"),
    ("note-type", {"note": 5}, "note"),
    ("quality-on-sha256", {"quality": 5}, "signal.quality"),
    ("bad-type", {"signal_type": "crc32"}, "signal.type"),
    ("type-not-str", {"signal_type": None}, "signal.type"),
    ("value-not-str", {"value": 5}, "signal.value"),
]


@pytest.mark.parametrize(
    ("changes", "field"),
    [c[1:] for c in CONSTRUCTOR_BAD],
    ids=[c[0] for c in CONSTRUCTOR_BAD],
)
def test_constructor_is_strict(changes: dict[str, Any], field: str | None) -> None:
    kwargs: dict[str, Any] = {"signal_type": "sha256", "value": H32, "labels": ()}
    kwargs.update(changes)
    with pytest.raises(MalformedError) as info:
        AddEntry(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("index", "field"),
    [(-1, "index"), (True, "index"), (MAX_UINT63 + 1, "index"), ("1", "index")],
)
def test_retract_constructor_is_strict(index: Any, field: str) -> None:
    with pytest.raises(MalformedError) as info:
        RetractEntry(index=index, reason="x")
    assert info.value.field == field


def test_limits_at_the_edge() -> None:
    labels = [f"n{i:02d}:" + "v" * 62 for i in range(MAX_LABELS)]
    assert all(len(label) == 66 for label in labels)
    full = AddEntry.create(signal_type="photodna", value=PHOTODNA, labels=labels, note="n" * 280)
    assert len(full.to_bytes()) <= MAX_ENTRY_BYTES
    assert parse_entry(full.to_bytes()) == full
    longest = "a" * 32 + ":" + "b" * 63
    assert AddEntry.create(signal_type="md5", value=H16, labels=[longest]).labels == (longest,)
    assert RetractEntry(index=0, reason="r" * MAX_REASON_CHARS).reason == "r" * MAX_REASON_CHARS


def test_entry_that_would_encode_too_large_is_rejected() -> None:
    labels = [f"n{i:02d}x" + "x" * 28 + ":" + "v" * 63 for i in range(MAX_LABELS)]
    with pytest.raises(MalformedError) as info:
        AddEntry.create(
            signal_type="photodna", value=PHOTODNA, labels=labels, note="\U0001f600" * 280
        )
    assert info.value.field is None and "4096" in info.value.reason
    with pytest.raises(MalformedError) as info:
        RetractEntry(index=0, reason="\U0001f600" * MAX_REASON_CHARS)
    assert info.value.field is None and "4096" in info.value.reason


# ---------------------------------------------------------------------------
# The corpus of bad inputs. Each names the field the error must carry.

BAD: list[tuple[str, bytes, object]] = [
    # signal values, per type
    ("md5-31", enc(add_obj(signal=signal("md5", "a" * 31))), "signal.value"),
    ("md5-33", enc(add_obj(signal=signal("md5", "a" * 33))), "signal.value"),
    ("sha1-39", enc(add_obj(signal=signal("sha1", "a" * 39))), "signal.value"),
    ("sha1-given-64", enc(add_obj(signal=signal("sha1", H32))), "signal.value"),
    ("sha256-63", enc(add_obj(signal=signal("sha256", "a" * 63))), "signal.value"),
    ("sha256-65", enc(add_obj(signal=signal("sha256", "a" * 65))), "signal.value"),
    ("sha256-given-sha1", enc(add_obj(signal=signal("sha256", H20))), "signal.value"),
    ("pdq-62", enc(add_obj(signal=signal("pdq", "a" * 62, quality=5))), "signal.value"),
    ("photodna-short", enc(add_obj(signal=signal("photodna", PHOTODNA[:-4]))), "signal.value"),
    ("photodna-hex", enc(add_obj(signal=signal("photodna", "ab" * 144))), "signal.value"),
    ("uppercase-hex", enc(add_obj(signal=signal("sha256", H32.upper()))), "signal.value"),
    ("space-inside", enc(add_obj(signal=signal("md5", H16[:16] + " " + H16[17:]))), "signal.value"),
    ("space-around", enc(add_obj(signal=signal("md5", " " + H16[1:]))), "signal.value"),
    ("trailing-newline", enc(add_obj(signal=signal("md5", H16[:-1] + "\n"))), "signal.value"),
    ("fullwidth-digits", enc(add_obj(signal=signal("md5", "\uff10" * 32))), "signal.value"),
    ("0x-prefix", enc(add_obj(signal=signal("md5", "0x" + H16[2:]))), "signal.value"),
    ("value-int", enc(add_obj(signal=signal("md5", 5))), "signal.value"),
    ("unknown-type", enc(add_obj(signal=signal("sha512", H32))), "signal.type"),
    ("type-int", enc(add_obj(signal=signal(1, H32))), "signal.type"),
    # type confusion through quality
    ("pdq-without-quality", enc(add_obj(signal=signal("pdq", H32))), "signal.quality"),
    ("quality-on-sha256", enc(add_obj(signal=signal("sha256", H32, quality=90))), "signal.quality"),
    (
        "quality-on-photodna",
        enc(add_obj(signal=signal("photodna", PHOTODNA, quality=1))),
        "signal.quality",
    ),
    ("quality-101", enc(add_obj(signal=signal("pdq", H32, quality=101))), "signal.quality"),
    ("quality-negative", enc(add_obj(signal=signal("pdq", H32, quality=-1))), "signal.quality"),
    ("quality-true", enc(add_obj(signal=signal("pdq", H32, quality=True))), "signal.quality"),
    ("quality-string", enc(add_obj(signal=signal("pdq", H32, quality="90"))), "signal.quality"),
    ("quality-null", enc(add_obj(signal=signal("pdq", H32, quality=None))), "signal.quality"),
    (
        "quality-float",
        b'{"kind":"add","labels":[],"signal":{"quality":90.0,"type":"pdq","value":"'
        + H32.encode()
        + b'"},"v":1}',
        "signal.quality",
    ),
    # shape: fields and kinds
    ("unknown-field", enc(add_obj(extra=1)), "extra"),
    ("unknown-signal-field", enc(add_obj(signal=signal("md5", H16, hash="x"))), "signal.hash"),
    ("retract-unknown-field", enc(retract_obj(labels=[])), "labels"),
    ("missing-labels", enc(without(add_obj(), "labels")), "labels"),
    ("missing-signal", enc(without(add_obj(), "signal")), "signal"),
    ("missing-signal-value", enc(add_obj(signal={"type": "md5"})), "signal.value"),
    ("missing-signal-type", enc(add_obj(signal={"value": H16})), "signal.type"),
    ("missing-kind", enc(without(add_obj(), "kind")), "kind"),
    ("missing-v", enc(without(add_obj(), "v")), "v"),
    ("missing-reason", enc(without(retract_obj(), "reason")), "reason"),
    ("missing-index", enc(without(retract_obj(), "index")), "index"),
    ("unknown-kind", enc(add_obj(kind="delete")), "kind"),
    ("kind-int", enc(add_obj(kind=1)), "kind"),
    ("kind-case", enc(add_obj(kind="Add")), "kind"),
    ("signal-not-object", enc(add_obj(signal=H32)), "signal"),
    ("labels-not-array", enc(add_obj(labels="iwf:category-a")), "labels"),
    ("v-string", enc(add_obj(v="1")), "v"),
    ("v-bool", enc(add_obj(v=True)), "v"),
    ("v-0", enc(add_obj(v=0)), "v"),
    ("v-negative", enc(add_obj(v=-1)), "v"),
    # strict JSON
    (
        "duplicate-key",
        b'{"kind":"add","kind":"add","labels":[],"signal":{"type":"md5","value":"'
        + H16.encode()
        + b'"},"v":1}',
        "kind",
    ),
    ("nan", b'{"index":NaN,"kind":"retract","reason":"x","v":1}', None),
    ("infinity", b'{"index":Infinity,"kind":"retract","reason":"x","v":1}', None),
    ("lone-surrogate", b'{"index":1,"kind":"retract","reason":"\\ud800","v":1}', "reason"),
    ("bom", b"\xef\xbb\xbf" + enc(retract_obj()), None),
    ("invalid-utf8", b'{"index":1,"kind":"retract","reason":"\xff","v":1}', None),
    ("overlong-utf8", b'{"index":1,"kind":"retract","reason":"\xc1\xa1","v":1}', None),
    ("non-object-array", b"[]", None),
    ("non-object-string", b'"add"', None),
    ("non-object-number", b"1", None),
    ("non-object-null", b"null", None),
    ("empty", b"", None),
    ("truncated", enc(retract_obj())[:-1], None),
    (
        "deep-nesting",
        b'{"index":1,"kind":"retract","reason":' + b"[" * 40 + b"]" * 40 + b',"v":1}',
        ANY_FIELD,
    ),
    # canonical form
    ("key-order", b'{"v":1,"index":1,"kind":"retract","reason":"x"}', None),
    (
        "signal-key-order",
        b'{"kind":"add","labels":[],"signal":{"value":"' + H16.encode() + b'","type":"md5"},"v":1}',
        None,
    ),
    ("whitespace", b'{"index": 1,"kind":"retract","reason":"x","v":1}', None),
    ("pretty", b'{\n  "index":1,"kind":"retract","reason":"x","v":1}', None),
    ("trailing-newline-doc", enc(retract_obj()) + b"\n", None),
    ("escaped-ascii", b'{"index":1,"kind":"retract","reason":"\\u0061","v":1}', None),
    ("escaped-slash", b'{"index":1,"kind":"retract","reason":"a\\/b","v":1}', None),
    ("escaped-non-ascii", b'{"index":1,"kind":"retract","reason":"caf\\u00e9","v":1}', None),
    ("index-leading-zero", b'{"index":01,"kind":"retract","reason":"x","v":1}', None),
    ("index-minus-zero", b'{"index":-0,"kind":"retract","reason":"x","v":1}', None),
    ("index-exponent", b'{"index":1e2,"kind":"retract","reason":"x","v":1}', "index"),
    # labels
    ("labels-unsorted", enc(add_obj(labels=["src:b", "iwf:a"])), "labels[1]"),
    ("labels-duplicated", enc(add_obj(labels=["iwf:a", "iwf:a"])), "labels[1]"),
    ("label-uppercase", enc(add_obj(labels=["IWF:category-a"])), "labels[0]"),
    ("label-no-namespace", enc(add_obj(labels=["category-a"])), "labels[0]"),
    ("label-empty-value", enc(add_obj(labels=["iwf:"])), "labels[0]"),
    ("label-empty-namespace", enc(add_obj(labels=[":x"])), "labels[0]"),
    ("label-space", enc(add_obj(labels=["iwf:category a"])), "labels[0]"),
    ("label-trailing-newline", enc(add_obj(labels=["iwf:a\n"])), "labels[0]"),
    ("label-non-ascii", enc(add_obj(labels=["iwf:cat\u00e9gorie"])), "labels[0]"),
    ("label-value-too-long", enc(add_obj(labels=["iwf:" + "a" * 64])), "labels[0]"),
    ("label-namespace-too-long", enc(add_obj(labels=["a" * 33 + ":b"])), "labels[0]"),
    ("label-not-string", enc(add_obj(labels=[1])), "labels[0]"),
    (
        "labels-too-many",
        enc(add_obj(labels=[f"n:{i:03d}" for i in range(MAX_LABELS + 1)])),
        "labels",
    ),
    ("third-label-bad", enc(add_obj(labels=["a:a", "b:b", "c"])), "labels[2]"),
    # note and reason
    ("note-newline", enc(add_obj(note="line\nbreak")), "note"),
    ("note-cr", enc(add_obj(note="a\rb")), "note"),
    ("note-tab", enc(add_obj(note="a\tb")), "note"),
    ("note-nul", enc(add_obj(note="a\x00b")), "note"),
    ("note-del", enc(add_obj(note="a\x7fb")), "note"),
    ("note-c1", enc(add_obj(note="a\x85b")), "note"),
    ("note-empty", enc(add_obj(note="")), "note"),
    ("note-null", enc(add_obj(note=None)), "note"),
    ("note-too-long", enc(add_obj(note="x" * (MAX_NOTE_CHARS + 1))), "note"),
    ("reason-empty", enc(retract_obj(reason="")), "reason"),
    ("reason-newline", enc(retract_obj(reason="a\nb")), "reason"),
    ("reason-too-long", enc(retract_obj(reason="x" * (MAX_REASON_CHARS + 1))), "reason"),
    ("reason-int", enc(retract_obj(reason=1)), "reason"),
    # index
    ("index-negative", enc(retract_obj(index=-1)), "index"),
    ("index-bool", enc(retract_obj(index=True)), "index"),
    ("index-string", enc(retract_obj(index="3")), "index"),
    ("index-null", enc(retract_obj(index=None)), "index"),
    ("index-too-big", enc(retract_obj(index=MAX_UINT63 + 1)), "index"),
    (
        "index-21-digits",
        b'{"index":100000000000000000000,"kind":"retract","reason":"x","v":1}',
        None,
    ),
    # size
    ("oversized", enc(retract_obj(reason="x" * MAX_ENTRY_BYTES)), None),
    ("oversized-whitespace", b" " * (MAX_ENTRY_BYTES + 1), None),
]


@pytest.mark.parametrize(("data", "field"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_entry_is_rejected(data: bytes, field: object) -> None:
    with pytest.raises(MalformedError) as info:
        parse_entry(data)
    assert not isinstance(info.value, UnsupportedVersionError)
    if field is not ANY_FIELD:
        assert info.value.field == field, str(info.value)


def test_bad_corpus_ids_are_unique() -> None:
    ids = [c[0] for c in BAD]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("version", [3, 100, MAX_UINT63])
def test_unknown_version_is_unsupported(version: int) -> None:
    # Version is checked first: a future version may have other kinds/fields.
    for obj in (add_obj(v=version), retract_obj(v=version), {"kind": "merge", "v": version}):
        with pytest.raises(UnsupportedVersionError) as info:
            parse_entry(enc(obj))
        assert info.value.field == "v"
        assert str(version) in info.value.reason


def test_oversized_is_checked_before_parsing() -> None:
    with pytest.raises(MalformedError) as info:
        parse_entry(b"\xff" * (MAX_ENTRY_BYTES + 1))
    assert "4097 bytes" in info.value.reason


def test_error_messages_name_expected_and_actual() -> None:
    with pytest.raises(MalformedError) as info:
        parse_entry(enc(add_obj(signal=signal("sha256", "a" * 63))))
    assert str(info.value) == "signal.value: expected 64 hex characters, got 63"
    with pytest.raises(MalformedError) as info:
        parse_entry(enc(add_obj(signal=signal("pdq", H32))))
    assert "quality" in str(info.value) and "required" in str(info.value)
    with pytest.raises(MalformedError) as info:
        parse_entry(enc(add_obj(signal=signal("pdq", H32, quality=101))))
    assert "0-100" in info.value.reason and "101" in info.value.reason


# ---------------------------------------------------------------------------
# Properties

SAFE_TEXT = st.characters(blacklist_categories=("Cc", "Cs"))
LABELS = st.lists(st.from_regex(LABEL_PATTERN, fullmatch=True), max_size=8, unique=True)


@st.composite
def add_entries(draw: st.DrawFn) -> AddEntry:
    name = draw(st.sampled_from(sorted(SIGNAL_TYPES)))
    row = SIGNAL_TYPES[name]
    raw = draw(st.binary(min_size=row.length, max_size=row.length))
    value = raw.hex() if row.encoding == "hex" else base64.b64encode(raw).decode("ascii")
    return AddEntry.create(
        signal_type=name,
        value=value,
        labels=draw(LABELS),
        note=draw(st.none() | st.text(SAFE_TEXT, min_size=1, max_size=MAX_NOTE_CHARS)),
        quality=draw(st.integers(0, 100)) if row.requires_quality else None,
    )


RETRACT_ENTRIES = st.builds(
    RetractEntry,
    index=st.integers(0, MAX_UINT63),
    reason=st.text(SAFE_TEXT, min_size=1, max_size=400),
)
ENTRIES = add_entries() | RETRACT_ENTRIES


@settings(max_examples=300, deadline=None)
@given(ENTRIES)
def test_property_round_trip(entry: Entry) -> None:
    data = entry.to_bytes()
    assert len(data) <= MAX_ENTRY_BYTES
    parsed = parse_entry(data)
    assert parsed == entry
    assert parsed.to_bytes() == data
    # to_bytes has a hand-written fast path: it must equal the generic encoder.
    assert data == dumps_canonical(entry.to_json_obj())


def check_parse(data: bytes) -> None:
    try:
        entry = parse_entry(data)
    except MalformedError:
        return
    assert entry.to_bytes() == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MAX_ENTRY_BYTES + 16))
def test_property_arbitrary_bytes(data: bytes) -> None:
    check_parse(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_property_arbitrary_json(value: Any) -> None:
    check_parse(enc(value))


def near_valid() -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the real keys and a mix of valid and invalid values."""
    sig_value = st.sampled_from([H16, H20, H32, PHOTODNA, H32.upper(), ""]) | JSON_VALUES
    signals = st.fixed_dictionaries(
        {
            "type": st.sampled_from([*SIGNAL_TYPES, "SHA256", ""]) | JSON_VALUES,
            "value": sig_value,
        },
        optional={"quality": st.integers(-2, 102) | JSON_VALUES, "x": JSON_VALUES},
    )
    adds = st.fixed_dictionaries(
        {
            "kind": st.just("add"),
            "labels": LABELS | st.lists(st.text(max_size=10), max_size=3) | JSON_VALUES,
            "signal": signals | JSON_VALUES,
            "v": st.sampled_from([1, 1, 1, 2, True, "1"]),
        },
        optional={"note": st.text(max_size=20) | JSON_VALUES, "y": JSON_VALUES},
    )
    retracts = st.fixed_dictionaries(
        {
            "index": st.integers(-2, 2**64) | JSON_VALUES,
            "kind": st.sampled_from(["retract", "add", "x"]),
            "reason": st.text(max_size=20) | JSON_VALUES,
            "v": st.sampled_from([1, 1, 1, 2, False]),
        }
    )
    return adds | retracts


@settings(max_examples=300, deadline=None)
@given(near_valid())
def test_property_near_valid_objects(obj: dict[str, Any]) -> None:
    check_parse(enc(obj))


@settings(max_examples=300, deadline=None)
@given(ENTRIES, st.data())
def test_property_mutated_entries(entry: Entry, data: st.DataObject) -> None:
    raw = bytearray(entry.to_bytes())
    position = data.draw(st.integers(0, len(raw) - 1))
    action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
    byte = data.draw(st.integers(0, 255))
    if action == "flip":
        raw[position] ^= byte or 1
    elif action == "insert":
        raw.insert(position, byte)
    else:
        del raw[position]
    check_parse(bytes(raw))


@pytest.mark.parametrize(
    ("signal_type", "value", "quality"),
    [
        ("sha256", "ab" * 32, None),
        ("md5", "0f" * 16, None),
        ("pdq", "cd" * 32, 90),
        ("photodna", base64.b64encode(bytes(range(144))).decode(), None),
        ("sha256", "AB" * 32, None),  # not canonical
        ("sha256", "ab" * 31, None),  # too short
        ("md5", " " + "0f" * 16, None),
        ("photodna", "not base64", None),
    ],
)
def test_maker_equals_create(signal_type: str, value: str, quality: int | None) -> None:
    labels = ["src:b", "src:a", "src:b"]
    make = AddEntry.maker(signal_type=signal_type, labels=labels, quality=quality)
    expected: AddEntry | MalformedError
    try:
        expected = AddEntry.create(
            signal_type=signal_type, value=value, labels=labels, quality=quality
        )
    except MalformedError as e:
        expected = e
    if isinstance(expected, MalformedError):
        with pytest.raises(MalformedError) as caught:
            make(value)
        assert (caught.value.field, caught.value.reason) == (expected.field, expected.reason)
        return
    made = make(value)
    assert made == expected and made.to_bytes() == expected.to_bytes()
    assert made.labels == ("src:a", "src:b")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"signal_type": "sha512"}, "signal.type"),
        ({"signal_type": "pdq"}, "signal.quality"),
        ({"signal_type": "md5", "quality": 5}, "signal.quality"),
        ({"signal_type": "md5", "labels": ["Bad"]}, "labels[0]"),
        ({"signal_type": "md5", "labels": "src:a"}, "labels"),
        ({"signal_type": "md5", "note": ""}, "note"),
    ],
)
def test_maker_checks_the_fixed_fields_once(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedError) as caught:
        AddEntry.maker(**fields)
    assert caught.value.field == field


def test_maker_checks_the_encoded_size() -> None:
    labels = [f"{'n' * 29}{i:03d}:" + "v" * 63 for i in range(32)]
    make = AddEntry.maker(signal_type="md5", labels=labels, note="\U0001f600" * 280)
    with pytest.raises(MalformedError, match="bytes"):
        make("0" * 32)


PARSER_FIELDS = [
    ("sha256", None, "ab" * 32),
    ("md5", None, "0f" * 16),
    ("pdq", 90, "cd" * 32),
    ("photodna", None, base64.b64encode(bytes(range(144))).decode()),
]


@pytest.mark.parametrize("salt", [None, SALT])
@pytest.mark.parametrize(("signal_type", "quality", "value"), PARSER_FIELDS)
def test_parser_accepts_exactly_the_family_encodings(
    signal_type: str, quality: int | None, value: str, salt: str | None
) -> None:
    labels = ["src:b", "src:a", "src:b"]
    version = 1 if salt is None else 2
    parse = AddEntry.parser(
        signal_type=signal_type, labels=labels, quality=quality, version=version
    )
    entry = AddEntry.create(
        signal_type=signal_type, value=value, labels=labels, quality=quality, salt=salt
    )
    data = entry.to_bytes()
    assert parse(data) == entry == parse_entry(data)
    other = dataclasses.replace(entry, labels=("src:a",))
    noted = dataclasses.replace(entry, note="seen")
    upper = data.replace(value.encode(), value.upper().encode())
    # Anything else is not for this parser: another family, a note, a
    # non-canonical value or salt, a changed byte, trailing bytes, the
    # other version, a retraction.
    for foreign in (
        other.to_bytes(),
        noted.to_bytes(),
        upper,
        data.replace(SALT.encode(), SALT.upper().encode()),
        data.replace(SALT.encode(), SALT[:-2].encode()),
        data[:-1],
        data + b" ",
        data.replace(b'"v":1', b'"v":2'),
        data.replace(b'"v":2', b'"v":1'),
        entry.salted("00" * 16).to_bytes()
        if salt is None
        else dataclasses.replace(entry, salt=None).to_bytes(),
        RetractEntry(index=1, reason="r", salt=salt).to_bytes(),
    ):
        got = parse(foreign)
        if got is not None:  # only possible when the change left it canonical
            assert got == parse_entry(foreign)
        assert foreign == data or got is None or got.to_bytes() == foreign


def test_parser_rejects_non_canonical_base64() -> None:
    parse = AddEntry.parser(signal_type="photodna")
    good = AddEntry.create(
        signal_type="photodna", value=base64.b64encode(bytes(144)).decode(), salt=SALT
    )
    assert parse(good.to_bytes()) == good
    # Same length, valid alphabet, but not the canonical base64 of 144 bytes.
    bad = good.to_bytes().replace(b"AAAA", b"AA==", 1)
    assert parse(bad) is None
    with pytest.raises(MalformedError):
        parse_entry(bad)


@given(
    st.binary(min_size=16, max_size=16),
    st.sampled_from([[], ["a:b"], ["x:y", "a:b"]]),
    st.none() | st.binary(min_size=16, max_size=16).map(bytes.hex),
)
@settings(max_examples=200, deadline=None)
def test_parser_agrees_with_parse_entry(raw: bytes, labels: list[str], salt: str | None) -> None:
    entry = AddEntry.create(signal_type="md5", value=raw.hex(), labels=labels, salt=salt)
    parse = AddEntry.parser(signal_type="md5", labels=labels, version=entry.version)
    assert parse(entry.to_bytes()) == entry == parse_entry(entry.to_bytes())


def test_parser_checks_its_fields() -> None:
    with pytest.raises(MalformedError) as caught:
        AddEntry.parser(signal_type="pdq")
    assert caught.value.field == "signal.quality"
