"""Reading the hash lists hotlines already have: plain lines, CSV, NDJSON.

Layer: node.ledger. Reads a text stream; writes nothing.

CSV comes as people have it: headers in any case, a value column named after
its signal type (``MD5,Category`` as NCMEC and IWF lists are shaped, several
typed columns per row allowed) and a classification column turned into labels
(:class:`LabelColumn`, ``--label-from``). PDQ lists come as the hasher writes
them (``HASH,QUALITY,FILENAME``) or as bare hashes with one quality for the
whole list (``--quality``).

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
import itertools
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from node.errors import LineError
from protocol.encoding import loads_strict
from protocol.entry import AddEntry, AddFamily
from protocol.errors import MalformedError
from protocol.signal import (
    LOWER_CASED_HEX,
    SIGNAL_TYPES,
    all_canonical,
    detect_signal_type,
    normalise_signal_value,
)

__all__ = [
    "FORMATS",
    "Format",
    "HashListReader",
    "LabelColumn",
    "ParsedLine",
    "ParsedValues",
    "candidate_types",
    "load_label_map",
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
_QUALITY_HINT = "pass --quality N for a list that carries none"
_LABEL_CACHE = 4096  # distinct cells remembered per --label-from column
# Characters of text read at a time by the block readers: a few thousand lines.
_BLOCK_CHARS = 1 << 20


@dataclass(frozen=True, slots=True)
class LabelColumn:
    """A CSV column whose cells become labels (``--label-from COLUMN=NAMESPACE:``).

    Attributes:
        column: the header name, compared case-insensitively.
        namespace: the label namespace, without the colon.
        mapping: cell value (lower-cased, stripped) to label value; a target
            with a colon is a whole label, an empty one means "no label".
            When given, a cell not in it is an error: labels are permanent.
    """

    column: str
    namespace: str
    mapping: Mapping[str, str] | None = None
    _seen: dict[str, tuple[str | None, str]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def parse(cls, text: str, mapping: Mapping[str, str] | None = None) -> LabelColumn:
        """Read ``COLUMN=NAMESPACE:`` as given on the command line.

        Raises:
            MalformedError: if the text is not of that shape.
        """
        column, sep, namespace = text.partition("=")
        if not sep or not column.strip() or not namespace.endswith(":") or len(namespace) < 2:
            raise MalformedError(
                f"--label-from expects COLUMN=NAMESPACE: (e.g. Category=iwf:), got {text!r}",
                field="label-from",
            )
        return cls(column.strip().lower(), namespace[:-1].strip().lower(), mapping)

    def label(self, cell: str, notes: Counter[str]) -> str | None:
        """The label for one cell, or None for an empty cell or one mapped to nothing.

        Raises:
            MalformedError: (field: the column) for a cell the mapping lacks.
        """
        # A column holds few distinct values: each is worked out once.
        known = self._seen.get(cell)
        if known is not None:
            label, note = known
            if note:
                notes[note] += 1
            return label
        changed = Counter[str]()
        label = self._label(cell, changed)
        if len(self._seen) < _LABEL_CACHE:
            self._seen[cell] = (label, next(iter(changed), ""))
        notes.update(changed)
        return label

    def _label(self, cell: str, notes: Counter[str]) -> str | None:
        raw = cell.strip()
        if not raw:
            return None
        key = raw.lower()
        if self.mapping is not None:
            target = self.mapping.get(key)
            if target is None:
                raise MalformedError(f"{raw!r} is not in the --label-map file", field=self.column)
            if not target:
                return None
            return target if ":" in target else f"{self.namespace}:{target}"
        value = "-".join(key.split())
        if value != raw:
            notes[f"label from column {self.column}: lower-cased, spaces as '-'"] += 1
        return f"{self.namespace}:{value}"


def load_label_map(text: str, name: str) -> dict[str, str]:
    """Read a ``--label-map`` file: CSV lines ``FROM,TO`` (``#`` comments, blank lines).

    ``FROM`` is compared case-insensitively; ``TO`` is the label value after the
    namespace, a whole ``ns:value`` label, or empty for "no label".

    Raises:
        MalformedError: naming the file and line of a line that is not two columns,
            or a ``FROM`` given twice.
    """
    mapping: dict[str, str] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            raise MalformedError(
                f"{name} line {number}: expected FROM,TO, got {len(row)} columns",
                field="label-map",
            )
        key = row[0].strip().lower()
        if key in mapping:
            raise MalformedError(
                f"{name} line {number}: {row[0]!r} mapped twice", field="label-map"
            )
        mapping[key] = row[1].strip().lower()
    return mapping


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


def candidate_types(raw_value: str) -> tuple[str, ...]:
    """Every hex signal type whose length fits the value (64 digits: sha256 and pdq).

    For a lookup, where trying each is harmless; an import must be told (``--type``).
    """
    text = "".join(raw_value.split())
    if text.startswith(("0x", "0X")):
        text = text[2:]
    if not text or not text.isascii() or not _HEX_DIGITS.issuperset(text.lower()):
        return ()
    return tuple(
        t.name for t in SIGNAL_TYPES.values() if t.encoding == "hex" and 2 * t.length == len(text)
    )


_HEX_DIGITS = frozenset("0123456789abcdef")


class ParsedLine(NamedTuple):
    """One input line: either an entry to add, or the reason it was rejected."""

    # A named tuple rather than a frozen dataclass: one is made per line of
    # lists of millions, and building it costs a third as much.
    line: int
    entry: AddEntry | None = None
    error: LineError | None = None


class ParsedValues(NamedTuple):
    """Many input values that all read well: the bulk form of :class:`ParsedLine`.

    ``values[i]`` is canonical for ``families[i]`` (the add it makes is
    ``families[i].entry(values[i])``) and came from line ``lines[i]``; the
    lines never decrease, and ``rows`` counts the distinct ones. A block of a
    list that needs no per-line explanation is read into one of these with a
    few passes in C instead of an entry object per line.
    """

    lines: Sequence[int]
    families: Sequence[AddFamily]
    values: list[str]
    rows: int


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
        default_quality: quality of PDQ values whose line gives none (``--quality``).
        label_columns: CSV columns turned into labels (``--label-from``).
        notes: what normalisation did, counted by kind, filled while reading.
        skipped_blank: blank and ``#`` comment lines passed over.
    """

    fmt: Format = "lines"
    default_type: str | None = None
    extra_labels: Sequence[str] = ()
    default_quality: int | None = None
    label_columns: Sequence[LabelColumn] = ()
    notes: Counter[str] = field(default_factory=Counter)
    skipped_blank: int = 0
    ignored_columns: tuple[str, ...] = ()
    _makers: dict[
        tuple[str, tuple[str, ...], str | None, int | None],
        tuple[Callable[[str], AddEntry], Counter[str]],
    ] = field(default_factory=dict, repr=False)
    _families: dict[tuple[str, tuple[str, ...]], AddFamily] = field(
        default_factory=dict, repr=False
    )

    def read(self, stream: io.TextIOBase | Iterable[str]) -> Iterator[ParsedLine | ParsedValues]:
        """Yield :class:`ParsedLine` values, one per data line of ``stream``, or runs of them.

        The stream should be opened with ``newline=""`` so CRLF can be
        reported; a leading byte order mark is removed and reported. From a
        text stream, blocks of lines that all read well are yielded as
        :class:`ParsedValues` (the same entries, notes and counts).
        """
        if isinstance(stream, io.TextIOBase):
            if self.fmt == "csv":
                yield from self._read_csv_blocks(stream)
                return
            family = self._block_family() if self.fmt == "lines" else None
            if family is not None:
                yield from self._read_line_blocks(stream, family)
                return
        lines = self._lines(stream)
        if self.fmt == "lines":
            yield from self._read_lines(lines)
        elif self.fmt == "ndjson":
            yield from self._read_ndjson(lines)
        else:
            yield from self._read_csv(lines)

    def _block_family(self) -> AddFamily | None:
        """The family of every line of a ``--type`` list read in blocks, if it can be."""
        row = None if self.default_type is None else SIGNAL_TYPES.get(self.default_type)
        if row is None or row.encoding != "hex" or row.requires_quality:
            return None
        cached = self._maker(row.name, (), None, None)
        if cached is None or cached[1]:
            return None  # an invalid --label, or one that needs a note per line
        return self._family(row.name, ())

    def _family(self, signal_type: str, labels: tuple[str, ...]) -> AddFamily:
        """The family of adds of ``signal_type`` with these labels and the extra ones."""
        key = (signal_type, labels)
        family = self._families.get(key)
        if family is None:
            family = AddFamily.create(
                signal_type=signal_type,
                labels=normalise_labels([*labels, *self.extra_labels], Counter()),
            )
            if len(self._families) >= _MAKER_CACHE:
                self._families.clear()
            self._families[key] = family
        return family

    def _read_line_blocks(
        self, stream: io.TextIOBase, family: AddFamily
    ) -> Iterator[ParsedLine | ParsedValues]:
        """A ``--type`` list of a hex type, read a block of lines at a time.

        A block whose lines are all canonical values (or upper-case ones,
        lower-cased and noted; CRLF ends converted and noted) becomes one
        :class:`ParsedValues`. Any other block goes line by line through
        :meth:`_read_lines`, which explains every change and error; its lines
        are split exactly as iterating the stream splits them.
        """
        number = 0  # lines of the stream taken so far
        for text in _TextBlocks(stream, self.notes):
            values = self._canonical_block(text, family)
            if values is not None:
                yield ParsedValues(
                    range(number + 1, number + 1 + len(values)),
                    [family] * len(values),
                    values,
                    len(values),
                )
                number += len(values)
                continue
            pieces = io.StringIO(text, newline="").readlines()
            yield from self._read_lines(self._numbered(pieces, number))
            number += len(pieces)

    def _canonical_block(self, text: str, family: AddFamily) -> list[str] | None:
        """The values of a block of whole lines, if every line is one value and nothing else.

        Upper-case hex is lower-cased and CRLF line ends converted, each
        counted as the line-by-line reader counts them; None (and nothing
        counted) for a block that needs more.
        """
        crlf = _crlf_ends(text)
        if crlf is None or not text.isascii():
            return None
        plain = text.replace("\r\n", "\n") if crlf else text
        lowered = plain.lower()
        values = lowered.split("\n")
        if not values[-1]:
            values.pop()  # the end of the last line; a file may lack it
        if not family.canonical(values):
            return None
        if lowered != plain:
            originals = plain.split("\n")
            self.notes[LOWER_CASED_HEX] += sum(map(operator.ne, originals, values))
        if crlf:
            self.notes["converted CRLF line ends"] += crlf
        return values

    def _numbered(self, lines: Iterable[str], before: int) -> Iterator[tuple[int, str]]:
        """Lines after the first ``before``, numbered, their line ends stripped."""
        for number, line in enumerate(lines, start=before + 1):
            if line.endswith("\r\n"):
                line = line[:-2]
                self.notes["converted CRLF line ends"] += 1
            elif line.endswith("\n"):
                line = line[:-1]
            yield number, line

    def _lines(self, stream: io.TextIOBase | Iterable[str]) -> Iterator[tuple[int, str]]:
        lines = iter(stream)
        first = next(lines, None)
        if first is None:
            return
        if first.startswith("\ufeff"):
            first = first[1:]
            self.notes["removed byte order mark"] += 1
        yield from self._numbered(itertools.chain((first,), lines), 0)

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
                # Most values are canonical already, or upper-case hex (NCMEC's
                # and most tools' lists) that needs only lower-casing: make()
                # validates either fully. Lower-casing first spares the failed
                # attempt (an exception per row) that upper-case hex would cost.
                lowered = _lowered_hex(signal_type, raw_value)
                try:
                    entry = make(raw_value if lowered is None else lowered)
                except MalformedError:
                    pass
                else:
                    if lowered is not None:
                        self.notes[LOWER_CASED_HEX] += 1
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
        if row is not None and row.requires_quality:
            yield from self._read_quality_lines(lines, row.name)
            return
        hex_type = row is not None and row.encoding == "hex"
        for number, line in lines:
            text = line.strip()
            if not text or text.startswith("#"):
                self.skipped_blank += 1
                continue
            if text != line:
                self.notes["removed surrounding spaces"] += 1
            if make is not None:
                # Upper-case hex is lower-cased before the attempt rather than
                # after a failed one: an exception per line costs more.
                lowered = text.lower() if hex_type and text.isascii() else text
                try:
                    entry = make(lowered)
                except MalformedError:
                    pass
                else:
                    if lowered != text:
                        self.notes[LOWER_CASED_HEX] += 1
                    yield ParsedLine(number, entry)
                    continue
            yield self._entry(number, self.default_type, text)

    def _read_quality_lines(
        self, lines: Iterator[tuple[int, str]], signal_type: str
    ) -> Iterator[ParsedLine]:
        """``HASH``, ``HASH,QUALITY`` or ``HASH,QUALITY,ANYTHING`` (the PDQ hasher's output)."""
        for number, line in lines:
            text = line.strip()
            if not text or text.startswith("#"):
                self.skipped_blank += 1
                continue
            parts = text.split(",", 2)
            if len(parts) > 1 and parts[1].strip():
                try:
                    quality: int | None = _parse_quality(parts[1])
                except MalformedError as e:
                    yield ParsedLine(number, error=LineError(number, e.field, e.reason))
                    continue
            elif self.default_quality is not None:
                quality = self.default_quality
            else:
                yield ParsedLine(
                    number,
                    error=LineError(
                        number, "quality", f"a {signal_type} line needs a quality; {_QUALITY_HINT}"
                    ),
                )
                continue
            yield self._entry(number, signal_type, parts[0], quality=quality)

    def _quality_for(self, signal_type: str | None, quality: int | None) -> int | None:
        if quality is not None or self.default_quality is None:
            return quality
        row = SIGNAL_TYPES.get(signal_type or "")
        return self.default_quality if row is not None and row.requires_quality else None

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
            signal_type = signal_type or self.default_type
            yield self._entry(
                number,
                signal_type,
                value,
                labels,
                _opt_str(obj, "note"),
                self._quality_for(signal_type, quality),
            )

    def _read_csv(self, lines: Iterator[tuple[int, str]]) -> Iterator[ParsedLine]:
        reader, numbers = _csv_rows(lines)
        plan = self._csv_plan(next(reader, None), numbers[0])
        if isinstance(plan, _CsvPlan):
            yield from self._csv_rows(plan, reader, numbers)
        elif plan is not None:
            yield plan

    def _read_csv_blocks(self, stream: io.TextIOBase) -> Iterator[ParsedLine | ParsedValues]:
        """A CSV read a block of rows at a time, for what :meth:`_csv_block` can read so.

        The header is read alone. A block with a quote (a field that may span
        lines) hands the rest of the file to the row-by-row reader; a block
        :meth:`_csv_block` cannot read goes row by row on its own.
        """
        first = stream.readline()
        if not first:
            return  # an empty file
        if '"' in first:
            rest = self._lines(itertools.chain((first,), stream))
            yield from self._read_csv(rest)
            return
        header = [row for _n, row in self._lines((first,))]
        plan = self._csv_plan(next(csv.reader(header), None), 1)
        if not isinstance(plan, _CsvPlan):
            if plan is not None:
                yield plan
            return
        types = self._csv_block_types(plan)
        if types is None:
            yield from self._csv_rows(plan, *_csv_rows(self._numbered(stream, 1)))
            return
        number = 1
        blocks = _TextBlocks(stream, self.notes, first=False)
        for text in blocks:
            if '"' in text:
                pieces = io.StringIO(text, newline="").readlines()
                rest = self._numbered(itertools.chain(pieces, blocks.rest()), number)
                yield from self._csv_rows(plan, *_csv_rows(rest))
                return
            values = self._csv_block(text, plan, types, number)
            if values is not None:
                yield values
                number += values.rows
                continue
            pieces = io.StringIO(text, newline="").readlines()
            yield from self._csv_rows(plan, *_csv_rows(self._numbered(pieces, number)))
            number += len(pieces)

    def _csv_plan(self, header: list[str] | None, number: int) -> _CsvPlan | ParsedLine | None:
        """What each column of a CSV holds; a ParsedLine naming a header problem; None if empty."""
        if header is None:
            return None
        columns = [h.strip().lower() for h in header]
        type_col = _first_index(columns, _CSV_TYPE_COLUMNS)
        value_col = _first_index(columns, _CSV_VALUE_COLUMNS)
        # A column named after a signal type holds values of that type.
        typed = [(i, name) for i, name in enumerate(columns) if name in SIGNAL_TYPES]
        value_cols: list[tuple[int, str | None]] = list(typed)
        if value_col is not None:
            value_cols.insert(0, (value_col, None))
        problem = None
        if not value_cols:
            problem = (
                "CSV header needs a 'value' (or 'hash') column, or a column named after "
                f"a signal type ({', '.join(SIGNAL_TYPES)})"
            )
        label_cols: list[tuple[int, LabelColumn]] = []
        for spec in self.label_columns:
            index = _first_index(columns, (spec.column,))
            if index is None:
                problem = problem or f"no column {spec.column!r} for --label-from"
            else:
                label_cols.append((index, spec))
        if problem is not None:
            return ParsedLine(number, error=LineError(number, "header", problem))
        used = {i for i, _ in value_cols} | {i for i, _ in label_cols}
        self.ignored_columns = tuple(
            c for i, c in enumerate(columns) if c not in _CSV_KNOWN and i not in used
        )
        return _CsvPlan(
            columns,
            value_cols,
            label_cols,
            type_col,
            _first_index(columns, ("labels",)),
            _first_index(columns, ("note",)),
            _first_index(columns, ("quality",)),
        )

    def _csv_rows(
        self, plan: _CsvPlan, reader: Iterator[list[str]], numbers: list[int]
    ) -> Iterator[ParsedLine]:
        """Each row of ``reader`` as entries and errors (``numbers[0]``: the row's line)."""
        columns = plan.columns
        value_cols, label_cols = plan.value_cols, plan.label_cols
        type_col, label_col, note_col = plan.type_col, plan.label_col, plan.note_col
        quality_col = plan.quality_col
        # A row's quality belongs to its perceptual column, not its md5 beside it.
        takes = [(i, t, t is None or SIGNAL_TYPES[t].requires_quality) for i, t in value_cols]
        width = len(columns)
        default_quality = self.default_quality
        for row in reader:
            number = numbers[0]
            if not row or not "".join(row).strip():
                self.skipped_blank += 1
                continue
            if len(row) != width:
                yield ParsedLine(
                    number,
                    error=LineError(
                        number, None, f"expected {len(columns)} columns, got {len(row)}"
                    ),
                )
                continue
            quality: int | None = None
            labels: list[str] = []
            try:
                if quality_col is not None and row[quality_col].strip():
                    quality = _parse_quality(row[quality_col])
                if label_col is not None:
                    labels = [x for x in row[label_col].replace(";", " ").split() if x]
                for index, spec in label_cols:
                    label = spec.label(row[index], self.notes)
                    if label is not None:
                        labels.append(label)
            except MalformedError as e:
                yield ParsedLine(number, error=LineError(number, e.field, e.reason))
                continue
            row_type = row[type_col].strip().lower() if type_col is not None else ""
            note = (row[note_col] or None) if note_col is not None else None
            found = False
            for index, column_type, takes_quality in takes:
                cell = row[index]
                if not cell or (cell[0].isspace() and not cell.strip()):
                    continue  # rows may fill only some of the value columns
                found = True
                signal_type = column_type or row_type or self.default_type
                own_quality = quality if takes_quality else None
                if default_quality is not None:
                    own_quality = self._quality_for(signal_type, own_quality)
                parsed = self._entry(number, signal_type, cell, labels, note, own_quality)
                if parsed.error is not None and column_type is not None:
                    # Name the column the value came from, not the generic field.
                    error = parsed.error
                    field_name = columns[index] if error.field == "value" else error.field
                    parsed = ParsedLine(number, error=LineError(number, field_name, error.reason))
                yield parsed
            if not found:
                yield ParsedLine(
                    number,
                    error=LineError(
                        number,
                        None,
                        "no hash: every value column is empty "
                        f"({', '.join(columns[i] for i, _ in value_cols)})",
                    ),
                )

    def _csv_block_types(self, plan: _CsvPlan) -> list[str] | None:
        """The signal type of each value column, if rows of this CSV can be read in blocks.

        Only value columns of hex types that take no quality, with their
        type known from the header or ``--type``; no type, labels, note or
        quality column (those are read row by row).
        """
        if any(c is not None for c in (plan.type_col, plan.label_col, plan.note_col)):
            return None
        if plan.quality_col is not None:
            return None
        types = []
        for _index, column_type in plan.value_cols:
            row = SIGNAL_TYPES.get(column_type or self.default_type or "")
            if row is None or row.encoding != "hex" or row.requires_quality:
                return None
            types.append(row.name)
        return types

    def _csv_block(
        self, text: str, plan: _CsvPlan, types: list[str], before: int
    ) -> ParsedValues | None:
        """The rows of a block (whole lines, no quote) as values, if every row reads well.

        Every value cell canonical after lower-casing, every label cell
        labelled, every row as wide as the header; notes counted as the row
        by row reader counts them. None (nothing counted) for any other block.
        """
        crlf = _crlf_ends(text)
        if crlf is None:
            return None
        lines = (text.replace("\r\n", "\n") if crlf else text).split("\n")
        if not lines[-1]:
            lines.pop()  # the end of the last line; a file may lack it
        rows = [line.split(",") for line in lines]
        width = len(plan.columns)
        if min(map(len, rows)) != width or max(map(len, rows)) != width:
            return None
        columns = list(zip(*rows, strict=True))
        notes: Counter[str] = Counter()
        # Each row's labels from its --label-from cells, worked out once per
        # distinct combination of cells.
        keys: list[tuple[str, ...]] = (
            list(zip(*(columns[i] for i, _spec in plan.label_cols), strict=True))
            if plan.label_cols
            else [()] * len(rows)
        )
        labels_of: dict[tuple[str, ...], tuple[str, ...]] = {}
        for key, count in Counter(keys).items():
            labels: list[str] = []
            for cell, (_i, spec) in zip(key, plan.label_cols, strict=True):
                once: Counter[str] = Counter()
                try:
                    label = spec.label(cell, once)
                except MalformedError:
                    return None
                for note, n in once.items():
                    notes[note] += n * count
                if label is not None:
                    labels.append(label)
            labels_of[key] = tuple(labels)
        value_columns: list[list[str]] = []
        family_columns: list[list[AddFamily]] = []
        for (index, _column_type), signal_type in zip(plan.value_cols, types, strict=True):
            cells = columns[index]
            joined = "\n".join(cells)
            if not joined.isascii():
                return None
            lowered = joined.lower()
            values = lowered.split("\n") if lowered != joined else list(cells)
            if not all_canonical(signal_type, values):
                return None
            if lowered != joined:
                notes[LOWER_CASED_HEX] += sum(map(operator.ne, cells, values))
            families: dict[tuple[str, ...], AddFamily] = {}
            for key, row_labels in labels_of.items():
                cached = self._maker(signal_type, row_labels, None, None)
                if cached is None or cached[1]:
                    return None  # labels to explain, or notes to count per value
                families[key] = self._family(signal_type, row_labels)
            value_columns.append(values)
            family_columns.append([families[key] for key in keys])
        self.notes.update(notes)
        n = len(rows)
        if crlf:
            self.notes["converted CRLF line ends"] += crlf
        if len(value_columns) == 1:
            return ParsedValues(
                range(before + 1, before + 1 + n), family_columns[0], value_columns[0], n
            )
        k = len(value_columns)
        return ParsedValues(
            [line for line in range(before + 1, before + 1 + n) for _ in range(k)],
            [f for group in zip(*family_columns, strict=True) for f in group],
            [v for group in zip(*value_columns, strict=True) for v in group],
            n,
        )


@dataclass(frozen=True, slots=True)
class _CsvPlan:
    """What the columns of a CSV hold, from its header."""

    columns: list[str]
    value_cols: list[tuple[int, str | None]]
    label_cols: list[tuple[int, LabelColumn]]
    type_col: int | None
    label_col: int | None
    note_col: int | None
    quality_col: int | None


def _csv_rows(lines: Iterable[tuple[int, str]]) -> tuple[Iterator[list[str]], list[int]]:
    """A CSV reader of numbered lines, and where it keeps the current row's line number.

    Only the current number is kept: a list of every number would grow with
    the file (36 MB per million rows).
    """
    numbers = [0]

    def feed() -> Iterator[str]:
        for number, line in lines:
            numbers[0] = number
            yield line

    return csv.reader(feed()), numbers


class _TextBlocks:
    """A text stream cut into blocks of whole lines (a block ends at a line end, or the file).

    A line feed always ends a line, with ``newline=""`` as with any other
    newline mode, so a block never splits a CR LF pair and its lines are
    those iterating the stream would give. A leading byte order mark is
    removed and noted (when ``first``).
    """

    def __init__(self, stream: io.TextIOBase, notes: Counter[str], *, first: bool = True) -> None:
        self._stream = stream
        self._notes = notes
        self._first = first
        self._carry = ""

    def __iter__(self) -> Iterator[str]:
        while True:
            chunk = self._stream.read(_BLOCK_CHARS)
            if self._first and chunk.startswith("\ufeff"):
                chunk = chunk[1:]
                self._notes["removed byte order mark"] += 1
            self._first = False
            if not chunk:
                text, self._carry = self._carry, ""
                if text:
                    yield text
                return
            cut = chunk.rfind("\n") + 1
            if not cut:
                self._carry += chunk
                continue
            text, self._carry = self._carry + chunk[:cut], chunk[cut:]
            yield text

    def rest(self) -> Iterator[str]:
        """The lines after the last block, as iterating the stream gives them."""
        # The partial line carried over ends where the stream's next line ends.
        head, self._carry = self._carry + self._stream.readline(), ""
        yield from io.StringIO(head, newline="").readlines()
        yield from self._stream


_HEX_TYPES = frozenset(t.name for t in SIGNAL_TYPES.values() if t.encoding == "hex")


def _crlf_ends(text: str) -> int | None:
    """How many CR LF line ends ``text`` has; None if it has a CR that ends no such pair."""
    if "\r" not in text:
        return 0
    crlf = text.count("\r\n")
    return crlf if text.count("\r") == crlf else None


def _lowered_hex(signal_type: str, raw: str) -> str | None:
    """``raw`` lower-cased, when that is a change that could make it canonical hex."""
    if signal_type not in _HEX_TYPES or not raw.isascii():
        return None
    lowered = raw.lower()
    return None if lowered == raw else lowered


def _parse_quality(text: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > 100:
        raise MalformedError(f"expected 0-100, got {text[:20]!r}", field="quality")
    return int(text)


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
