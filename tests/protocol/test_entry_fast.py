"""The fast entry parsers accept exactly what ``parse_entry`` accepts, with equal values.

``parse_entry_fast``, ``parse_entries``, ``AddEntry.parser`` (the family
parsers ``parse_entry_fast`` builds) and ``parse_add_run`` (a replica's bulk
check of a chunk) are checked against the strict
``parse_entry`` on generated canonical entries of every kind and on near
misses of them: reordered keys, whitespace, escapes, upper-case hex, extra
fields, non-canonical numbers, salts dropped, added or misspelt, and random
byte edits; both entry versions (1: no salt, 2: salted) are generated.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol.entry as entry_module
from protocol.entry import (
    LABEL_PATTERN,
    OPINION_VERDICTS,
    AddEntry,
    AddRun,
    Entry,
    OpinionEntry,
    RetractEntry,
    RotateEntry,
    parse_add_run,
    parse_entries,
    parse_entry,
    parse_entry_fast,
)
from protocol.errors import MalformedError
from protocol.keys import NoteSigner
from protocol.signal import SIGNAL_TYPES

ORIGIN = "hotline.example/log"
KEYS = [NoteSigner.from_seed(ORIGIN, bytes([i]) * 32).verifier().to_text() for i in range(1, 4)]

labels = st.lists(st.from_regex(LABEL_PATTERN, fullmatch=True), max_size=4)
# Valid free text (no control characters or surrogates), with quotes,
# backslashes and non-ASCII that the canonical encoding escapes or keeps raw.
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from('"\\/'),
    min_size=1,
    max_size=40,
)
index = st.integers(min_value=0, max_value=2**63 - 1)
# Mostly version 2 (as written), some version 1 (vectors, older logs).
salts = st.none() | st.binary(min_size=16, max_size=16).map(bytes.hex)


@st.composite
def adds(draw: st.DrawFn) -> AddEntry:
    signal_type = draw(st.sampled_from(sorted(SIGNAL_TYPES)))
    row = SIGNAL_TYPES[signal_type]
    raw = draw(st.binary(min_size=row.length, max_size=row.length))
    value = raw.hex() if row.encoding == "hex" else base64.b64encode(raw).decode("ascii")
    quality = draw(st.integers(0, 100)) if row.requires_quality else None
    return AddEntry.create(
        signal_type=signal_type,
        value=value,
        labels=draw(labels),
        note=draw(st.none() | st.none() | text),
        quality=quality,
        salt=draw(salts),
    )


@st.composite
def others(draw: st.DrawFn) -> Entry:
    reason = draw(text)
    kind = draw(st.sampled_from(["retract", "opinion", "rotate"]))
    salt = draw(salts)
    if kind == "retract":
        return RetractEntry(index=draw(index), reason=reason, salt=salt)
    if kind == "opinion":
        return OpinionEntry(
            origin=ORIGIN,
            index=draw(index),
            leaf_hash=draw(st.binary(min_size=32, max_size=32)),
            verdict=draw(st.sampled_from(OPINION_VERDICTS)),
            salt=salt,
        )
    return RotateEntry(key=draw(st.sampled_from(KEYS)), reason=reason, salt=salt)


entries = adds() | adds() | others()


def _dump(obj: Any, order: list[int] | None = None, sep: tuple[str, str] = (",", ":")) -> str:
    """JSON text of ``obj``, keys in a permuted order when ``order`` is given."""
    if isinstance(obj, dict):
        items = sorted(obj.items())
        if order is not None:
            ranked = sorted(range(len(items)), key=lambda i: order[i % len(order)] + i * 0.001)
            items = [items[i] for i in ranked]
        body = sep[0].join(json.dumps(k) + sep[1] + _dump(v, order, sep) for k, v in items)
        return "{" + body + "}"
    if isinstance(obj, list):
        return "[" + sep[0].join(_dump(v, order, sep) for v in obj) + "]"
    return json.dumps(obj, ensure_ascii=False)


@st.composite
def near_misses(draw: st.DrawFn) -> bytes:
    how = draw(
        st.sampled_from(
            [
                "same",
                "reorder",
                "whitespace",
                "escape",
                "upper",
                "extra",
                "number",
                "ascii",
                "bytes",
                "value",
                "salt",
                "version",
            ]
        )
    )
    data = draw(adds() if how == "value" else entries).to_bytes()
    obj = json.loads(data)
    text_form = data.decode("utf-8")
    if how == "reorder":
        order = draw(st.lists(st.integers(0, 9), min_size=1, max_size=6))
        return _dump(obj, order).encode("utf-8")
    if how == "whitespace":
        at = draw(st.integers(0, len(text_form)))
        space = draw(st.sampled_from([" ", "\n", "\t", "\r"]))
        return (text_form[:at] + space + text_form[at:]).encode("utf-8")
    if how == "escape":
        # One character of the text written as a \u escape (or "/" as "\/").
        at = draw(st.integers(0, len(text_form) - 1))
        ch = text_form[at]
        escaped = "\\/" if ch == "/" else f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else ch
        return (text_form[:at] + escaped + text_form[at + 1 :]).encode("utf-8")
    if how == "upper":
        return text_form.upper().encode("utf-8")
    if how == "extra":
        target = obj.get("signal", obj) if draw(st.booleans()) else obj
        target[draw(st.sampled_from(["x", "note", "quality", "v", "aaa", "salt"]))] = draw(
            st.sampled_from([1, "x", None, [], 90, "00" * 16])
        )
        return _dump(obj).encode("utf-8")
    if how == "number":
        spelled = draw(st.sampled_from(["0{}", "{}.0", "{}e0", "-{}", "+{}", "{}0", "1{}"]))
        for key in ('"quality":', '"index":', '"v":'):
            at = text_form.find(key)
            if at >= 0:
                start = at + len(key)
                end = start
                while end < len(text_form) and text_form[end].isdigit():
                    end += 1
                number = spelled.format(text_form[start:end])
                return (text_form[:start] + number + text_form[end:]).encode("utf-8")
        return data
    if how == "ascii":
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")
    if how == "value" and "signal" in obj:
        # One character of the value from the hex and base64 alphabets (both
        # cases, padding): mostly non-canonical values of the right length.
        value = obj["signal"]["value"]
        at = draw(st.integers(0, len(value) - 1))
        ch = draw(st.sampled_from("0aAfFgG+/==="))
        obj["signal"]["value"] = value[:at] + ch + value[at + 1 :]
        return _dump(obj).encode("utf-8")
    if how == "salt":
        # The salt dropped, added, or one character of it replaced (the
        # wrong case or alphabet), shortened or lengthened.
        if "salt" not in obj or draw(st.booleans()):
            if "salt" in obj:
                del obj["salt"]
            else:
                obj["salt"] = draw(salts) or "ab" * 16
            return _dump(obj).encode("utf-8")
        salt = obj["salt"]
        at = draw(st.integers(0, len(salt) - 1))
        ch = draw(st.sampled_from(["0", "a", "A", "F", "g", "=", "", "00"]))
        obj["salt"] = salt[:at] + ch + salt[at + 1 :]
        return _dump(obj).encode("utf-8")
    if how == "version":
        obj["v"] = draw(st.sampled_from([1, 2, 3]))
        return _dump(obj).encode("utf-8")
    if how == "bytes":
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "drop", "insert"]))
        if op == "drop":
            return data[:at] + data[at + 1 :]
        byte = draw(st.integers(0, 255))
        if op == "insert":
            return data[:at] + bytes([byte]) + data[at:]
        return data[:at] + bytes([data[at] ^ (byte or 1)]) + data[at + 1 :]
    return data


def _outcome(parse: Any, data: bytes) -> object:
    try:
        return parse(data)
    except MalformedError as e:
        return (type(e), str(e))


@given(entries)
@settings(max_examples=200, deadline=None)
def test_fast_parser_reads_every_canonical_entry(entry: Entry) -> None:
    data = entry.to_bytes()
    assert parse_entry_fast(data) == entry == parse_entry(data)


@given(near_misses())
@settings(max_examples=700, deadline=None)
def test_fast_parser_agrees_with_parse_entry_on_near_misses(data: bytes) -> None:
    assert _outcome(parse_entry_fast, data) == _outcome(parse_entry, data)


@given(adds(), near_misses())
@settings(max_examples=250, deadline=None)
def test_a_family_parser_returns_none_or_what_parse_entry_returns(
    family: AddEntry, data: bytes
) -> None:
    parse = AddEntry.parser(
        signal_type=family.signal_type,
        labels=family.labels,
        quality=family.quality,
        version=family.version,
    )
    got = parse(data)
    if got is not None:
        assert got == parse_entry(data)
        assert (got.signal_type, got.labels, got.quality, got.note, got.version) == (
            family.signal_type,
            family.labels,
            family.quality,
            None,
            family.version,
        )
    expected = _outcome(parse_entry, data)
    if (
        isinstance(expected, AddEntry)
        and expected.note is None
        and (expected.signal_type, expected.labels, expected.quality, expected.version)
        == (family.signal_type, family.labels, family.quality, family.version)
    ):
        assert got == expected  # the family parser misses none of its own


@given(st.lists(near_misses(), min_size=1, max_size=8), st.integers(0, 1000))
@settings(max_examples=120, deadline=None)
def test_parse_entries_names_the_first_bad_entry(datas: list[bytes], start: int) -> None:
    outcomes = [_outcome(parse_entry, d) for d in datas]
    bad = [i for i, o in enumerate(outcomes) if isinstance(o, tuple)]
    if not bad:
        assert parse_entries(datas, start) == outcomes
        return
    with pytest.raises(MalformedError) as caught:
        parse_entries(datas, start)
    assert caught.value.field is not None
    assert caught.value.field.startswith(f"entries[{start + bad[0]}]")


def test_salted_adds_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # A replica's sync chunk is mostly note-less version 2 adds: none of them
    # may fall back to the strict parser (the slow path).
    datas = [
        AddEntry.create(
            signal_type="sha256", value=f"{i:064x}", labels=["src:x"], salt=f"{i:032x}"
        ).to_bytes()
        for i in range(50)
    ]
    expected = [parse_entry(d) for d in datas]

    def strict(_data: bytes) -> Entry:
        raise AssertionError("fell back to parse_entry")

    monkeypatch.setattr(entry_module, "parse_entry", strict)
    assert parse_entries(datas) == expected


@st.composite
def add_runs(draw: st.DrawFn) -> list[bytes]:
    """Encodings of note-less adds of one family, some runs spoilt in one place.

    Spoilt by a near miss, an entry of another family, or two neighbours
    whose lengths differ by one byte each way (their concatenation unchanged).
    """
    hex_types = sorted(t for t, row in SIGNAL_TYPES.items() if row.encoding == "hex")
    signal_type = draw(st.sampled_from(hex_types))
    row = SIGNAL_TYPES[signal_type]
    family = draw(labels)
    quality = draw(st.integers(0, 100)) if row.requires_quality else None
    salted = draw(st.booleans())
    n = draw(st.integers(1, 40))
    raws = draw(
        st.lists(st.binary(min_size=row.length, max_size=row.length), min_size=n, max_size=n)
    )
    datas = [
        AddEntry.create(
            signal_type=signal_type,
            value=raw.hex(),
            labels=family,
            quality=quality,
            salt=raw[:16].ljust(16, b"s").hex() if salted else None,
        ).to_bytes()
        for raw in raws
    ]
    at = draw(st.integers(0, n - 1))
    how = draw(st.sampled_from(["none", "near", "other", "shift"]))
    if how == "near":
        datas[at] = draw(near_misses())
    elif how == "other":
        datas[at] = draw(entries).to_bytes()
    elif how == "shift" and at + 1 < n:
        # The value's last digit moved into the next entry's frame: each
        # entry spoilt, the bytes of the pair the same.
        datas[at], datas[at + 1] = datas[at][:-1], datas[at][-1:] + datas[at + 1]
    return datas


@given(add_runs())
@settings(max_examples=400, deadline=None)
def test_an_add_run_is_none_or_what_parse_entry_returns(datas: list[bytes]) -> None:
    run = parse_add_run(datas)
    outcomes = [_outcome(parse_entry, d) for d in datas]
    first = outcomes[0]
    one_family = all(
        isinstance(o, AddEntry)
        and isinstance(first, AddEntry)
        and o.note is None
        and (o.signal_type, o.labels, o.quality, o.version)
        == (first.signal_type, first.labels, first.quality, first.version)
        and SIGNAL_TYPES[o.signal_type].encoding == "hex"
        for o in outcomes
    )
    if run is None:
        assert not one_family  # no run of one family is missed
        return
    assert one_family
    assert list(run) == outcomes
    assert run.values == [o.value for o in outcomes if isinstance(o, AddEntry)]
    assert run.signal_type == first.signal_type if isinstance(first, AddEntry) else False


@pytest.mark.parametrize("at", [0, 1024, 2099])
@pytest.mark.parametrize("byte", [0x22, 0x30, 0x41, 0x66, 0x67, 0xFF])
def test_one_byte_anywhere_in_a_long_run_spoils_it(at: int, byte: int) -> None:
    # Longer than two blocks of the bulk check (1,024 entries), with a partial last block;
    # the byte: a quote, a digit, upper-case hex, hex, a letter beyond hex, a non-ASCII byte.
    datas = [
        AddEntry.create(signal_type="sha256", value=f"{i:064x}", salt=f"{i:032x}").to_bytes()
        for i in range(2100)
    ]
    assert isinstance(parse_add_run(datas), AddRun)
    data = datas[at]
    for position in range(len(data)):
        spoilt = data[:position] + bytes([byte]) + data[position + 1 :]
        datas[at] = spoilt
        run = parse_add_run(datas)
        expected = _outcome(parse_entry, spoilt)
        if run is None:
            assert not (isinstance(expected, AddEntry) and expected.signal_type == "sha256")
        else:
            assert run[at] == expected
            assert run.values[at] == expected.value if isinstance(expected, AddEntry) else False
    datas[at] = data


def test_an_add_run_refuses_what_is_not_one_family_of_hex_adds() -> None:
    sha = AddEntry.create(signal_type="sha256", value="ab" * 32, salt="cd" * 16)
    assert parse_add_run([]) is None
    assert parse_add_run([RetractEntry(index=0, reason="x", salt="00" * 16).to_bytes()]) is None
    noted = AddEntry.create(signal_type="sha256", value="ab" * 32, note="n", salt="cd" * 16)
    assert parse_add_run([noted.to_bytes()]) is None
    photo = AddEntry.create(
        signal_type="photodna", value=base64.b64encode(bytes(144)).decode(), salt="cd" * 16
    )
    assert parse_add_run([photo.to_bytes()]) is None
    labelled = AddEntry.create(
        signal_type="sha256", value="ab" * 32, labels=["src:x"], salt="cd" * 16
    )
    assert parse_add_run([sha.to_bytes(), labelled.to_bytes()]) is None
    unsalted = AddEntry.create(signal_type="sha256", value="ab" * 32)
    assert parse_add_run([sha.to_bytes(), unsalted.to_bytes()]) is None
    run = parse_add_run([sha.to_bytes(), sha.to_bytes()])
    assert run is not None and list(run) == [sha, sha] and run[-1:] == [sha]
