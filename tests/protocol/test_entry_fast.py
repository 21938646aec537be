"""The fast entry parsers accept exactly what ``parse_entry`` accepts, with equal values.

``parse_entry_fast``, ``parse_entries`` and ``AddEntry.parser`` (the family
parsers ``parse_entry_fast`` builds) are checked against the strict
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
    Entry,
    OpinionEntry,
    RetractEntry,
    RotateEntry,
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
