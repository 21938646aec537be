"""Strict primitive encodings shared by every wire format.

Layer: protocol (pure). This module performs no I/O.

Each decoder accepts exactly one spelling of a value and raises
:class:`~protocol.errors.MalformedError` naming the field otherwise. Python's
own decoders are forgiving in ways that matter here (``bytes.fromhex`` skips
whitespace, ``int()`` takes fullwidth digits and ``_``, ``base64`` ignores
junk, ``json.loads`` takes duplicate keys, ``NaN`` and lone surrogates), so
they are only called after a strict shape check.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from protocol.errors import MalformedError

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_UINT63",
    "decode_b64",
    "decode_hex",
    "dumps_canonical",
    "encode_b64",
    "json_hashes",
    "json_object",
    "json_text",
    "json_uint",
    "loads_strict",
    "parse_decimal",
]

MAX_UINT63 = 2**63 - 1
"""Largest tree size or index we accept (signed 64-bit, as SQLite stores it)."""

MAX_JSON_DEPTH = 32
"""Deepest nesting of JSON arrays and objects any of our documents needs."""

_HEX_LOWER = re.compile(r"[0-9a-f]*")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def decode_hex(text: str, *, field: str, length: int | None = None) -> bytes:
    """Decode lowercase hexadecimal with no whitespace, prefix or sign.

    Args:
        text: the hex string.
        field: name of the field, used in error messages.
        length: required length of the decoded value in bytes, if any.

    Returns:
        The decoded bytes.

    Raises:
        MalformedError: if ``text`` is not a string of lowercase hex digits of
            the required length.
    """
    if not isinstance(text, str):
        raise MalformedError(f"expected a hex string, got {type(text).__name__}", field=field)
    if length is not None and len(text) != 2 * length:
        raise MalformedError(f"expected {2 * length} hex characters, got {len(text)}", field=field)
    if not _HEX_LOWER.fullmatch(text) or len(text) % 2:
        raise MalformedError("expected lowercase hex digits [0-9a-f] only", field=field)
    return bytes.fromhex(text)


def encode_b64(data: bytes) -> str:
    """Encode bytes as standard, padded base64 (RFC 4648 section 4)."""
    return base64.b64encode(data).decode("ascii")


def decode_b64(text: str, *, field: str, length: int | None = None) -> bytes:
    """Decode standard padded base64, accepting only its canonical spelling.

    Non-canonical forms (missing padding, URL-safe alphabet, whitespace, or
    non-zero unused bits in the last character) are rejected, so every value
    has exactly one text form.

    Args:
        text: the base64 text.
        field: name of the field, used in error messages.
        length: required length of the decoded value in bytes, if any.

    Returns:
        The decoded bytes.

    Raises:
        MalformedError: if ``text`` is not canonical base64 of the required
            length.
    """
    if not isinstance(text, str):
        raise MalformedError(f"expected a base64 string, got {type(text).__name__}", field=field)
    # validate=True rejects anything outside the alphabet (whitespace, '-',
    # non-ASCII); comparing with the re-encoding rejects every other
    # non-canonical spelling (padding, non-zero unused bits). No regex needed
    # on this hot path (a page of 10,000 entries is 10,000 calls).
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedError("expected standard padded base64", field=field) from e
    if encode_b64(data) != text:
        raise MalformedError("base64 is not in canonical form", field=field)
    if length is not None and len(data) != length:
        raise MalformedError(f"expected {length} bytes, got {len(data)}", field=field)
    return data


def parse_decimal(text: str, *, field: str, max_value: int = MAX_UINT63) -> int:
    """Parse a canonical non-negative ASCII decimal integer.

    Rejects signs, leading zeros, whitespace, underscores and non-ASCII digits.

    Args:
        text: the digits.
        field: name of the field, used in error messages.
        max_value: the largest value accepted.

    Returns:
        The integer value.

    Raises:
        MalformedError: if ``text`` is not canonical decimal or is too large.
    """
    if len(text) > len(str(max_value)) or not _DECIMAL.fullmatch(text):
        raise MalformedError("expected a decimal number without sign or leading zeros", field=field)
    value = int(text)
    if value > max_value:
        raise MalformedError(f"{value} exceeds the maximum {max_value}", field=field)
    return value


def _reject_constant(name: str) -> Any:
    raise MalformedError(f"{name} is not allowed in JSON")


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedError("duplicate key in JSON object", field=key)
        obj[key] = value
    return obj


def _check_text(value: Any, path: str, depth: int) -> None:
    """Reject lone surrogates anywhere and nesting deeper than MAX_JSON_DEPTH."""
    if depth > MAX_JSON_DEPTH:
        raise MalformedError(f"JSON nested deeper than {MAX_JSON_DEPTH}", field=path or None)
    if isinstance(value, str):
        if value.isascii():  # the common case: nothing to check, and cheap to know
            return
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise MalformedError("string contains a lone surrogate", field=path or None) from e
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_text(key, path, depth + 1)
            _check_text(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, float):
        raise MalformedError("fractional numbers are not allowed", field=path or None)


def loads_strict(data: bytes | str, *, field: str | None = None) -> Any:
    """Parse JSON strictly: UTF-8, no BOM, no duplicate keys, no NaN/Infinity.

    Also rejected: lone surrogates (which ``json.loads`` accepts and which
    would crash a later encode), floats, integers of more than 20 digits and
    nesting deeper than :data:`MAX_JSON_DEPTH`.

    Args:
        data: the JSON document, as bytes (must be UTF-8) or text.
        field: name of the document for error messages.

    Returns:
        The parsed value (dicts, lists, str, int, bool, None).

    Raises:
        MalformedError: on any deviation, naming the field where known.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if raw.isascii():  # the common case: no BOM, no invalid UTF-8 possible
            text = raw.decode("ascii")
        else:
            if raw.startswith(b"\xef\xbb\xbf"):
                raise MalformedError("JSON must not start with a byte order mark", field=field)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MalformedError(f"not valid UTF-8 at byte {e.start}", field=field) from e
    else:
        text = data
        if text.startswith("\ufeff"):
            raise MalformedError("JSON must not start with a byte order mark", field=field)
    fractions: list[str] = []

    def fraction(number: str) -> float:
        fractions.append(number)
        return float(number)

    # The C decoder turns pathological nesting into RecursionError (caught
    # below); the walk of _check_text then bounds the depth we accept.
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object_pairs,
            parse_constant=_reject_constant,
            parse_int=_parse_json_int,
            parse_float=fraction,
        )
    except MalformedError as e:
        if field is not None:
            inner = f"{field}.{e.field}" if e.field else field
            raise MalformedError(e.reason, field=inner) from e
        raise
    except (json.JSONDecodeError, RecursionError) as e:
        raise MalformedError(f"invalid JSON: {e}", field=field) from e
    # The walk costs a Python call per value (as much as matching a large
    # request). ASCII text without \u escapes holds no lone surrogate, and
    # fractions and depth are known without it, so for such text it runs
    # only to name the field of a problem.
    if fractions or not (text.isascii() and "\\u" not in text and _shallow(text, value)):
        _check_text(value, field or "", 0)
    return value


def _shallow(text: str, value: Any) -> bool:
    """Whether no value of a parsed document sits deeper than MAX_JSON_DEPTH.

    The brackets of the text bound the depth from above; only a document
    with more of them is measured, one level of containers at a time (no
    call per value, unlike the walk of _check_text).
    """
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return True
    level = [value]
    for _ in range(MAX_JSON_DEPTH + 1):
        level = [c for v in level if type(v) is dict for c in v.values()] + [
            c for v in level if type(v) is list for c in v
        ]
        if not level:
            return True
    return False


def _parse_json_int(text: str) -> int:
    if len(text) > 20:
        raise MalformedError(f"integer of {len(text)} digits is too long")
    return int(text)


def dumps_canonical(value: Any) -> bytes:
    """Serialise a JSON value in our canonical form.

    Keys sorted, no insignificant whitespace, UTF-8 without escaping non-ASCII,
    and only the escapes JSON requires. For the value space our formats use
    (ASCII keys, strings, integers, lists, objects) this is the RFC 8785 (JCS)
    serialisation.

    Args:
        value: the value to serialise.

    Returns:
        The canonical UTF-8 bytes.

    Raises:
        MalformedError: if the value contains NaN, floats or lone surrogates.
    """
    try:
        text = json.dumps(
            value,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
        return text.encode("utf-8")
    except (ValueError, UnicodeEncodeError) as e:
        raise MalformedError(f"value cannot be encoded canonically: {e}") from e


# -- fields of our JSON documents (proofs, receipts, evidence) ---------------


def json_object(
    data: bytes | str | Mapping[str, Any], keys: frozenset[str] | set[str]
) -> Mapping[str, Any]:
    """A JSON object with exactly ``keys``: parsed strictly unless already parsed.

    Raises:
        MalformedError: if it is not an object, or a field is unknown or missing
            (the first in sorted order is named).
    """
    obj = data if isinstance(data, Mapping) else loads_strict(data)
    if not isinstance(obj, Mapping):
        raise MalformedError("expected a JSON object")
    for key in sorted(set(obj) - set(keys)):
        raise MalformedError("unknown field", field=key)
    for key in sorted(set(keys) - set(obj)):
        raise MalformedError("missing field", field=key)
    return obj


def json_uint(obj: Mapping[str, Any], key: str) -> int:
    """Field ``key``: an integer 0..2^63-1 (not a boolean).

    Raises:
        MalformedError: naming ``key``.
    """
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedError("expected an integer", field=key)
    if not 0 <= value <= MAX_UINT63:
        raise MalformedError(f"{value} is out of range 0..2^63-1", field=key)
    return value


def json_text(obj: Mapping[str, Any], key: str) -> str:
    """Field ``key``: a non-empty string.

    Raises:
        MalformedError: naming ``key``.
    """
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedError("expected a non-empty string", field=key)
    return value


def json_hashes(
    obj: Mapping[str, Any], key: str, *, length: int, max_count: int
) -> tuple[bytes, ...]:
    """Field ``key``: a list of at most ``max_count`` lowercase hex hashes of ``length`` bytes.

    Raises:
        MalformedError: naming ``key`` or ``key[i]``.
    """
    value = obj.get(key)
    if not isinstance(value, list):
        raise MalformedError("expected a list of hex hashes", field=key)
    if len(value) > max_count:
        raise MalformedError(f"{len(value)} hashes exceed the maximum {max_count}", field=key)
    return tuple(decode_hex(h, field=f"{key}[{i}]", length=length) for i, h in enumerate(value))
