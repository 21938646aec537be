"""Reading the hash lists hotlines already have: plain lines, CSV, NDJSON.

Layer: node.ledger. Reads a text stream; writes nothing.

Forgiving at the edge, strict on the wire: real lists come with a byte order
mark, CRLF line ends, upper-case hex, stray spaces and ``0x`` prefixes. Those
are normalised to the one canonical form (by
:func:`protocol.signal.normalise_signal_value`) and every kind of change is
counted so the importer can report what it did. Anything still invalid
becomes a :class:`~node.errors.LineError` naming the line and field.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from node.errors import LineError
from protocol.encoding import loads_strict
from protocol.entry import AddEntry
from protocol.errors import MalformedError
from protocol.signal import (
    LOWER_CASED_HEX,
    SIGNAL_TYPES,
    detect_signal_type,
    normalise_signal_value,
)

__all__ = [
    "FORMATS",
    "Format",
    "HashListReader",
    "ParsedLine",
    "normalise_labels",
    "signal_type_of",
]

FORMATS = ("lines", "csv", "ndjson")
Format = Literal["lines", "csv", "ndjson"]

_CSV_TYPE_COLUMNS = ("type", "signal_type")
_CSV_VALUE_COLUMNS = ("value", "hash")
_CSV_KNOWN = {*_CSV_TYPE_COLUMNS, *_CSV_VALUE_COLUMNS, "labels", "note", "quality"}
_NDJSON_KNOWN = {"type", "signal_type", "value", "labels", "note", "quality"}
_MAKER_CACHE = 256  # distinct (type, labels, note, quality) combinations kept


def signal_type_of(raw_value: str) -> str:
    """The signal type a value (as found in a list) can only be, for lists without --type.

    Raises:
        MalformedError: (field ``type``) if the value's shape fits no type, or more than one.
    """
    signal_type = detect_signal_type(raw_value.strip().lower())
    if signal_type is None:
        raise MalformedError(
            "cannot tell the signal type from the value; pass --type "
            "(64 hex characters may be sha256 or pdq)",
            field="type",
        )
    return signal_type


class ParsedLine(NamedTuple):
    """One input line: either an entry to add, or the reason it was rejected."""

    # A named tuple rather than a frozen dataclass: one is made per line of
    # lists of millions, and building it costs a third as much.
    line: int
    entry: AddEntry | None = None
    error: LineError | None = None


def normalise_labels(raw: Iterable[str], notes: Counter[str]) -> list[str]:
    """Lower-case and strip labels; count what was changed in ``notes``."""
    labels = []
    for label in raw:
        cleaned = label.strip().lower()
        if cleaned != label:
            notes["normalised label case or spaces"] += 1
        if cleaned:
            labels.append(cleaned)
    return labels


@dataclass
class HashListReader:
    """Turns a hash list into :class:`ParsedLine` values, one per data line.

    Attributes:
        fmt: ``lines``, ``csv`` or ``ndjson``.
        default_type: signal type for lines that do not say (``--type``).
        extra_labels: labels added to every entry (``--label``).
        notes: what normalisation did, counted by kind, filled while reading.
        skipped_blank: blank and ``#`` comment lines passed over.
    """

    fmt: Format = "lines"
    default_type: str | None = None
    extra_labels: Sequence[str] = ()
    notes: Counter[str] = field(default_factory=Counter)
    skipped_blank: int = 0
    ignored_columns: tuple[str, ...] = ()
    _makers: dict[
        tuple[str, tuple[str, ...], str | None, int | None],
        tuple[Callable[[str], AddEntry], Counter[str]],
    ] = field(default_factory=dict, repr=False)

    def read(self, stream: io.TextIOBase | Iterable[str]) -> Iterator[ParsedLine]:
        """Yield one :class:`ParsedLine` per data line of ``stream``.

        The stream should be opened with ``newline=""`` so CRLF can be
        reported; a leading byte order mark is removed and reported.
        """
        lines = self._lines(stream)
        if self.fmt == "lines":
            yield from self._read_lines(lines)
        elif self.fmt == "ndjson":
            yield from self._read_ndjson(lines)
        else:
            yield from self._read_csv(lines)

    def _lines(self, stream: io.TextIOBase | Iterable[str]) -> Iterator[tuple[int, str]]:
        for number, line in enumerate(stream, start=1):
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]
                self.notes["removed byte order mark"] += 1
            if line.endswith("\r\n"):
                line = line[:-2]
                self.notes["converted CRLF line ends"] += 1
            elif line.endswith("\n"):
                line = line[:-1]
            yield number, line

    def _entry(
        self,
        number: int,
        signal_type: str | None,
        raw_value: str,
        labels: Sequence[str] = (),
        note: str | None = None,
        quality: int | None = None,
    ) -> ParsedLine:
        try:
            if signal_type is None:
                signal_type = signal_type_of(raw_value)
            cached = self._maker(signal_type, tuple(labels), note, quality)
            if cached is not None:
                make, label_notes = cached
                try:
                    # Most values are canonical already; normalising one
                    # would change nothing, and make() validates it fully.
                    entry = make(raw_value)
                except MalformedError:
                    pass
                else:
                    if label_notes:
                        self.notes.update(label_notes)
                    return ParsedLine(number, entry=entry)
            value, changes = normalise_signal_value(signal_type, raw_value)
            for change in changes:
                self.notes[change] += 1
            if cached is None:
                entry = AddEntry.create(
                    signal_type=signal_type,
                    value=value,
                    labels=normalise_labels([*labels, *self.extra_labels], self.notes),
                    note=note,
                    quality=quality,
                )
            else:
                if label_notes:
                    self.notes.update(label_notes)
                entry = make(value)
        except MalformedError as e:
            return ParsedLine(number, error=LineError(number, e.field, e.reason))
        return ParsedLine(number, entry=entry)

    def _maker(
        self, signal_type: str, labels: tuple[str, ...], note: str | None, quality: int | None
    ) -> tuple[Callable[[str], AddEntry], Counter[str]] | None:
        """The entry maker for these fields, and what normalising the labels changed.

        None when a field other than the value is invalid: the caller then
        takes the general path, which reports the error as before.
        """
        key = (signal_type, labels, note, quality)
        cached = self._makers.get(key)
        if cached is None:
            notes: Counter[str] = Counter()
            normalised = normalise_labels([*labels, *self.extra_labels], notes)
            try:
                make = AddEntry.maker(
                    signal_type=signal_type, labels=normalised, note=note, quality=quality
                )
            except MalformedError:
                return None
            if len(self._makers) >= _MAKER_CACHE:
                self._makers.clear()
            cached = self._makers[key] = (make, notes)
        return cached

    def _read_lines(self, lines: Iterator[tuple[int, str]]) -> Iterator[ParsedLine]:
        # With --type, every line shares one maker: a canonical value (most
        # lines of a real list) goes straight to it, anything else through
        # _entry, which normalises and explains.
        cached = (
            None if self.default_type is None else self._maker(self.default_type, (), None, None)
        )
        make = None if cached is None or cached[1] else cached[0]
        # Upper-case hex (many lists, NCMEC's MD5s among them) needs only
        # lower-casing: done here, noted as normalise_signal_value would.
        row = None if self.default_type is None else SIGNAL_TYPES.get(self.default_type)
        hex_type = row is not None and row.encoding == "hex"
        for number, line in lines:
            text = line.strip()
            if not text or text.startswith("#"):
                self.skipped_blank += 1
                continue
            if text != line:
                self.notes["removed surrounding spaces"] += 1
            if make is not None:
                try:
                    yield ParsedLine(number, make(text))
                    continue
                except MalformedError:
                    pass
                if hex_type and text.isascii():
                    try:
                        entry = make(text.lower())
                    except MalformedError:
                        pass
                    else:
                        self.notes[LOWER_CASED_HEX] += 1
                        yield ParsedLine(number, entry)
                        continue
            yield self._entry(number, self.default_type, text)

    def _read_ndjson(self, lines: Iterator[tuple[int, str]]) -> Iterator[ParsedLine]:
        for number, line in lines:
            if not line.strip():
                self.skipped_blank += 1
                continue
            try:
                obj = loads_strict(line)
                if not isinstance(obj, dict):
                    raise MalformedError("expected a JSON object")
                unknown = set(obj) - _NDJSON_KNOWN
                if unknown:
                    raise MalformedError("unknown field", field=sorted(unknown)[0])
                signal_type = _opt_str(obj, "type") or _opt_str(obj, "signal_type")
                value = obj.get("value")
                if not isinstance(value, str):
                    raise MalformedError("expected a string", field="value")
                labels = obj.get("labels", [])
                if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                    raise MalformedError("expected a list of strings", field="labels")
                quality = obj.get("quality")
                if quality is not None and (
                    not isinstance(quality, int) or isinstance(quality, bool)
                ):
                    raise MalformedError("expected an integer", field="quality")
            except MalformedError as e:
                yield ParsedLine(number, error=LineError(number, e.field, e.reason))
                continue
            yield self._entry(
                number,
                signal_type or self.default_type,
                value,
                labels,
                _opt_str(obj, "note"),
                quality,
            )

    def _read_csv(self, lines: Iterator[tuple[int, str]]) -> Iterator[ParsedLine]:
        numbers: list[int] = []

        def feed() -> Iterator[str]:
            for number, line in lines:
                numbers.append(number)
                yield line

        reader = csv.reader(feed())
        header = next(reader, None)
        if header is None:
            return
        columns = [h.strip().lower() for h in header]
        type_col = _first_index(columns, _CSV_TYPE_COLUMNS)
        value_col = _first_index(columns, _CSV_VALUE_COLUMNS)
        if value_col is None:
            yield ParsedLine(
                numbers[-1],
                error=LineError(
                    numbers[-1],
                    "header",
                    "CSV header needs a 'value' (or 'hash') column",
                ),
            )
            return
        self.ignored_columns = tuple(c for c in columns if c not in _CSV_KNOWN)
        label_col = _first_index(columns, ("labels",))
        note_col = _first_index(columns, ("note",))
        quality_col = _first_index(columns, ("quality",))
        for row in reader:
            number = numbers[-1]
            if not any(cell.strip() for cell in row):
                self.skipped_blank += 1
                continue
            if len(row) != len(columns):
                yield ParsedLine(
                    number,
                    error=LineError(
                        number, None, f"expected {len(columns)} columns, got {len(row)}"
                    ),
                )
                continue
            quality: int | None = None
            if quality_col is not None and row[quality_col].strip():
                text = row[quality_col].strip()
                if not (text.isascii() and text.isdigit()):
                    yield ParsedLine(number, error=LineError(number, "quality", "expected 0-100"))
                    continue
                quality = int(text)
            labels: list[str] = []
            if label_col is not None:
                labels = [x for x in row[label_col].replace(";", " ").split() if x]
            signal_type = row[type_col].strip().lower() if type_col is not None else None
            yield self._entry(
                number,
                signal_type or self.default_type,
                row[value_col],
                labels,
                (row[note_col] or None) if note_col is not None else None,
                quality,
            )


def _first_index(columns: Sequence[str], names: Sequence[str]) -> int | None:
    for name in names:
        if name in columns:
            return columns.index(name)
    return None


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedError("expected a string", field=key)
    return value
