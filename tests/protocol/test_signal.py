"""Signal-type registry, strict validation and the forgiving normaliser."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import MalformedError
from protocol.signal import (
    SIGNAL_TYPES,
    SignalType,
    detect_signal_type,
    normalise_signal_value,
    validate_signal_value,
)

PHOTODNA_BYTES = bytes(range(144))
PHOTODNA_B64 = base64.b64encode(PHOTODNA_BYTES).decode("ascii")

CANONICAL = {
    "md5": "0123456789abcdef" * 2,
    "sha1": "0123456789abcdef" * 2 + "01234567",
    "sha256": "0123456789abcdef" * 4,
    "pdq": "f" * 64,
    "photodna": PHOTODNA_B64,
}


def test_registry_rows() -> None:
    assert list(SIGNAL_TYPES) == ["md5", "sha1", "sha256", "pdq", "photodna"]
    expected = {
        "md5": ("hex", 16, False),
        "sha1": ("hex", 20, False),
        "sha256": ("hex", 32, False),
        "pdq": ("hex", 32, True),
        "photodna": ("base64", 144, False),
    }
    for name, row in SIGNAL_TYPES.items():
        assert isinstance(row, SignalType)
        assert row.name == name
        assert (row.encoding, row.length, row.requires_quality) == expected[name]
        assert row.description
    assert SIGNAL_TYPES["photodna"].text_length == 192
    assert SIGNAL_TYPES["sha256"].text_length == 64


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        SIGNAL_TYPES["x"] = SIGNAL_TYPES["md5"]  # type: ignore[index]


@pytest.mark.parametrize("signal_type", sorted(CANONICAL))
def test_canonical_values_validate(signal_type: str) -> None:
    validate_signal_value(signal_type, CANONICAL[signal_type])
    assert normalise_signal_value(signal_type, CANONICAL[signal_type]) == (
        CANONICAL[signal_type],
        [],
    )


STRICT_BAD = [
    ("md5-short", "md5", "a" * 31, "signal.value", "expected 32 hex characters, got 31"),
    ("md5-long", "md5", "a" * 33, "signal.value", "expected 32 hex characters, got 33"),
    ("sha1-as-64", "sha1", "a" * 64, "signal.value", "expected 40 hex characters, got 64"),
    ("sha256-63", "sha256", "a" * 63, "signal.value", "expected 64 hex characters, got 63"),
    ("sha256-as-sha1", "sha256", "a" * 40, "signal.value", "expected 64"),
    ("pdq-short", "pdq", "a" * 62, "signal.value", "expected 64"),
    ("upper", "sha256", "A" * 64, "signal.value", "lowercase"),
    ("inner-space", "md5", "a" * 15 + " " + "a" * 16, "signal.value", "lowercase"),
    ("around-space", "md5", " " + "a" * 30 + " ", "signal.value", "lowercase"),
    ("trailing-newline", "md5", "a" * 31 + "\n", "signal.value", "lowercase"),
    ("prefix", "md5", "0x" + "a" * 30, "signal.value", "lowercase"),
    ("fullwidth", "md5", "\uff11" * 32, "signal.value", "lowercase"),
    ("photodna-hex", "photodna", "ab" * 144, "signal.value", "expected 144 bytes, got 216"),
    ("photodna-short", "photodna", PHOTODNA_B64[:-4], "signal.value", "expected 144 bytes"),
    ("photodna-urlsafe", "photodna", PHOTODNA_B64.replace("+", "-"), "signal.value", "base64"),
    ("photodna-newline", "photodna", PHOTODNA_B64 + "\n", "signal.value", "base64"),
    ("unknown-type", "sha512", "a" * 128, "signal.type", "unknown signal type"),
    ("type-case", "SHA256", "a" * 64, "signal.type", "unknown signal type"),
]


@pytest.mark.parametrize(
    ("signal_type", "value", "field", "message"),
    [case[1:] for case in STRICT_BAD],
    ids=[case[0] for case in STRICT_BAD],
)
def test_validate_rejects(signal_type: str, value: str, field: str, message: str) -> None:
    with pytest.raises(MalformedError) as info:
        validate_signal_value(signal_type, value)
    assert info.value.field == field
    assert message in info.value.reason


def test_validate_uses_given_field_names() -> None:
    with pytest.raises(MalformedError) as info:
        validate_signal_value("md5", "x", field="value")
    assert info.value.field == "value"
    with pytest.raises(MalformedError) as info:
        validate_signal_value("nope", "x", type_field="type")
    assert info.value.field == "type"


NORMALISE_OK = [
    ("upper", "md5", "AB" * 16, "ab" * 16, ["lower-cased hex"]),
    (
        "crlf-and-spaces",
        "sha1",
        " " + "ab" * 20 + "\r\n",
        "ab" * 20,
        ["removed surrounding whitespace"],
    ),
    (
        "inner-spaces",
        "md5",
        "abcd " * 8,
        "abcd" * 8,
        ["removed surrounding whitespace", "removed spaces"],
    ),
    ("inner-tab", "md5", "ab" * 8 + "\t" + "ab" * 8, "ab" * 16, ["removed spaces"]),
    ("0x", "sha256", "0x" + "cd" * 32, "cd" * 32, ["removed 0x prefix"]),
    ("0X-upper", "pdq", "0X" + "CD" * 32, "cd" * 32, ["removed 0x prefix", "lower-cased hex"]),
    ("photodna-hex", "photodna", PHOTODNA_BYTES.hex(), PHOTODNA_B64, ["converted hex to base64"]),
    (
        "photodna-hex-upper",
        "photodna",
        PHOTODNA_BYTES.hex().upper(),
        PHOTODNA_B64,
        ["converted hex to base64"],
    ),
    (
        "photodna-decimal",
        "photodna",
        ",".join(str(b) for b in PHOTODNA_BYTES),
        PHOTODNA_B64,
        ["converted decimal byte list to base64"],
    ),
    (
        "photodna-decimal-spaced",
        "photodna",
        ", ".join(str(b) for b in PHOTODNA_BYTES) + "\n",
        PHOTODNA_B64,
        [
            "removed surrounding whitespace",
            "removed spaces",
            "converted decimal byte list to base64",
        ],
    ),
    (
        "photodna-wrapped-base64",
        "photodna",
        PHOTODNA_B64[:76] + "\n" + PHOTODNA_B64[76:],
        PHOTODNA_B64,
        ["removed spaces"],
    ),
    (
        "photodna-urlsafe",
        "photodna",
        base64.urlsafe_b64encode(b"\xfb\xff" * 72).decode(),
        base64.b64encode(b"\xfb\xff" * 72).decode(),
        ["converted URL-safe base64"],
    ),
]


@pytest.mark.parametrize(
    ("signal_type", "raw", "value", "changes"),
    [case[1:] for case in NORMALISE_OK],
    ids=[case[0] for case in NORMALISE_OK],
)
def test_normalise_fixes_and_reports(
    signal_type: str, raw: str, value: str, changes: list[str]
) -> None:
    assert normalise_signal_value(signal_type, raw) == (value, changes)
    validate_signal_value(signal_type, value)


def test_normalise_upper_case_mentions_lower() -> None:
    # The CLI prints these descriptions; its test looks for "lower".
    _, changes = normalise_signal_value("md5", "AB" * 16)
    assert any("lower" in c for c in changes)


NORMALISE_BAD = [
    ("unknown-type", "sha512", "ab" * 64, "type", "unknown signal type"),
    ("sha1-as-sha256", "sha256", "ab" * 20, "value", "looks like a sha1"),
    ("sha256-as-sha1", "sha1", "ab" * 32, "value", "expected 40 hex characters, got 64"),
    ("md5-as-sha1", "sha1", "ab" * 16, "value", "looks like a md5"),
    ("not-hex", "md5", "zz" * 16, "value", "lowercase hex"),
    ("fullwidth", "md5", "\uff21" * 32, "value", "lowercase hex"),
    ("empty", "md5", "   ", "value", "expected 32 hex characters, got 0"),
    ("photodna-short-list", "photodna", "1,2,3", "value", "expected 144 comma-separated"),
    ("photodna-byte-too-big", "photodna", ",".join(["256"] * 144), "value[0]", "255"),
    ("photodna-negative", "photodna", ",".join(["-1"] * 144), "value[0]", "decimal"),
    ("photodna-short-hex", "photodna", "ab" * 143, "value", "base64"),
    ("photodna-junk", "photodna", "!" * 192, "value", "base64"),
]


@pytest.mark.parametrize(
    ("signal_type", "raw", "field", "message"),
    [case[1:] for case in NORMALISE_BAD],
    ids=[case[0] for case in NORMALISE_BAD],
)
def test_normalise_rejects(signal_type: str, raw: str, field: str, message: str) -> None:
    with pytest.raises(MalformedError) as info:
        normalise_signal_value(signal_type, raw)
    assert info.value.field == field
    assert message in info.value.reason


DETECT = [
    ("ab" * 16, "md5"),
    ("AB" * 16, "md5"),
    ("0x" + "ab" * 16, "md5"),
    ("ab" * 20, "sha1"),
    ("ab" * 32, None),  # sha256 or pdq: ambiguous
    (PHOTODNA_B64, "photodna"),
    (PHOTODNA_BYTES.hex(), "photodna"),
    ("ab" * 15, None),
    ("ab" * 48, None),
    ("", None),
    ("not a hash", None),
    ("zz" * 16, None),
    (PHOTODNA_B64[:-4], None),
    (" " + "ab" * 16, None),
]


@pytest.mark.parametrize(("value", "expected"), DETECT)
def test_detect_signal_type(value: str, expected: str | None) -> None:
    assert detect_signal_type(value) == expected


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SIGNAL_TYPES)), st.text(max_size=300))
def test_normalise_returns_canonical_or_raises(signal_type: str, raw: str) -> None:
    error: MalformedError | None = None
    try:
        value, changes = normalise_signal_value(signal_type, raw)
    except MalformedError as e:
        error = e
    if error is not None:
        assert error.field is not None and error.field.startswith("value")
        return
    validate_signal_value(signal_type, value)
    assert changes == [] or value != raw


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SIGNAL_TYPES)), st.data())
def test_normalise_is_idempotent_on_messy_hex(signal_type: str, data: st.DataObject) -> None:
    row = SIGNAL_TYPES[signal_type]
    raw_bytes = data.draw(st.binary(min_size=row.length, max_size=row.length))
    text = raw_bytes.hex()
    text = "".join(data.draw(st.sampled_from([c, c.upper()])) for c in text)
    prefix = data.draw(st.sampled_from(["", "0x", "0X"]))
    pad = data.draw(st.sampled_from(["", " ", "\t", "\r\n"]))
    value, _ = normalise_signal_value(signal_type, pad + prefix + text + pad)
    if row.encoding == "hex":
        assert value == raw_bytes.hex()
    else:
        assert base64.b64decode(value) == raw_bytes
    assert normalise_signal_value(signal_type, value) == (value, [])
