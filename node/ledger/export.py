"""Exporting a log: decoded entries (NDJSON, CSV), raw leaves, audit bundles.

Layer: node.ledger. Reads the database; the caller writes the lines.

Every export reads one consistent snapshot: a read transaction is held for
the whole export, so entries appended meanwhile are not half included.

Salts (``docs/protocol.md`` §1.0) appear only where exact entry bytes do:
in ``leaves`` and ``bundle``. The decoded rows of ``ndjson`` and ``csv``
name each entry's fields and leaf hash but not its salt, which is of use
only to recompute a leaf hash from the bytes.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any, Literal

from node.ledger.rotation import load_key_chain
from node.ledger.service import Ledger
from protocol.bundle import encode_bundle
from protocol.encoding import encode_b64
from protocol.entry import (
    AddEntry,
    Entry,
    OpinionEntry,
    RetractEntry,
    RotateEntry,
    parse_entries,
)

__all__ = ["EXPORT_FORMATS", "FILE_EXPORTS", "export_lines", "export_text", "listed_adds"]

EXPORT_FORMATS = ("ndjson", "csv", "leaves", "bundle")
FILE_EXPORTS = ("vics", "misp", "stix")
"""Exports for other tools (node.ledger.vics, node.ledger.feeds): listed entries only."""
ExportFormat = Literal["ndjson", "csv", "leaves", "bundle"]

_CSV_COLUMNS = [
    "index",
    "kind",
    "signal_type",
    "value",
    "quality",
    "labels",
    "note",
    "target",
    "reason",
    "verdict",
    "target_leaf_hash",
    "key",
    "retracted_by",
    "leaf_hash",
]


_CHUNK = 10_000
"""Entries read, parsed and written per step: one ``fetchmany``, one ``writerows``."""

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""One encoder for every row (``json.dumps`` with options builds one per call)."""

Progress = Callable[[int], None]
"""Called after each chunk with the number of entries exported so far."""


def _chunks(ledger: Ledger, log_id: int, size: int) -> Iterator[list[tuple[int, Any, Any]]]:
    rows = ledger.store.iter_entries(log_id, 0, size)
    while chunk := list(itertools.islice(rows, _CHUNK)):
        yield chunk


def _row(index: int, entry: Entry, retracted: dict[int, int]) -> dict[str, Any]:
    """The decoded fields of one entry (the keys of its NDJSON object, in their order)."""
    row: dict[str, Any] = {"index": index, "kind": entry.kind}
    if isinstance(entry, AddEntry):
        row["signal_type"] = entry.signal_type
        row["value"] = entry.value
        row["labels"] = list(entry.labels)
        if entry.quality is not None:
            row["quality"] = entry.quality
        if entry.note is not None:
            row["note"] = entry.note
        row["retracted_by"] = retracted.get(index)
    elif isinstance(entry, RetractEntry):
        row["target"] = entry.index
        row["reason"] = entry.reason
    elif isinstance(entry, OpinionEntry):
        row["target"] = f"{entry.origin}#{entry.index}"
        row["target_leaf_hash"] = entry.leaf_hash.hex()
        row["verdict"] = entry.verdict
        if entry.note is not None:
            row["note"] = entry.note
    elif isinstance(entry, RotateEntry):
        row["key"] = entry.key
        row["reason"] = entry.reason
    return row


def _decoded(
    ledger: Ledger, log_id: int, size: int, progress: Progress | None
) -> Iterator[list[tuple[int, Entry, bytes]]]:
    """The log's entries in chunks, parsed with the bulk parser (stored entries are canonical)."""
    done = 0
    for chunk in _chunks(ledger, log_id, size):
        entries = parse_entries([bytes(data) for _i, data, _h in chunk], chunk[0][0])
        yield [(row[0], entry, row[2]) for row, entry in zip(chunk, entries, strict=True)]
        done += len(chunk)
        if progress is not None:
            progress(done)


def _csv_cells(index: int, entry: Entry, leaf_hash: bytes, retracted: dict[int, int]) -> list[Any]:
    if type(entry) is AddEntry:  # the common case, one list display
        return [
            index,
            "add",
            entry.signal_type,
            entry.value,
            "" if entry.quality is None else entry.quality,
            ";".join(entry.labels),
            "" if entry.note is None else entry.note,
            "",
            "",
            "",
            "",
            "",
            retracted.get(index, ""),
            leaf_hash.hex(),
        ]
    row = _row(index, entry, retracted)
    row["leaf_hash"] = leaf_hash.hex()
    return ["" if row.get(c) is None else row[c] for c in _CSV_COLUMNS]


def export_text(
    ledger: Ledger,
    fmt: ExportFormat,
    *,
    origin: str | None = None,
    progress: Progress | None = None,
) -> Iterator[str]:
    """Yield an export of one log as text, in chunks of whole lines.

    The export covers the log up to its latest signed checkpoint, read in
    one snapshot. ``progress`` is called with the entries done so far,
    once per chunk of :data:`_CHUNK`.
    """
    log = ledger.log_for(origin)
    with ledger.store.read_snapshot():  # one committed state for the whole export
        size = ledger.latest_checkpoint(log.origin).size
        if fmt in ("ndjson", "csv"):
            retracted = ledger.store.retracted_targets(log.log_id, 0, size)
            chunks = _decoded(ledger, log.log_id, size, progress)
        if fmt == "ndjson":
            for chunk in chunks:
                lines = []
                for index, entry, leaf_hash in chunk:
                    row = _row(index, entry, retracted)
                    row["leaf_hash"] = bytes(leaf_hash).hex()
                    lines.append(_JSON(row))
                yield "\n".join(lines) + "\n"
        elif fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(_CSV_COLUMNS)
            for chunk in chunks:
                writer.writerows(
                    _csv_cells(index, entry, bytes(leaf_hash), retracted)
                    for index, entry, leaf_hash in chunk
                )
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
            yield buffer.getvalue()
        elif fmt == "leaves":
            done = 0
            for stored in _chunks(ledger, log.log_id, size):
                yield "".join([encode_b64(bytes(data)) + "\n" for _i, data, _h in stored])
                done += len(stored)
                if progress is not None:
                    progress(done)
        else:
            notes = [cp.note for cp in ledger.store.iter_checkpoints(log.log_id)]
            yield from encode_bundle(
                origin=log.origin,
                # A rotated log's bundle starts from its first key; verifiers
                # follow the rotate entries among the leaves.
                verifier_key=load_key_chain(ledger.store, log.origin).periods[0].verifier.to_text(),
                checkpoint_notes=notes,
                leaf_count=size,
                leaves=_bundle_leaves(ledger, log.log_id, size, progress),
            )


def _bundle_leaves(
    ledger: Ledger, log_id: int, size: int, progress: Progress | None
) -> Iterator[bytes]:
    """The log's entry bytes for a bundle, read in chunks; ``progress`` after each chunk."""
    done = 0
    for stored in _chunks(ledger, log_id, size):
        yield from [bytes(data) for _i, data, _h in stored]
        done += len(stored)
        if progress is not None:
            progress(done)


def listed_adds(
    ledger: Ledger, origin: str | None = None, progress: Progress | None = None
) -> Iterator[tuple[int, AddEntry]]:
    """``(index, entry)`` of every add entry not retracted, up to the latest checkpoint.

    Read in one snapshot, like every export, and parsed in chunks like them;
    ``progress`` is called with the entries read so far, once per chunk.
    """
    log = ledger.log_for(origin)
    with ledger.store.read_snapshot():
        size = ledger.latest_checkpoint(log.origin).size
        retracted = ledger.store.retracted_targets(log.log_id, 0, size)
        for chunk in _decoded(ledger, log.log_id, size, progress):
            for index, entry, _leaf_hash in chunk:
                if isinstance(entry, AddEntry) and index not in retracted:
                    yield index, entry


def export_lines(ledger: Ledger, fmt: ExportFormat, *, origin: str | None = None) -> Iterator[str]:
    """:func:`export_text` split into lines (with their newlines), for small logs and tests.

    A CSV field holding a newline (in a note) is split across two lines here;
    :func:`export_text` keeps records whole.
    """
    for chunk in export_text(ledger, fmt, origin=origin):
        yield from chunk.splitlines(keepends=True)
