"""Signal types: the kinds of hash an entry can carry, and how each is spelled.

Layer: protocol (pure). This module performs no I/O.

A *signal* is a hash of known material (a cryptographic digest such as
SHA-256, or a perceptual hash such as PDQ or PhotoDNA), never the material
itself. Each type has exactly one canonical text form on the wire:
lowercase hex of a fixed length, or standard padded base64 (RFC 4648
section 4) of a fixed number of bytes.

Two entry points, deliberately different:

* :func:`validate_signal_value` is strict. It is what the entry format
  (:mod:`protocol.entry`) uses, so every ledger holds one spelling per value
  and duplicate detection can compare strings.
* :func:`normalise_signal_value` is forgiving. It is for the edges (hash-list
  imports, the command line), where real lists arrive upper-cased, padded with
  spaces, prefixed with ``0x`` or, for PhotoDNA, as hex or a list of decimal
  bytes. It reports every change it made and always returns a value that
  passes the strict check.

Adding a signal type is adding a row to :data:`SIGNAL_TYPES`; the entry
encoding does not change.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from types import MappingProxyType
from typing import Literal

from protocol.encoding import decode_b64, decode_hex, encode_b64, parse_decimal
from protocol.errors import MalformedError

__all__ = [
    "LOWER_CASED_HEX",
    "SIGNAL_TYPES",
    "SignalType",
    "all_canonical",
    "canonical_value_pattern",
    "detect_signal_type",
    "each_canonical",
    "normalise_signal_value",
    "validate_signal_value",
]

Encoding = Literal["hex", "base64"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalType:
    """One row of the signal-type registry.

    Attributes:
        name: the wire name, as in ``"signal":{"type":"sha256",...}``.
        description: a one-line human description.
        encoding: ``"hex"`` (lowercase) or ``"base64"`` (standard, padded).
        length: length of the decoded value in bytes.
        requires_quality: whether entries of this type must carry a quality
            score (0-100), as perceptual hashes do. For every other type the
            quality field is forbidden.
    """

    name: str
    description: str
    encoding: Encoding
    length: int
    requires_quality: bool = False

    @property
    def text_length(self) -> int:
        """Number of characters of the canonical text form."""
        if self.encoding == "hex":
            return 2 * self.length
        return 4 * ((self.length + 2) // 3)


def _registry(*rows: SignalType) -> Mapping[str, SignalType]:
    return MappingProxyType({row.name: row for row in rows})


SIGNAL_TYPES: Mapping[str, SignalType] = _registry(
    SignalType(
        name="md5", description="MD5 digest of the file (RFC 1321)", encoding="hex", length=16
    ),
    SignalType(
        name="sha1", description="SHA-1 digest of the file (FIPS 180-4)", encoding="hex", length=20
    ),
    SignalType(
        name="sha256",
        description="SHA-256 digest of the file (FIPS 180-4)",
        encoding="hex",
        length=32,
    ),
    SignalType(
        name="pdq",
        description="PDQ perceptual image hash (256 bits) with its quality score",
        encoding="hex",
        length=32,
        requires_quality=True,
    ),
    SignalType(
        name="photodna",
        description="PhotoDNA perceptual image hash (144 bytes)",
        encoding="base64",
        length=144,
    ),
)
"""The known signal types by wire name, in display order (read-only)."""


def _unique_by(pairs: list[tuple[int, str]]) -> Mapping[int, str | None]:
    """Map a text length to the only type with it, or None when it is shared."""
    table: dict[int, str | None] = {}
    for length, name in pairs:
        table[length] = None if length in table else name
    return MappingProxyType(table)


# Shape tables for detect_signal_type, built once from the registry. A length
# shared by two types (sha256 and pdq are both 64 hex characters) maps to None:
# guessing there would silently mislabel a list.
_BY_HEX_LENGTH = _unique_by([(2 * t.length, t.name) for t in SIGNAL_TYPES.values()])
_BY_B64_LENGTH = _unique_by(
    [(t.text_length, t.name) for t in SIGNAL_TYPES.values() if t.encoding == "base64"]
)

_HEX_ANY_CASE = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)")
_B64_SHAPE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_HEX_PREFIX = ("0x", "0X")
_CANONICAL_HEX = {
    t.name: re.compile(f"[0-9a-f]{{{2 * t.length}}}")
    for t in SIGNAL_TYPES.values()
    if t.encoding == "hex"
}


def _type_of(signal_type: str, field: str) -> SignalType:
    row = SIGNAL_TYPES.get(signal_type) if isinstance(signal_type, str) else None
    if row is None:
        shown = repr(signal_type)[:40]
        known = ", ".join(SIGNAL_TYPES)
        raise MalformedError(f"unknown signal type {shown}; expected one of {known}", field=field)
    return row


def validate_signal_value(
    signal_type: str,
    value: str,
    *,
    field: str = "signal.value",
    type_field: str = "signal.type",
) -> None:
    """Check that ``value`` is the canonical spelling of a ``signal_type`` value.

    Hex types need exactly ``2 * length`` lowercase hex digits, with no
    whitespace, sign or ``0x`` prefix. Base64 types need the canonical
    standard padded base64 of exactly ``length`` bytes.

    Args:
        signal_type: a key of :data:`SIGNAL_TYPES`.
        value: the value text.
        field: name of the value field, used in error messages.
        type_field: name of the type field, used in error messages.

    Raises:
        MalformedError: naming ``type_field`` if the type is unknown, or
            ``field`` if the value is not canonical or has the wrong length.
    """
    row = _type_of(signal_type, type_field)
    if row.encoding == "hex":
        # Fast path for the common, valid case; decode_hex explains failures.
        if isinstance(value, str) and _CANONICAL_HEX[row.name].fullmatch(value):
            return
        decode_hex(value, field=field, length=row.length)
    else:
        decode_b64(value, field=field, length=row.length)


def canonical_value_pattern(signal_type: str) -> re.Pattern[str] | None:
    """The whole canonical rule of a hex ``signal_type`` as a pattern.

    Its ``fullmatch`` is truthy exactly for the values
    :func:`validate_signal_value` accepts; None for base64 or unknown types.
    Bulk paths test with it first (or build it into a larger pattern) and
    fall back to :func:`validate_signal_value`, which explains a failure.
    """
    return _CANONICAL_HEX.get(signal_type)


def all_canonical(signal_type: str, values: Sequence[str]) -> bool:
    """Whether every value is the canonical spelling of a hex ``signal_type`` (all at once).

    True exactly when :func:`validate_signal_value` accepts each of them;
    False for base64 and unknown types. For bulk imports: a handful of passes
    over the joined values in C instead of a pattern match per value. A
    False says nothing about which value; ask :func:`validate_signal_value`.
    """
    row = SIGNAL_TYPES.get(signal_type) if isinstance(signal_type, str) else None
    if row is None or row.encoding != "hex":
        return False
    if not values:
        return True
    width = 2 * row.length
    try:
        joined = "".join(values)
    except TypeError:
        return False  # not all strings
    if min(map(len, values)) != width or len(joined) != width * len(values):
        return False  # with no value shorter, none is longer either
    # fromhex refuses anything but ASCII hex digits and whitespace, and
    # skips whitespace: a digit for every character means none was skipped.
    # (str.isalnum would look up every character in the Unicode tables.)
    if not joined.isascii() or joined.lower() != joined:
        return False
    try:
        return 2 * len(bytes.fromhex(joined)) == len(joined)
    except ValueError:
        return False


def each_canonical(types: Sequence[str], values: Sequence[str]) -> bool:
    """Whether each ``values[i]`` is canonical for ``types[i]`` (checked type by type in bulk)."""
    if len(types) != len(values):
        return False
    distinct = set(types)
    if len(distinct) == 1:
        return all_canonical(types[0], values)
    return all(
        all_canonical(t, list(compress(values, map(operator.eq, types, repeat(t)))))
        for t in distinct
    )


def normalise_signal_value(signal_type: str, raw: str) -> tuple[str, list[str]]:
    """Turn a value as found in a hash list into its canonical spelling.

    Fixes, each reported once in the returned list: surrounding whitespace,
    whitespace inside the value, a ``0x`` prefix and upper-case hex. For base64
    types it also accepts the value as hex (``2 * length`` digits), as a
    comma-separated list of ``length`` decimal bytes (how PhotoDNA hashes are
    often exported), or in the URL-safe base64 alphabet.

    It does not guess across types: a 40-digit SHA-1 value given as sha256 is
    an error, never padded or truncated.

    Args:
        signal_type: a key of :data:`SIGNAL_TYPES`.
        raw: the value as found.

    Returns:
        The canonical value (it passes :func:`validate_signal_value`) and a
        list of short descriptions of what was changed, empty if nothing was.

    Raises:
        MalformedError: naming ``type`` if the type is unknown, or ``value``
            if the value cannot be made canonical.
    """
    row = _type_of(signal_type, "type")
    if not isinstance(raw, str):
        raise MalformedError(f"expected a string, got {type(raw).__name__}", field="value")
    changes: list[str] = []
    value = raw.strip()
    if value != raw:
        changes.append("removed surrounding whitespace")
    joined = "".join(value.split())
    if joined != value:
        changes.append("removed spaces")
        value = joined
    if row.encoding == "hex":
        value = _normalise_hex(value, changes)
    else:
        value = _normalise_base64(row, value, changes)
    try:
        validate_signal_value(signal_type, value, field="value", type_field="type")
    except MalformedError as e:
        other = detect_signal_type(value)
        if other is None or other == signal_type:
            raise
        raise MalformedError(f"{e.reason} (this looks like a {other} value)", field="value") from e
    return value, changes


LOWER_CASED_HEX = "lower-cased hex"
"""The change :func:`normalise_signal_value` reports for upper-case hex."""


def _normalise_hex(value: str, changes: list[str]) -> str:
    if value.startswith(_HEX_PREFIX):
        value = value[2:]
        changes.append("removed 0x prefix")
    # Only ASCII letters are folded: lower() on other scripts could turn a
    # junk character into something that looks like hex.
    if value.isascii():
        lowered = value.lower()
        if lowered != value:
            changes.append(LOWER_CASED_HEX)
            value = lowered
    return value


def _normalise_base64(row: SignalType, value: str, changes: list[str]) -> str:
    hex_match = _HEX_ANY_CASE.fullmatch(value)
    if hex_match is not None and len(hex_match.group(1)) == 2 * row.length:
        data = decode_hex(hex_match.group(1).lower(), field="value", length=row.length)
        changes.append("converted hex to base64")
        return encode_b64(data)
    if "," in value:
        parts = value.split(",")
        if len(parts) != row.length:
            raise MalformedError(
                f"expected {row.length} comma-separated byte values, got {len(parts)}",
                field="value",
            )
        data = bytes(
            parse_decimal(part, field=f"value[{i}]", max_value=255) for i, part in enumerate(parts)
        )
        changes.append("converted decimal byte list to base64")
        return encode_b64(data)
    if "-" in value or "_" in value:
        changes.append("converted URL-safe base64")
        value = value.replace("-", "+").replace("_", "/")
    return value


def detect_signal_type(value: str) -> str | None:
    """Guess the signal type of a value from its shape alone.

    Meant for header-less hash lists. Hex of any case, optionally ``0x``
    prefixed, is matched by length (32 digits: md5, 40: sha1; 64 is ``None``
    because sha256 and pdq share it). Base64 is matched by its length (192
    characters: photodna), and so is hex of a base64 type's byte length (288
    digits: photodna). The value is not otherwise validated.

    Args:
        value: the value text, already stripped of surrounding whitespace.

    Returns:
        The type name, or ``None`` if the shape is unknown or ambiguous.
    """
    hex_match = _HEX_ANY_CASE.fullmatch(value)
    if hex_match is not None:
        found = _BY_HEX_LENGTH.get(len(hex_match.group(1)))
        if found is not None:
            return found
    if _B64_SHAPE.fullmatch(value):
        return _BY_B64_LENGTH.get(len(value))
    return None
