"""Ledger entries and their canonical encoding (the leaf data of the log).

Layer: protocol (pure). This module performs no I/O.

Every leaf of a hashmesh log is one entry, encoded as canonical JSON (keys
sorted, no insignificant whitespace, UTF-8, minimal escapes; see
:func:`protocol.encoding.dumps_canonical`). The leaf hash is the RFC 6962
leaf hash of exactly these bytes (RFC 9162 section 2.1.1), so the encoding
must be unique: :func:`parse_entry` accepts only bytes that it would itself
produce. Four kinds exist::

    {"kind":"add","labels":["iwf:category-a"],"note":"...","salt":"<32 hex>",
     "signal":{"quality":90,"type":"pdq","value":"<64 hex>"},"v":2}
    {"index":12,"kind":"retract","reason":"...","salt":"<32 hex>","v":2}
    {"index":7,"kind":"opinion","leaf_hash":"<64 hex>","note":"...",
     "origin":"hotline-b.example/hashmesh","salt":"<32 hex>","v":2,"verdict":"dispute"}
    {"key":"<origin>+<key id>+<base64 key>","kind":"rotate","reason":"...",
     "salt":"<32 hex>","v":2}

(shown wrapped; the real encoding has no whitespace). Version 2 entries
carry a ``salt``: 16 bytes from the writer's CSPRNG, one per entry, as 32
lowercase hex digits. It makes the leaf hash a hiding commitment: nobody
who knows a listed value and every label can recompute the leaf hash
without the entry's bytes. Version 1 entries (no salt, ``"v":1``) still
parse and verify (test vectors, older logs) but are never written: entries
built here without a salt are drafts, and the writer salts every entry it
appends (:func:`salt_entries`). The salt is not part of an entry's
identity (duplicate detection) nor of matching. ``note`` is optional;
``signal.quality`` is required for types whose registry row says
``requires_quality`` (PDQ) and forbidden for every other type, which also
catches a SHA-256 value submitted as PDQ. A retraction names an earlier add by
its 0-based ``index`` in the same log; whether that index exists is the
ledger's business, not this module's. An opinion (verdict ``confirm``,
``dispute`` or ``false-positive``) names an entry of any log by origin, index
and leaf hash. A rotation names the log's next signing key.

Limits are module constants: :data:`MAX_ENTRY_BYTES`, :data:`MAX_LABELS`,
:data:`LABEL_PATTERN`, :data:`MAX_NOTE_CHARS`, :data:`MAX_REASON_CHARS`,
:data:`MIN_QUALITY` and :data:`MAX_QUALITY`. The recommended label
vocabulary is documented in ``docs/labels.md`` and deliberately not enforced
here beyond the grammar.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, overload

from protocol import PROTOCOL_VERSION, READ_VERSIONS
from protocol.encoding import MAX_UINT63, decode_hex, dumps_canonical, loads_strict
from protocol.errors import MalformedError, UnsupportedVersionError
from protocol.keys import SIG_ED25519, NoteVerifier, check_key_name
from protocol.signal import (
    SIGNAL_TYPES,
    all_canonical,
    canonical_value_pattern,
    validate_signal_value,
)

__all__ = [
    "LABEL_PATTERN",
    "MAX_ENTRY_BYTES",
    "MAX_LABELS",
    "MAX_NOTE_CHARS",
    "MAX_QUALITY",
    "MAX_REASON_CHARS",
    "MIN_QUALITY",
    "OPINION_VERDICTS",
    "SALT_BYTES",
    "AddEntry",
    "AddFamily",
    "AddRun",
    "Entry",
    "OpinionEntry",
    "RetractEntry",
    "RotateEntry",
    "parse_add_run",
    "parse_entries",
    "parse_entry",
    "parse_entry_fast",
    "salt_entries",
    "salt_values",
]

SALT_BYTES = 16
"""Bytes of random salt in a version 2 entry (written as 32 lowercase hex digits)."""

MAX_ENTRY_BYTES = 4096
"""Largest encoded entry, in bytes; checked before any parsing."""

MAX_LABELS = 32
"""Most labels one add entry may carry."""

LABEL_PATTERN = r"[a-z0-9][a-z0-9._-]{0,31}:[a-z0-9][a-z0-9._:/-]{0,62}"
"""Grammar of a label, ``namespace:value`` in lowercase ASCII (matched whole).

The namespace is 1-32 characters, the value 1-63, so a label is at most 96
characters. The value may itself contain ``:`` and ``/`` (``src:feed/2024``).
"""

MAX_NOTE_CHARS = 280
"""Longest note, in characters (code points). An empty note is spelled as absent."""

MAX_REASON_CHARS = 1024
"""Longest retraction reason, in characters (code points); it may not be empty."""

MIN_QUALITY = 0
"""Smallest quality score (PDQ's own scale is 0-100)."""

MAX_QUALITY = 100
"""Largest quality score."""

_LABEL = re.compile(LABEL_PATTERN)
# Category Cc (C0, DEL, C1) and surrogate code points. Lone surrogates cannot
# be encoded as UTF-8; control characters break one-line displays and logs.
_FORBIDDEN_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

_ADD_KEYS = frozenset({"kind", "labels", "note", "salt", "signal", "v"})
_ADD_REQUIRED = ("kind", "labels", "signal", "v")
_SIGNAL_KEYS = frozenset({"quality", "type", "value"})
_SIGNAL_REQUIRED = ("type", "value")
_RETRACT_KEYS = frozenset({"index", "kind", "reason", "salt", "v"})
_RETRACT_REQUIRED = ("index", "kind", "reason", "v")
_OPINION_KEYS = frozenset({"index", "kind", "leaf_hash", "note", "origin", "salt", "v", "verdict"})
_OPINION_REQUIRED = ("index", "kind", "leaf_hash", "origin", "v", "verdict")
_ROTATE_KEYS = frozenset({"key", "kind", "reason", "salt", "v"})
_ROTATE_REQUIRED = ("key", "kind", "reason", "v")

OPINION_VERDICTS = ("confirm", "dispute", "false-positive")
"""What an opinion entry may say about another entry."""

# Bytes of an encoded add entry other than the signal value, labels and note,
# with room to spare; only entries whose bound exceeds MAX_ENTRY_BYTES are
# actually encoded to measure them. UTF-8 takes at most 4 bytes per code point
# and the escapes dumps_canonical may emit here (\" and \\) take 2.
# A salt field takes 42 more.
_ADD_OVERHEAD = 176
_RETRACT_OVERHEAD = 112
_OPINION_OVERHEAD = 304
_ROTATE_OVERHEAD = 176


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_index(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedError(f"expected an integer, got {_json_type(value)}", field=field)
    if not 0 <= value <= MAX_UINT63:
        raise MalformedError(f"expected an integer 0-{MAX_UINT63}, got {value}", field=field)


def _check_salt(salt: object) -> None:
    if salt is None:
        return
    if not isinstance(salt, str):
        raise MalformedError(f"expected a string, got {_json_type(salt)}", field="salt")
    decode_hex(salt, field="salt", length=SALT_BYTES)


def _version(salt: str | None) -> int:
    return 1 if salt is None else 2


def _check_text(value: object, field: str, max_chars: int) -> None:
    if not isinstance(value, str):
        raise MalformedError(f"expected a string, got {_json_type(value)}", field=field)
    if not value:
        raise MalformedError("must not be empty", field=field)
    if len(value) > max_chars:
        raise MalformedError(
            f"expected at most {max_chars} characters, got {len(value)}", field=field
        )
    bad = _FORBIDDEN_TEXT.search(value)
    if bad is not None:
        what = "lone surrogate" if bad.group() >= "\ud800" else "control character"
        raise MalformedError(
            f"{what} U+{ord(bad.group()):04X} at position {bad.start()}", field=field
        )


def _check_labels(labels: object) -> None:
    if not isinstance(labels, tuple):
        raise MalformedError(
            f"expected a tuple of labels, got {type(labels).__name__}", field="labels"
        )
    if len(labels) > MAX_LABELS:
        raise MalformedError(
            f"expected at most {MAX_LABELS} labels, got {len(labels)}", field="labels"
        )
    previous = ""
    for i, label in enumerate(labels):
        field = f"labels[{i}]"
        if not isinstance(label, str):
            raise MalformedError(f"expected a string, got {_json_type(label)}", field=field)
        if not _LABEL.fullmatch(label):
            shown = repr(label)[:110]
            raise MalformedError(
                f"{shown} is not a label: expected lowercase namespace:value "
                "(namespace 1-32 and value 1-63 of [a-z0-9._-], value may also hold : and /)",
                field=field,
            )
        if i and label <= previous:
            problem = "duplicate label" if label == previous else "labels are not sorted"
            raise MalformedError(f"{problem} ({previous!r}, {label!r})", field=field)
        previous = label


def _check_quality(row_requires: bool, signal_type: str, quality: object) -> None:
    field = "signal.quality"
    if quality is None:
        if row_requires:
            raise MalformedError(
                f"quality ({MIN_QUALITY}-{MAX_QUALITY}) is required for {signal_type} signals",
                field=field,
            )
        return
    if not row_requires:
        raise MalformedError(
            f"quality is not allowed for {signal_type} signals (only for "
            + ", ".join(n for n, t in SIGNAL_TYPES.items() if t.requires_quality)
            + ")",
            field=field,
        )
    if isinstance(quality, bool) or not isinstance(quality, int):
        raise MalformedError(
            f"expected an integer {MIN_QUALITY}-{MAX_QUALITY}, got {_json_type(quality)}",
            field=field,
        )
    if not MIN_QUALITY <= quality <= MAX_QUALITY:
        raise MalformedError(
            f"expected an integer {MIN_QUALITY}-{MAX_QUALITY}, got {quality}", field=field
        )


def _check_encoded_size(entry: Entry, bound: int) -> None:
    if bound <= MAX_ENTRY_BYTES:
        return
    size = len(entry.to_bytes())
    if size > MAX_ENTRY_BYTES:
        raise MalformedError(f"entry encodes to {size} bytes, more than {MAX_ENTRY_BYTES}")


def _sorted_labels(labels: Iterable[str]) -> tuple[str, ...]:
    if isinstance(labels, str | bytes):
        raise MalformedError("expected a list of labels, got a single string", field="labels")
    items = list(labels)
    for i, label in enumerate(items):
        if not isinstance(label, str):
            raise MalformedError(
                f"expected a string, got {_json_type(label)}", field=f"labels[{i}]"
            )
    return tuple(sorted(set(items)))


def _check_add_fields(
    signal_type: str, labels: tuple[str, ...], note: str | None, quality: int | None
) -> int:
    """Check every add field but the value; the encoded-size bound without it."""
    row = SIGNAL_TYPES.get(signal_type) if isinstance(signal_type, str) else None
    if row is None:
        validate_signal_value(signal_type, "")  # raises, naming the unknown type
        raise AssertionError("unreachable")
    _check_quality(row.requires_quality, signal_type, quality)
    _check_labels(labels)
    bound = _ADD_OVERHEAD + sum(len(x) + 3 for x in labels)
    if note is not None:
        _check_text(note, "note", MAX_NOTE_CHARS)
        bound += 4 * len(note)
    return bound


@dataclass(frozen=True, slots=True, kw_only=True)
class AddEntry:
    """An entry that lists one signal (a hash) in the log.

    Use :meth:`create` to build one from unsorted labels; the constructor
    itself is strict and accepts only the canonical form.

    Attributes:
        signal_type: a key of :data:`protocol.signal.SIGNAL_TYPES`.
        value: the canonical value text (lowercase hex or padded base64).
        labels: sorted, unique labels matching :data:`LABEL_PATTERN`.
        note: free text of 1 to :data:`MAX_NOTE_CHARS` characters, or None.
        quality: quality score, required exactly for types that need it.
        salt: the salt (:data:`SALT_BYTES` bytes as lowercase hex) of a
            version 2 entry, or None for a version 1 entry or a draft.
    """

    signal_type: str
    value: str
    labels: tuple[str, ...]
    note: str | None = None
    quality: int | None = None
    salt: str | None = None

    def __post_init__(self) -> None:
        validate_signal_value(self.signal_type, self.value)
        bound = _check_add_fields(self.signal_type, self.labels, self.note, self.quality)
        _check_salt(self.salt)
        _check_encoded_size(self, bound + len(self.value))

    @classmethod
    def create(
        cls,
        *,
        signal_type: str,
        value: str,
        labels: Iterable[str] = (),
        note: str | None = None,
        quality: int | None = None,
        salt: str | None = None,
    ) -> AddEntry:
        """Build an add entry, sorting and de-duplicating the labels.

        Labels are not lower-cased or stripped here; normalising user input
        is the caller's job, so that it can report what it changed.

        Args:
            signal_type: a key of :data:`protocol.signal.SIGNAL_TYPES`.
            value: the canonical value (see
                :func:`protocol.signal.normalise_signal_value`).
            labels: labels in any order, possibly repeated.
            note: optional free text.
            quality: quality score, for types that require one.
            salt: the salt of a version 2 entry; None makes a draft, which
                the writer salts.

        Returns:
            The validated entry.

        Raises:
            MalformedError: if any field is invalid, naming it.
        """
        return cls(
            signal_type=signal_type,
            value=value,
            labels=_sorted_labels(labels),
            note=note,
            quality=quality,
            salt=salt,
        )

    @classmethod
    def maker(
        cls,
        *,
        signal_type: str,
        labels: Iterable[str] = (),
        note: str | None = None,
        quality: int | None = None,
    ) -> Callable[[str], AddEntry]:
        """A function making add entries that differ only in their value.

        For bulk imports: everything but the value is validated once, here;
        each call validates its value (and the encoded size) exactly as the
        constructor does, so ``maker(...)(v) == AddEntry.create(..., value=v)``
        and both raise the same errors.

        Raises:
            MalformedError: if a field other than the value is invalid.
        """
        sorted_labels = _sorted_labels(labels)
        base = _check_add_fields(signal_type, sorted_labels, note, quality)
        build = _unchecked_add_builder(signal_type, sorted_labels, note, quality)
        pattern = canonical_value_pattern(signal_type)
        canonical = None if pattern is None else pattern.fullmatch

        def make(value: str) -> AddEntry:
            if canonical is None or not isinstance(value, str) or not canonical(value):
                validate_signal_value(signal_type, value)
            entry = build(value, None)
            _check_encoded_size(entry, base + len(value))
            return entry

        return make

    @classmethod
    def parser(
        cls,
        *,
        signal_type: str,
        labels: Iterable[str] = (),
        quality: int | None = None,
        version: int = PROTOCOL_VERSION,
    ) -> Callable[[bytes], AddEntry | None]:
        """A function recognising the encodings of note-less adds with these fields.

        For bulk parsing of log entries (sync, audits): the returned function
        gives the entry when ``data`` is exactly the canonical encoding of a
        note-less add with these fields and any valid value, and None for
        anything else, which the caller then parses in full with
        :func:`parse_entry` (which names what is wrong). So
        ``parser(...)(data)`` is either None or equal to ``parse_entry(data)``.
        ``version`` is the entry version recognised (version 2 entries with
        any salt).

        Raises:
            MalformedError: if a field is invalid.
        """
        sorted_labels = _sorted_labels(labels)
        _check_add_fields(signal_type, sorted_labels, None, quality)
        if version not in READ_VERSIONS:
            raise MalformedError(f"unknown entry version {version}", field="v")
        row = SIGNAL_TYPES[signal_type]
        frame = cls.encoding_frame(signal_type, sorted_labels, quality, version=version)
        holes = row.text_length + (0 if version == 1 else 2 * SALT_BYTES)
        if sum(map(len, frame)) + holes > MAX_ENTRY_BYTES:
            return lambda data: None
        # Hex values: the signal type's canonical pattern is the whole rule.
        # Base64 values: the class only finds the value; validate_signal_value
        # decides.
        canonical = canonical_value_pattern(signal_type)
        checked = canonical is not None
        value = (
            canonical.pattern.encode("ascii")
            if canonical is not None
            else rb"[A-Za-z0-9+/=]{%d}" % row.text_length
        )
        build = _unchecked_add_builder(signal_type, sorted_labels, None, quality)
        if version == 1:
            before, after = frame
            match = re.compile(
                re.escape(before) + rb"(" + value + rb")" + re.escape(after)
            ).fullmatch

            def parse(data: bytes) -> AddEntry | None:
                m = match(data)
                if m is None:
                    return None
                value = m.group(1).decode("ascii")
                if not checked:
                    try:
                        validate_signal_value(signal_type, value)
                    except MalformedError:
                        return None
                return build(value, None)

            return parse

        head, middle, tail = frame
        match_salted = re.compile(
            re.escape(head)
            + rb"([0-9a-f]{%d})" % (2 * SALT_BYTES)
            + re.escape(middle)
            + rb"("
            + value
            + rb")"
            + re.escape(tail)
        ).fullmatch

        def parse_salted(data: bytes) -> AddEntry | None:
            m = match_salted(data)
            if m is None:
                return None
            salt, value = m.group(1, 2)
            text = value.decode("ascii")
            if not checked:
                try:
                    validate_signal_value(signal_type, text)
                except MalformedError:
                    return None
            return build(text, salt.decode("ascii"))

        return parse_salted

    @property
    def kind(self) -> Literal["add"]:
        """The entry kind, ``"add"``."""
        return "add"

    @property
    def identity(self) -> tuple[str, str]:
        """``(signal_type, value)``: what duplicate detection compares (never the salt)."""
        return (self.signal_type, self.value)

    @property
    def version(self) -> int:
        """The entry version: 2 with a salt, 1 without."""
        return _version(self.salt)

    def salted(self, salt: str) -> AddEntry:
        """This entry as version 2 with ``salt`` (validated), whatever its salt was."""
        _check_salt(salt)
        return _unchecked_add_builder(self.signal_type, self.labels, self.note, self.quality)(
            self.value, salt
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The entry as a JSON object (dicts, lists, str, int)."""
        signal: dict[str, Any] = {"type": self.signal_type, "value": self.value}
        if self.quality is not None:
            signal["quality"] = self.quality
        obj: dict[str, Any] = {
            "kind": "add",
            "labels": list(self.labels),
            "signal": signal,
            "v": _version(self.salt),
        }
        if self.note is not None:
            obj["note"] = self.note
        if self.salt is not None:
            obj["salt"] = self.salt
        return obj

    @staticmethod
    def encoding_frame(
        signal_type: str,
        labels: tuple[str, ...],
        quality: int | None,
        *,
        version: int = PROTOCOL_VERSION,
    ) -> tuple[bytes, ...]:
        """What surrounds the salt and the value in the encoding of a note-less add.

        For an add without a note whose fields are these (``labels`` sorted,
        as the entry holds them), ``to_bytes()`` is ``head + salt + middle +
        value + tail`` for ``(head, middle, tail)`` of version 2, and
        ``before + value + after`` for ``(before, after)`` of version 1.
        Bulk parsers use it to check a whole family of encodings once.
        """
        if version == 1:
            return tuple(p.encode("ascii") for p in _add_frame(signal_type, labels, quality))
        return tuple(p.encode("ascii") for p in _salted_add_frame(signal_type, labels, quality))

    def to_bytes(self) -> bytes:
        """The canonical encoding: the leaf data of the Merkle tree."""
        if self.note is not None:
            return dumps_canonical(self.to_json_obj())
        # Without a note every string is validated ASCII that JSON needs no
        # escape for (type names, hex salt, hex/base64 values, label
        # grammar), so the canonical form is the salt and the value between
        # strings that depend only on the other fields: this is the import
        # and sync hot path. tests/protocol/test_entry.py checks it equals
        # dumps_canonical.
        if self.salt is None:
            before, after = _add_frame(self.signal_type, self.labels, self.quality)
            return (before + self.value + after).encode("ascii")
        head, middle, tail = _salted_add_frame(self.signal_type, self.labels, self.quality)
        return (head + self.salt + middle + self.value + tail).encode("ascii")


@dataclass(frozen=True, slots=True)
class AddFamily:
    """What the note-less adds of one list share: every field but the value and the salt.

    For bulk imports of hex signal types. The fields are validated once,
    here; a batch's values are checked together by :meth:`canonical` and
    encoded with fresh salts by :func:`salt_values`, without an
    :class:`AddEntry` per value. ``family.entry(v)`` equals
    ``AddEntry.create(signal_type=..., labels=..., quality=..., value=v)``.
    Make one with :meth:`create` (which sorts the labels).

    Attributes:
        signal_type: a hex type of :data:`protocol.signal.SIGNAL_TYPES`.
        labels: sorted, unique labels matching :data:`LABEL_PATTERN`.
        quality: quality score, required exactly for types that need it.
    """

    signal_type: str
    labels: tuple[str, ...]
    quality: int | None = None

    def __post_init__(self) -> None:
        bound = _check_add_fields(self.signal_type, self.labels, None, self.quality)
        row = SIGNAL_TYPES[self.signal_type]
        if row.encoding != "hex":
            raise MalformedError(
                f"a family of adds holds hex values; {self.signal_type} is {row.encoding}",
                field="signal.type",
            )
        # 32 labels of 96 characters and the longest hex value stay far below
        # the limit: no value of the family can make an entry too large.
        assert bound + 2 * row.length + 2 * SALT_BYTES <= MAX_ENTRY_BYTES

    @classmethod
    def create(
        cls, *, signal_type: str, labels: Iterable[str] = (), quality: int | None = None
    ) -> AddFamily:
        """A family, sorting and de-duplicating the labels.

        Raises:
            MalformedError: if a field is invalid (naming it), or the type's
                values are not hex.
        """
        return cls(signal_type, _sorted_labels(labels), quality)

    def entry(self, value: str) -> AddEntry:
        """The draft add of ``value`` in this family.

        Raises:
            MalformedError: (field ``value``) if the value is not canonical.
        """
        validate_signal_value(self.signal_type, value)
        return _unchecked_add_builder(self.signal_type, self.labels, None, self.quality)(
            value, None
        )

    def canonical(self, values: Sequence[str]) -> bool:
        """Whether every value is the canonical spelling of one of this type (all at once).

        True exactly when :meth:`entry` accepts each of them
        (:func:`protocol.signal.all_canonical`). A False says nothing about
        which; ask :meth:`entry`.
        """
        return all_canonical(self.signal_type, values)


def _unchecked_add_builder(
    signal_type: str, labels: tuple[str, ...], note: str | None, quality: int | None
) -> Callable[[str, str | None], AddEntry]:
    """A builder of adds with these fields around a value and a salt, without checks.

    For the caller that validated the fields and validates each value and
    salt: the frozen constructor's checks, skipped.
    """
    new = object.__new__
    setattr_ = object.__setattr__

    def build(value: str, salt: str | None) -> AddEntry:
        entry = new(AddEntry)
        setattr_(entry, "signal_type", signal_type)
        setattr_(entry, "value", value)
        setattr_(entry, "labels", labels)
        setattr_(entry, "note", note)
        setattr_(entry, "quality", quality)
        setattr_(entry, "salt", salt)
        return entry

    return build


# (signal type, labels, quality) -> the encoding of a note-less add around
# its value (version 1) or its salt and value (version 2). Entries of one
# list share a few such combinations; bounded so a log with many distinct
# label sets cannot grow them without limit.
_ADD_FRAMES: dict[tuple[str, tuple[str, ...], int | None], tuple[str, str]] = {}
_SALTED_ADD_FRAMES: dict[tuple[str, tuple[str, ...], int | None], tuple[str, str, str]] = {}
_MAX_ADD_FRAMES = 1024


def _add_frame(signal_type: str, labels: tuple[str, ...], quality: int | None) -> tuple[str, str]:
    """What precedes and follows the value in a note-less version 1 add's encoding."""
    key = (signal_type, labels, quality)
    frame = _ADD_FRAMES.get(key)
    if frame is None:
        quoted = ",".join(f'"{label}"' for label in labels)
        quality_field = "" if quality is None else f'"quality":{quality},'
        frame = (
            f'{{"kind":"add","labels":[{quoted}],"signal":{{{quality_field}"type":'
            f'"{signal_type}","value":"',
            '"},"v":1}',
        )
        if len(_ADD_FRAMES) >= _MAX_ADD_FRAMES:
            _ADD_FRAMES.clear()
        _ADD_FRAMES[key] = frame
    return frame


def _salted_add_frame(
    signal_type: str, labels: tuple[str, ...], quality: int | None
) -> tuple[str, str, str]:
    """What surrounds the salt and the value in a note-less version 2 add's encoding."""
    key = (signal_type, labels, quality)
    frame = _SALTED_ADD_FRAMES.get(key)
    if frame is None:
        quoted = ",".join(f'"{label}"' for label in labels)
        quality_field = "" if quality is None else f'"quality":{quality},'
        frame = (
            f'{{"kind":"add","labels":[{quoted}],"salt":"',
            f'","signal":{{{quality_field}"type":"{signal_type}","value":"',
            '"},"v":2}',
        )
        if len(_SALTED_ADD_FRAMES) >= _MAX_ADD_FRAMES:
            _SALTED_ADD_FRAMES.clear()
        _SALTED_ADD_FRAMES[key] = frame
    return frame


@dataclass(frozen=True, slots=True, kw_only=True)
class RetractEntry:
    """An entry that withdraws an earlier add entry of the same log.

    Attributes:
        index: 0-based index of the add entry being retracted.
        reason: why, 1 to :data:`MAX_REASON_CHARS` characters.
        salt: the salt (:data:`SALT_BYTES` bytes as lowercase hex) of a
            version 2 entry, or None for a version 1 entry or a draft.
    """

    index: int
    reason: str
    salt: str | None = None

    def __post_init__(self) -> None:
        _check_index(self.index, "index")
        _check_text(self.reason, "reason", MAX_REASON_CHARS)
        _check_salt(self.salt)
        _check_encoded_size(self, _RETRACT_OVERHEAD + 4 * len(self.reason))

    @property
    def kind(self) -> Literal["retract"]:
        """The entry kind, ``"retract"``."""
        return "retract"

    @property
    def version(self) -> int:
        """The entry version: 2 with a salt, 1 without."""
        return _version(self.salt)

    def salted(self, salt: str) -> RetractEntry:
        """This entry as version 2 with ``salt`` (validated), whatever its salt was."""
        return replace(self, salt=salt)

    def to_json_obj(self) -> dict[str, Any]:
        """The entry as a JSON object (dicts, lists, str, int)."""
        obj: dict[str, Any] = {
            "index": self.index,
            "kind": "retract",
            "reason": self.reason,
            "v": _version(self.salt),
        }
        if self.salt is not None:
            obj["salt"] = self.salt
        return obj

    def to_bytes(self) -> bytes:
        """The canonical encoding: the leaf data of the Merkle tree."""
        return dumps_canonical(self.to_json_obj())


@dataclass(frozen=True, slots=True, kw_only=True)
class OpinionEntry:
    """An entry stating the author's view of an entry of some log (its own or another's).

    The target is named by origin and index and bound to its exact bytes by
    its RFC 6962 leaf hash, so an opinion cannot be moved to another entry
    by a log that rewrote its history.

    Attributes:
        origin: the origin of the log holding the target entry.
        index: the target's 0-based index in that log.
        leaf_hash: the target's leaf hash (32 bytes).
        verdict: one of :data:`OPINION_VERDICTS`.
        note: free text of 1 to :data:`MAX_NOTE_CHARS` characters, or None.
        salt: the salt (:data:`SALT_BYTES` bytes as lowercase hex) of a
            version 2 entry, or None for a version 1 entry or a draft.
    """

    origin: str
    index: int
    leaf_hash: bytes
    verdict: str
    note: str | None = None
    salt: str | None = None

    def __post_init__(self) -> None:
        check_key_name(self.origin, field="origin")
        _check_index(self.index, "index")
        if not isinstance(self.leaf_hash, bytes) or len(self.leaf_hash) != 32:
            raise MalformedError("expected 32 bytes", field="leaf_hash")
        if self.verdict not in OPINION_VERDICTS:
            shown = (
                repr(self.verdict)[:40]
                if isinstance(self.verdict, str)
                else _json_type(self.verdict)
            )
            raise MalformedError(
                f"unknown verdict {shown}; expected one of {', '.join(OPINION_VERDICTS)}",
                field="verdict",
            )
        bound = _OPINION_OVERHEAD + 4 * len(self.origin)
        if self.note is not None:
            _check_text(self.note, "note", MAX_NOTE_CHARS)
            bound += 4 * len(self.note)
        _check_salt(self.salt)
        _check_encoded_size(self, bound)

    @property
    def kind(self) -> Literal["opinion"]:
        """The entry kind, ``"opinion"``."""
        return "opinion"

    @property
    def version(self) -> int:
        """The entry version: 2 with a salt, 1 without."""
        return _version(self.salt)

    def salted(self, salt: str) -> OpinionEntry:
        """This entry as version 2 with ``salt`` (validated), whatever its salt was."""
        return replace(self, salt=salt)

    def to_json_obj(self) -> dict[str, Any]:
        """The entry as a JSON object (dicts, lists, str, int)."""
        obj: dict[str, Any] = {
            "index": self.index,
            "kind": "opinion",
            "leaf_hash": self.leaf_hash.hex(),
            "origin": self.origin,
            "v": _version(self.salt),
            "verdict": self.verdict,
        }
        if self.note is not None:
            obj["note"] = self.note
        if self.salt is not None:
            obj["salt"] = self.salt
        return obj

    def to_bytes(self) -> bytes:
        """The canonical encoding: the leaf data of the Merkle tree."""
        return dumps_canonical(self.to_json_obj())


@dataclass(frozen=True, slots=True, kw_only=True)
class RotateEntry:
    """An entry that hands the log's signing role to a new key.

    The new key signs the log's checkpoints from the first checkpoint that
    includes this entry *and* was signed by the old key onwards; see
    ``protocol.rotation``. That the key's name is the log's origin is checked
    there, since an entry does not know its log.

    Attributes:
        key: the new verifier key, in the C2SP note verifier key text form,
            an Ed25519 (0x01) key.
        reason: why, 1 to :data:`MAX_REASON_CHARS` characters.
        salt: the salt (:data:`SALT_BYTES` bytes as lowercase hex) of a
            version 2 entry, or None for a version 1 entry or a draft.
    """

    key: str
    reason: str
    salt: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str):
            raise MalformedError(f"expected a string, got {_json_type(self.key)}", field="key")
        try:
            verifier = NoteVerifier.from_text(self.key)
        except MalformedError as e:
            raise MalformedError(e.reason, field="key") from e
        if verifier.sig_type != SIG_ED25519:
            raise MalformedError(
                "a log signs its checkpoints with an Ed25519 (0x01) key", field="key"
            )
        _check_text(self.reason, "reason", MAX_REASON_CHARS)
        _check_salt(self.salt)
        _check_encoded_size(self, _ROTATE_OVERHEAD + len(self.key) + 4 * len(self.reason))

    @property
    def kind(self) -> Literal["rotate"]:
        """The entry kind, ``"rotate"``."""
        return "rotate"

    @property
    def version(self) -> int:
        """The entry version: 2 with a salt, 1 without."""
        return _version(self.salt)

    def salted(self, salt: str) -> RotateEntry:
        """This entry as version 2 with ``salt`` (validated), whatever its salt was."""
        return replace(self, salt=salt)

    @property
    def verifier(self) -> NoteVerifier:
        """The new key, parsed."""
        return NoteVerifier.from_text(self.key)

    def to_json_obj(self) -> dict[str, Any]:
        """The entry as a JSON object (dicts, lists, str, int)."""
        obj: dict[str, Any] = {
            "key": self.key,
            "kind": "rotate",
            "reason": self.reason,
            "v": _version(self.salt),
        }
        if self.salt is not None:
            obj["salt"] = self.salt
        return obj

    def to_bytes(self) -> bytes:
        """The canonical encoding: the leaf data of the Merkle tree."""
        return dumps_canonical(self.to_json_obj())


Entry = AddEntry | RetractEntry | OpinionEntry | RotateEntry
"""Any ledger entry."""


def salt_entries(entries: Sequence[Entry], random: bytes) -> list[bytes]:
    """The version 2 encodings of the entries, each with its own salt cut from ``random``.

    The writer's one way to salt: it draws ``SALT_BYTES * len(entries)``
    bytes from the OS CSPRNG in one call (this module does no I/O), and
    every entry, draft or not, is written with a fresh salt, so no salt is
    ever reused or chosen by whoever built the entry. Entry ``i`` gets the
    salt ``random[16 * i : 16 * (i + 1)]``: the result is
    ``[e.salted(salt_i).to_bytes() for ...]``, without building the salted
    entries (the bulk import's hot path; tests/protocol/test_entry.py
    checks the equality).

    Raises:
        ValueError: if ``random`` is not exactly ``SALT_BYTES`` bytes per entry.
    """
    if len(random) != SALT_BYTES * len(entries):
        raise ValueError(f"expected {SALT_BYTES * len(entries)} random bytes, got {len(random)}")
    text = random.hex()
    width = 2 * SALT_BYTES
    out: list[bytes] = []
    append = out.append
    # A bulk import is one family (type, labels, quality) after another: the
    # frame is looked up only when the family changes, and one f-string
    # builds each encoding (0.65 -> 0.44 us per entry, benchmarks.md).
    family: tuple[str, tuple[str, ...], int | None] | None = None
    head = middle = tail = ""
    start = 0
    for entry in entries:
        salt = text[start : start + width]
        start += width
        if type(entry) is AddEntry and entry.note is None:
            # As AddEntry.to_bytes: validated ASCII fields, a hex salt.
            key = (entry.signal_type, entry.labels, entry.quality)
            if key != family:
                head, middle, tail = _salted_add_frame(*key)
                family = key
            append(f"{head}{salt}{middle}{entry.value}{tail}".encode("ascii"))
        else:
            append(entry.salted(salt).to_bytes())
    return out


def salt_values(families: Sequence[AddFamily], values: Sequence[str], random: bytes) -> list[bytes]:
    """The version 2 encodings of the adds ``families[i].entry(values[i])``, salted from ``random``.

    As :func:`salt_entries` (entry ``i`` gets the salt ``random[16 * i : 16 *
    (i + 1)]``, and the result equals ``[f.entry(v).salted(salt_i).to_bytes()
    for ...]``), for values the caller has checked with
    :meth:`AddFamily.canonical`: no entry is built.

    Raises:
        ValueError: if the lengths disagree, or ``random`` is not exactly
            ``SALT_BYTES`` bytes per value.
    """
    if len(families) != len(values) or len(random) != SALT_BYTES * len(values):
        raise ValueError(
            f"{len(values)} values need as many families and {SALT_BYTES * len(values)} "
            f"random bytes, got {len(families)} and {len(random)}"
        )
    text = random.hex()
    width = 2 * SALT_BYTES
    out: list[bytes] = []
    append = out.append
    current: AddFamily | None = None
    head = middle = tail = ""
    # Batches mix a few families (a CSV's categories, VICS's MD5 and SHA1):
    # each one's frame is found by identity, not by hashing its fields.
    frames: dict[int, tuple[str, str, str]] = {}
    start = 0
    for family, value in zip(families, values, strict=True):
        if family is not current:
            frame = frames.get(id(family))
            if frame is None:
                frame = frames[id(family)] = _salted_add_frame(
                    family.signal_type, family.labels, family.quality
                )
            head, middle, tail = frame
            current = family
        append(f"{head}{text[start : start + width]}{middle}{value}{tail}".encode("ascii"))
        start += width
    return out


def _check_keys(
    obj: dict[str, Any], allowed: frozenset[str], required: tuple[str, ...], prefix: str
) -> None:
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        raise MalformedError("unknown field", field=prefix + unknown[0])
    for key in required:
        if key not in obj:
            raise MalformedError("missing required field", field=prefix + key)


def _expect_str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise MalformedError(f"expected a string, got {_json_type(value)}", field=field)
    return value


def _parse_add(obj: dict[str, Any], salt: str | None) -> AddEntry:
    _check_keys(obj, _ADD_KEYS, _ADD_REQUIRED, "")
    signal = obj["signal"]
    if not isinstance(signal, dict):
        raise MalformedError(f"expected an object, got {_json_type(signal)}", field="signal")
    _check_keys(signal, _SIGNAL_KEYS, _SIGNAL_REQUIRED, "signal.")
    labels = obj["labels"]
    if not isinstance(labels, list):
        raise MalformedError(f"expected an array, got {_json_type(labels)}", field="labels")
    note = obj.get("note")
    if "note" in obj:
        _expect_str(note, "note")
    quality = signal.get("quality")
    if "quality" in signal and (isinstance(quality, bool) or not isinstance(quality, int)):
        raise MalformedError(
            f"expected an integer {MIN_QUALITY}-{MAX_QUALITY}, got {_json_type(quality)}",
            field="signal.quality",
        )
    return AddEntry(
        signal_type=_expect_str(signal["type"], "signal.type"),
        value=_expect_str(signal["value"], "signal.value"),
        labels=tuple(labels),
        note=note,
        quality=quality,
        salt=salt,
    )


def _parse_retract(obj: dict[str, Any], salt: str | None) -> RetractEntry:
    _check_keys(obj, _RETRACT_KEYS, _RETRACT_REQUIRED, "")
    return RetractEntry(index=obj["index"], reason=_expect_str(obj["reason"], "reason"), salt=salt)


def _parse_opinion(obj: dict[str, Any], salt: str | None) -> OpinionEntry:
    _check_keys(obj, _OPINION_KEYS, _OPINION_REQUIRED, "")
    note = obj.get("note")
    if "note" in obj:
        _expect_str(note, "note")
    leaf_hash = decode_hex(_expect_str(obj["leaf_hash"], "leaf_hash"), field="leaf_hash", length=32)
    return OpinionEntry(
        origin=_expect_str(obj["origin"], "origin"),
        index=obj["index"],
        leaf_hash=leaf_hash,
        verdict=_expect_str(obj["verdict"], "verdict"),
        note=note,
        salt=salt,
    )


def _parse_rotate(obj: dict[str, Any], salt: str | None) -> RotateEntry:
    _check_keys(obj, _ROTATE_KEYS, _ROTATE_REQUIRED, "")
    return RotateEntry(
        key=_expect_str(obj["key"], "key"),
        reason=_expect_str(obj["reason"], "reason"),
        salt=salt,
    )


def _parse_salt(obj: dict[str, Any], version: int) -> str | None:
    """The salt field as the version requires it: absent in 1, 32 lowercase hex in 2."""
    if version == 1:
        if "salt" in obj:
            raise MalformedError("a version 1 entry has no salt", field="salt")
        return None
    if "salt" not in obj:
        raise MalformedError(f"missing required field (version {version})", field="salt")
    salt = obj["salt"]
    if not isinstance(salt, str):
        raise MalformedError(f"expected a string, got {_json_type(salt)}", field="salt")
    _check_salt(salt)
    return salt


_PARSERS: dict[str, Callable[[dict[str, Any], str | None], Entry]] = {
    "add": _parse_add,
    "retract": _parse_retract,
    "opinion": _parse_opinion,
    "rotate": _parse_rotate,
}


def parse_entry(data: bytes) -> Entry:
    """Parse the canonical encoding of an entry, accepting nothing else.

    Checks, in order: size (at most :data:`MAX_ENTRY_BYTES`), strict JSON
    (:func:`protocol.encoding.loads_strict`), a top-level object, version
    ``v`` (one of :data:`protocol.READ_VERSIONS`), a known ``kind``, the
    salt (required in version 2: 32 lowercase hex digits; forbidden in
    version 1), exactly the allowed fields, field types and values, and
    finally that ``data`` is byte for byte the canonical encoding of the
    result.

    Args:
        data: the leaf data.

    Returns:
        An :class:`AddEntry`, :class:`RetractEntry`, :class:`OpinionEntry`
        or :class:`RotateEntry`.

    Raises:
        UnsupportedVersionError: if ``v`` is a version number (a positive
            integer) other than the one this implementation reads.
        MalformedError: on any other problem, naming the field as a dotted
            path (``signal.value``, ``labels[2]``) where there is one.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedError(f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > MAX_ENTRY_BYTES:
        raise MalformedError(f"entry is {len(raw)} bytes, more than {MAX_ENTRY_BYTES}")
    obj = loads_strict(raw)
    if not isinstance(obj, dict):
        raise MalformedError(f"expected a JSON object, got {_json_type(obj)}")
    if "v" not in obj:
        raise MalformedError("missing required field", field="v")
    version = obj["v"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise MalformedError(f"expected an integer, got {_json_type(version)}", field="v")
    if version < 1:
        raise MalformedError(f"expected a version number of 1 or more, got {version}", field="v")
    if version not in READ_VERSIONS:
        raise UnsupportedVersionError(
            f"entry version {version} is not supported (this implementation reads "
            "versions " + " and ".join(map(str, READ_VERSIONS)) + ")",
            field="v",
        )
    if "kind" not in obj:
        raise MalformedError("missing required field", field="kind")
    kind = obj["kind"]
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        shown = repr(kind)[:40] if isinstance(kind, str) else _json_type(kind)
        raise MalformedError(
            f"unknown kind {shown}; expected one of " + ", ".join(repr(k) for k in _PARSERS),
            field="kind",
        )
    entry = parser(obj, _parse_salt(obj, version))
    if entry.to_bytes() != raw:
        raise MalformedError(
            "entry is not in canonical form (sorted keys, no whitespace, minimal escapes, "
            "raw UTF-8)"
        )
    return entry


# -- fast parsing ------------------------------------------------------------
#
# Logs are read in bulk (replication, audits, matching): the parsers below
# accept exactly what parse_entry accepts and return equal values
# (tests/protocol/test_entry_fast.py proves it with generated near misses), at
# several times its speed for the common case, a note-less add.

# The shape of a note-less add's encoding: it only finds the family fields
# (labels, quality, type); the family's AddEntry.parser then accepts exactly
# the canonical encodings.
_ASCII = rb"[\x20\x21\x23-\x5b\x5d-\x7e]"
_CANONICAL_ADD = re.compile(
    rb'\{"kind":"add","labels":\[((?:"' + _ASCII + rb'*"(?:,"' + _ASCII + rb'*")*)?)\],'
    rb'(?:"salt":"' + _ASCII + rb'*",)?'
    rb'"signal":\{(?:"quality":(0|[1-9][0-9]{0,18}),)?"type":"(' + _ASCII + rb'*)",'
    rb'"value":"' + _ASCII + rb'*"\},"v":([12])\}'
)

_Parser = Callable[[bytes], AddEntry | None]
_FAMILIES: dict[tuple[bytes, bytes, bytes | None, bytes], _Parser | None] = {}
_MAX_FAMILIES = 1024
_recent: list[_Parser | None] = [None]


def parse_entry_fast(data: bytes) -> Entry:
    """:func:`parse_entry`, with a fast path for note-less adds.

    Raises:
        MalformedError: exactly when :func:`parse_entry` does, with the same message.
    """
    # A log's entries come in long runs of one family (type, labels,
    # quality): try the family of the previous entry first.
    parse = _recent[0]
    if parse is not None:
        entry = parse(data)
        if entry is not None:
            return entry
    m = _CANONICAL_ADD.fullmatch(data)
    if m is not None:
        labels_raw, quality, signal_type, version = m.groups()
        parse = _family(signal_type, labels_raw, quality, version)
        if parse is not None:
            entry = parse(data)
            if entry is not None:
                _recent[0] = parse
                return entry
    return parse_entry(data)


def parse_entries(datas: Sequence[bytes], start: int = 0) -> list[Entry]:
    """Parse a run of a log's entries (indexes from ``start``) with :func:`parse_entry_fast`.

    Raises:
        MalformedError: for the first entry that does not parse, its field
            prefixed with ``entries[<index>]``.
    """
    try:
        return [parse_entry_fast(data) for data in datas]
    except MalformedError:
        pass  # found again below, to name the entry; the common case pays nothing
    for i, data in enumerate(datas):
        try:
            parse_entry_fast(data)
        except MalformedError as e:
            field = f"entries[{start + i}]" + (f".{e.field}" if e.field else "")
            raise MalformedError(e.reason, field=field) from e
    raise AssertionError("unreachable: an entry failed to parse once only")


def _family(
    signal_type: bytes, labels_raw: bytes, quality: bytes | None, version: bytes
) -> _Parser | None:
    """The :meth:`AddEntry.parser` of a (type, labels, quality, version) as matched, or None.

    None when those fields are invalid. The parser only accepts canonical
    encodings, so a misspelt family (unsorted labels, say) yields entries
    it returns None for, and :func:`parse_entry` names the error.
    """
    key = (signal_type, labels_raw, quality, version)
    if key in _FAMILIES:
        return _FAMILIES[key]
    labels = tuple(x[1:-1].decode("ascii") for x in labels_raw.split(b",")) if labels_raw else ()
    parse: _Parser | None
    try:
        parse = AddEntry.parser(
            signal_type=signal_type.decode("ascii"),
            labels=labels,
            quality=None if quality is None else int(quality),
            version=int(version),
        )
    except MalformedError:
        parse = None
    if len(_FAMILIES) >= _MAX_FAMILIES:  # bounded: a hostile log cannot grow it
        _FAMILIES.clear()
    _FAMILIES[key] = parse
    return parse


class AddRun(Sequence[AddEntry]):
    """A run of a log's entries, all note-less adds of one family with hex values.

    Made by :func:`parse_add_run`, which checked every encoding in bulk.
    Bulk writers (a replica's chunk) read :attr:`signal_type` and
    :attr:`values` and build no entry object; indexing builds the
    :class:`AddEntry`, equal to :func:`parse_entry` of its bytes.

    Attributes:
        signal_type: the type of every value.
        values: each entry's value, in order.
    """

    __slots__ = ("_datas", "signal_type", "values")

    def __init__(self, datas: Sequence[bytes], signal_type: str, values: list[str]) -> None:
        self._datas = datas
        self.signal_type = signal_type
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, index: int) -> AddEntry: ...

    @overload
    def __getitem__(self, index: slice) -> list[AddEntry]: ...

    def __getitem__(self, index: int | slice) -> AddEntry | list[AddEntry]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        entry = parse_entry_fast(self._datas[index])
        assert type(entry) is AddEntry, "checked by parse_add_run"
        return entry


# Entries are checked in blocks of this many: the masks below are made once
# per family and block size, and stay small.
_RUN_BLOCK = 1024
_HEX_DIGITS = b"0123456789abcdef"
# bytes.translate table: 0 for a lowercase hex digit, 1 for any other byte.
_NOT_HEX = bytes(0 if c in _HEX_DIGITS else 1 for c in range(256))
_RunMasks = tuple[int, int, int]
_RUN_MASKS: dict[tuple[bytes, int], _RunMasks] = {}
_MAX_RUN_MASKS = 64


def _run_masks(template: bytes, fixed: bytes, rows: int) -> _RunMasks:
    """(frame bytes, frame mask, hole mask) of ``rows`` encodings, as integers."""
    key = (template + fixed, rows)
    masks = _RUN_MASKS.get(key)
    if masks is None:
        holes = fixed.translate(bytes(255 - c for c in range(256)))
        masks = (
            int.from_bytes(template * rows, "big"),
            int.from_bytes(fixed * rows, "big"),
            int.from_bytes(holes * rows, "big"),
        )
        if len(_RUN_MASKS) >= _MAX_RUN_MASKS:
            _RUN_MASKS.clear()
        _RUN_MASKS[key] = masks
    return masks


def parse_add_run(datas: Sequence[bytes]) -> AddRun | None:
    """Check a run of entries in bulk: all note-less adds of one family, canonical.

    The family (signal type, labels, quality, version) is the first entry's.
    The run is accepted only if every encoding is exactly that family's
    frame (:meth:`AddEntry.encoding_frame`) around a salt of
    ``2 * SALT_BYTES`` lowercase hex digits (version 2) and a value of the
    type's length in lowercase hex: a hex type's whole canonical rule
    (:func:`protocol.signal.canonical_value_pattern`). The check works on
    the concatenated bytes, a block of entries per integer operation, so no
    per-entry Python runs but the value's slice.

    Returns:
        The run (``run[i] == parse_entry(datas[i])`` for every ``i``), or
        None when any entry is not of that form (a retraction, a note, a
        base64 type, another family, a malformed entry): the caller then
        parses with :func:`parse_entries`, which names what is wrong.
    """
    if not datas:
        return None
    try:
        first = parse_entry_fast(datas[0])
    except MalformedError:
        return None
    if type(first) is not AddEntry or first.note is not None:
        return None
    row = SIGNAL_TYPES[first.signal_type]
    if row.encoding != "hex":
        return None
    frame = AddEntry.encoding_frame(
        first.signal_type, first.labels, first.quality, version=first.version
    )
    widths = (row.text_length,) if first.version == 1 else (2 * SALT_BYTES, row.text_length)
    template = frame[0]
    fixed = b"\xff" * len(frame[0])
    for width, part in zip(widths, frame[1:], strict=True):
        template += b"\x00" * width + part
        fixed += b"\x00" * width + b"\xff" * len(part)
    size = len(template)
    if any(len(data) != size for data in datas):
        return None
    joined = b"".join(datas)
    n = len(datas)
    for begin in range(0, n, _RUN_BLOCK):
        rows = min(_RUN_BLOCK, n - begin)
        block = joined[begin * size : (begin + rows) * size]
        expected, frame_mask, hole_mask = _run_masks(template, fixed, rows)
        # Every frame byte as the family spells it, every hole a lowercase hex digit.
        if int.from_bytes(block, "big") & frame_mask != expected:
            return None
        if int.from_bytes(block.translate(_NOT_HEX), "big") & hole_mask:
            return None
    text = joined.decode("ascii")  # frame and holes are ASCII, checked above
    width = row.text_length
    at = size - len(frame[-1]) - width
    values = [text[i : i + width] for i in range(at, n * size, size)]
    return AddRun(datas, first.signal_type, values)
