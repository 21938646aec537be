"""What to look up: hash values as people paste or list them, normalised once.

Layer: node.ledger. Pure text handling; reads no file and writes nothing.

``hashmesh match`` (VALUE arguments and ``--list FILE``) and the console's
Look up page (a pasted list or an uploaded one) gather their queries here, so
a value is read the same way wherever it comes from: a line is ``VALUE`` or
``TYPE:VALUE`` (also ``TYPE,VALUE``, ``TYPE VALUE``, a tab), blank lines and
``#`` comments are passed over, and each value is made canonical by
:func:`protocol.signal.normalise_signal_value`, with every kind of change
counted so the caller can say what it did. A value whose type cannot be told
from its shape (64 hex digits: SHA-256 or PDQ) needs a default type.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from node.errors import NodeError
from node.ledger.filehash import FileHashes
from node.ledger.hashlist import candidate_types, signal_type_of
from node.ledger.matching import MatchQuery
from protocol.errors import MalformedError
from protocol.signal import SIGNAL_TYPES, normalise_signal_value

__all__ = ["HashInput", "HashInputs", "decode_hash_list"]

_TYPE_PREFIX = re.compile(r"([A-Za-z0-9]+)\s*[:,;\t ]\s*(.+)")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class HashInput:
    """One hash to match and where it came from (``file x.jpg``, ``list line 7``)."""

    source: str
    signal_type: str
    value: str
    # Set when a value of no stated type fits several (64 hex digits: sha256 and
    # pdq) and is looked up as each of them.
    tried_as: tuple[str, ...] = ()
    # PDQ quality, when the hash was computed here from a file.
    quality: int | None = None


@dataclass
class HashInputs:
    """Everything gathered for one look-up.

    Attributes:
        queries: the valid, canonical values in the order given.
        invalid: one ``{"source", "field", "error"}`` per value that could not
            be read.
        notes: what normalisation changed, by kind, with counts.
        remarks: other observations (a file without a PDQ hash), with counts.
        files: what was computed for each hashed file.
    """

    queries: list[HashInput] = field(default_factory=list)
    invalid: list[dict[str, Any]] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)
    remarks: Counter[str] = field(default_factory=Counter)
    files: list[FileHashes] = field(default_factory=list)

    def add(self, source: str, signal_type: str | None, raw: str) -> None:
        """Normalise one value; record it, or why it is invalid.

        A value of no stated type that fits several types (64 hex digits:
        sha256 and pdq) is looked up as each of them.
        """
        if signal_type is None:
            candidates = candidate_types(raw)
            if len(candidates) > 1:
                self._add_each_way(source, raw, candidates)
                return
        else:
            # Most values of a long list are canonical already: one regex
            # match (MatchQuery's fast path) instead of the general normaliser.
            try:
                query = MatchQuery.parse(signal_type, raw)
            except MalformedError:
                pass
            else:
                self.queries.append(HashInput(source, signal_type, query.value))
                return
        try:
            if signal_type is None:
                signal_type = signal_type_of(raw)
            value, changes = normalise_signal_value(signal_type, raw)
        except MalformedError as e:
            self.invalid.append({"source": source, "field": e.field, "error": e.reason})
            return
        for change in changes:
            self.notes[change] += 1
        self.queries.append(HashInput(source, signal_type, value))

    def _add_each_way(self, source: str, raw: str, candidates: tuple[str, ...]) -> None:
        """Look a value of no stated type up as each type it fits (exact, or PDQ near)."""
        changes: list[str] = []
        for signal_type in candidates:
            value, changes = normalise_signal_value(signal_type, raw)
            self.queries.append(HashInput(source, signal_type, value, candidates))
        for change in changes:
            self.notes[change] += 1
        self.notes[f"looked up as each of {' and '.join(candidates)} (no --type)"] += 1

    def add_lines(self, text: str, default_type: str | None, *, source: str = "list") -> None:
        """Add every line of a hash list (``VALUE`` or ``TYPE:VALUE``; ``#`` comments)."""
        for number, line in enumerate(text.splitlines(keepends=True), start=1):
            if line.endswith("\r\n"):
                self.notes["converted CRLF line ends"] += 1
            body = line.rstrip("\r\n")
            stripped = body.strip()
            if not stripped or stripped.startswith("#"):
                self.notes["passed over blank or comment lines"] += 1
                continue
            if stripped != body:
                self.notes["removed surrounding spaces"] += 1
            signal_type, value = default_type, stripped
            prefixed = _TYPE_PREFIX.fullmatch(stripped)
            if prefixed is not None and prefixed.group(1).lower() in SIGNAL_TYPES:
                signal_type, value = prefixed.group(1).lower(), prefixed.group(2)
            self.add(f"{source} line {number}", signal_type, value)

    def add_file(self, hashes: FileHashes, source: str) -> None:
        """Add the digests (and the PDQ hash, if any) computed for one file."""
        self.files.append(hashes)
        for signal_type in ("md5", "sha1", "sha256"):
            self.queries.append(HashInput(source, signal_type, getattr(hashes, signal_type)))
        if hashes.pdq is not None:
            self.queries.append(HashInput(source, "pdq", hashes.pdq, quality=hashes.pdq_quality))


def decode_hash_list(raw: bytes, name: str, notes: Counter[str]) -> str:
    """The text of a hash list given as bytes: UTF-8, a byte order mark removed.

    Raises:
        NodeError: if the bytes are not UTF-8 text (a binary file), naming
            ``name`` and the first bad byte.
    """
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
        notes["removed byte order mark"] += 1
    if b"\x00" in raw:
        raise NodeError(f"{name} is not a text file (it holds NUL bytes); give a hash list")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NodeError(f"{name} is not UTF-8 text (byte {e.start})") from e
