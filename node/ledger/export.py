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
import json
from collections.abc import Iterator
from typing import Any, Literal

from node.ledger.rotation import load_key_chain
from node.ledger.service import Ledger
from protocol.bundle import encode_bundle
from protocol.encoding import encode_b64
from protocol.entry import AddEntry, OpinionEntry, RetractEntry, RotateEntry, parse_entry

__all__ = ["EXPORT_FORMATS", "FILE_EXPORTS", "export_lines", "listed_adds"]

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


def _decoded(ledger: Ledger, log_id: int, size: int) -> Iterator[dict[str, Any]]:
    retracted = ledger.store.retracted_targets(log_id, 0, size)
    for index, data, leaf_hash in ledger.store.iter_entries(log_id, 0, size):
        entry = parse_entry(bytes(data))
        row: dict[str, Any] = {"index": index, "kind": entry.kind}
        if isinstance(entry, AddEntry):
            row |= {
                "signal_type": entry.signal_type,
                "value": entry.value,
                "labels": list(entry.labels),
            }
            if entry.quality is not None:
                row["quality"] = entry.quality
            if entry.note is not None:
                row["note"] = entry.note
            row["retracted_by"] = retracted.get(index)
        elif isinstance(entry, RetractEntry):
            row |= {"target": entry.index, "reason": entry.reason}
        elif isinstance(entry, OpinionEntry):
            row |= {
                "target": f"{entry.origin}#{entry.index}",
                "target_leaf_hash": entry.leaf_hash.hex(),
                "verdict": entry.verdict,
            }
            if entry.note is not None:
                row["note"] = entry.note
        elif isinstance(entry, RotateEntry):
            row |= {"key": entry.key, "reason": entry.reason}
        row["leaf_hash"] = bytes(leaf_hash).hex()
        yield row


def export_lines(ledger: Ledger, fmt: ExportFormat, *, origin: str | None = None) -> Iterator[str]:
    """Yield the lines (with newlines) of an export of one log.

    The export covers the log up to its latest signed checkpoint.
    """
    log = ledger.log_for(origin)
    with ledger.store.read_snapshot():  # one committed state for the whole export
        size = ledger.latest_checkpoint(log.origin).size
        if fmt == "ndjson":
            for row in _decoded(ledger, log.log_id, size):
                yield json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
        elif fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(_CSV_COLUMNS)
            for row in _decoded(ledger, log.log_id, size):
                if "labels" in row:
                    row["labels"] = ";".join(row["labels"])
                writer.writerow(["" if row.get(c) is None else row[c] for c in _CSV_COLUMNS])
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
            yield buffer.getvalue()
        elif fmt == "leaves":
            for _index, data, _leaf_hash in ledger.store.iter_entries(log.log_id, 0, size):
                yield encode_b64(bytes(data)) + "\n"
        else:
            notes = [cp.note for cp in ledger.store.iter_checkpoints(log.log_id)]
            yield from encode_bundle(
                origin=log.origin,
                # A rotated log's bundle starts from its first key; verifiers
                # follow the rotate entries among the leaves.
                verifier_key=load_key_chain(ledger.store, log.origin).periods[0].verifier.to_text(),
                checkpoint_notes=notes,
                leaf_count=size,
                leaves=(bytes(d) for _i, d, _h in ledger.store.iter_entries(log.log_id, 0, size)),
            )


def listed_adds(ledger: Ledger, origin: str | None = None) -> Iterator[tuple[int, AddEntry]]:
    """``(index, entry)`` of every add entry not retracted, up to the latest checkpoint.

    Read in one snapshot, like every export.
    """
    log = ledger.log_for(origin)
    with ledger.store.read_snapshot():
        size = ledger.latest_checkpoint(log.origin).size
        retracted = ledger.store.retracted_targets(log.log_id, 0, size)
        for index, data, _leaf_hash in ledger.store.iter_entries(log.log_id, 0, size):
            if index in retracted:
                continue
            entry = parse_entry(bytes(data))
            if isinstance(entry, AddEntry):
                yield index, entry
