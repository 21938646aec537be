"""Exports for threat-intelligence tools: a MISP feed and a STIX 2.1 bundle.

Layer: node.ledger. Writes only where the caller names (a directory for
MISP, a file for STIX): exports hold hash values.

Both carry the listed entries of one log (retracted entries are left out),
with labels as MISP tags or STIX labels. Identifiers are derived from the
origin and the entry index (UUIDv5), so exporting again gives the same
event, attribute and indicator ids and a consumer updates what it holds
instead of duplicating it.

* MISP (the feed layout MISP's "Add feed" reads, and PyMISP loads): one
  ``EVENT_UUID.json`` per batch of ``batch`` consecutive indexes,
  ``manifest.json`` (written last, so a reader never sees an event that is
  missing) and ``hashes.csv``. Attributes are typed ``md5``, ``sha1``,
  ``sha256``; MISP has no attribute type for PDQ or PhotoDNA, so those
  entries are left out and counted.
* STIX 2.1: one bundle with an ``identity`` for the origin and one
  ``indicator`` per entry, pattern ``[file:hashes.'SHA-256' = '...']``;
  PDQ and PhotoDNA use the custom hash names ``x_pdq`` and ``x_photodna``
  (STIX 2.1 section 2.7, custom hash keys).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from protocol.entry import AddEntry

__all__ = [
    "MISP_BATCH",
    "STIX_HASH_NAMES",
    "ReplacingFile",
    "write_misp_feed",
    "write_stix_bundle",
]

MISP_BATCH = 10_000
"""Entries per MISP event: MISP handles events of thousands of attributes well."""

_MISP_TYPES = ("md5", "sha1", "sha256")

STIX_HASH_NAMES = {
    "md5": "MD5",
    "sha1": "SHA-1",
    "sha256": "SHA-256",
    "pdq": "x_pdq",
    "photodna": "x_photodna",
}
"""The STIX ``hashes`` key of each signal type (custom ones prefixed ``x_``)."""

# A fixed namespace: the same origin and index give the same id in every export.
_NAMESPACE = uuid.UUID("4f1f6a39-5f0e-4d35-9a55-3d8b7c0e2a61")


def _id(*parts: object) -> str:
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(str(p) for p in parts)))


def _batches(
    entries: Iterable[tuple[int, AddEntry]], size: int
) -> Iterator[tuple[int, list[tuple[int, AddEntry]]]]:
    """Entries grouped by index // size (the batch number names its event)."""
    current: list[tuple[int, AddEntry]] = []
    number = -1
    for index, entry in entries:
        if index // size != number:
            if current:
                yield number, current
            current, number = [], index // size
        current.append((index, entry))
    if current:
        yield number, current


def write_misp_feed(
    directory: Path,
    origin: str,
    entries: Iterable[tuple[int, AddEntry]],
    *,
    batch: int = MISP_BATCH,
    now: datetime | None = None,
) -> tuple[int, int, Counter[str]]:
    """Write a MISP feed of ``entries`` (index, add entry) into ``directory``.

    Returns:
        (events written, attributes written, entries left out by reason).
    """
    directory.mkdir(parents=True, exist_ok=True)
    moment = now or datetime.now(UTC)
    timestamp = str(int(moment.timestamp()))
    date = moment.date().isoformat()
    org = {"name": origin, "uuid": _id("org", origin)}
    manifest: dict[str, Any] = {}
    left_out: Counter[str] = Counter()
    attributes = 0
    with ReplacingFile(directory / "hashes.csv") as hashes:
        for number, group in _batches(entries, batch):
            event_id = _id("misp-event", origin, batch, number)
            first, last = number * batch, number * batch + batch - 1
            info = f"hashmesh {origin} entries {first}-{last}"
            rows = []
            for index, entry in group:
                if entry.signal_type not in _MISP_TYPES:
                    left_out[f"{entry.signal_type}: MISP has no attribute type for it"] += 1
                    continue
                attribute_id = _id("misp-attribute", origin, index)
                rows.append(
                    {
                        "uuid": attribute_id,
                        "type": entry.signal_type,
                        "category": "Payload delivery",
                        "value": entry.value,
                        "to_ids": True,
                        "timestamp": timestamp,
                        "comment": f"{origin} #{index}",
                        "Tag": [{"name": label} for label in entry.labels],
                    }
                )
                digest = hashlib.md5(entry.value.encode(), usedforsecurity=False).hexdigest()
                hashes.write(f"{digest},{event_id}\n")
            if not rows:
                continue
            tags = [{"name": f'hashmesh:origin="{origin}"'}]
            event = {
                "uuid": event_id,
                "info": info,
                "date": date,
                "timestamp": timestamp,
                "publish_timestamp": timestamp,
                "published": True,
                "analysis": 2,  # complete
                "threat_level_id": 4,  # undefined: MISP's scale is about cyber threats
                "Orgc": org,
                "Tag": tags,
                "Attribute": rows,
            }
            with ReplacingFile(directory / f"{event_id}.json") as f:
                json.dump({"Event": event}, f, separators=(",", ":"))
            manifest[event_id] = {
                key: event[key] for key in ("info", "date", "analysis", "threat_level_id", "Orgc")
            } | {"Tag": tags, "timestamp": int(timestamp)}  # MISP's manifests hold a number
            attributes += len(rows)
    with ReplacingFile(directory / "manifest.json") as f:
        json.dump(manifest, f, indent=1)
    return len(manifest), attributes, left_out


class ReplacingFile:
    """A text file written beside its target, renamed over it only when complete.

    A failed or interrupted export leaves the previous file (or none), never half a one.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.partial = target.with_name(target.name + ".partial")

    def __enter__(self) -> IO[str]:
        self.file = self.partial.open("w", encoding="utf-8", newline="\n")
        return self.file

    def __exit__(self, kind: object, *_rest: object) -> None:
        self.file.close()
        if kind is None:
            os.replace(self.partial, self.target)
        else:
            self.partial.unlink(missing_ok=True)


def _stix_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def write_stix_bundle(
    stream: IO[str],
    origin: str,
    entries: Iterable[tuple[int, AddEntry]],
    *,
    now: datetime | None = None,
) -> int:
    """Write a STIX 2.1 bundle of ``entries`` (index, add entry); return the indicators written."""
    moment = _stix_time(now or datetime.now(UTC))
    identity = {
        "type": "identity",
        "spec_version": "2.1",
        "id": f"identity--{_id('stix-identity', origin)}",
        "created": moment,
        "modified": moment,
        "name": origin,
        "identity_class": "organization",
        "description": f"the hashmesh log {origin}",
    }
    stream.write('{"type":"bundle","id":"bundle--')
    stream.write(str(uuid.uuid4()))
    stream.write('","objects":[')
    stream.write(json.dumps(identity, separators=(",", ":")))
    count = 0
    for index, entry in entries:
        key = STIX_HASH_NAMES[entry.signal_type]
        indicator: dict[str, Any] = {
            "type": "indicator",
            "spec_version": "2.1",
            "id": f"indicator--{_id('stix-indicator', origin, index)}",
            "created_by_ref": identity["id"],
            "created": moment,
            "modified": moment,
            "name": f"{entry.signal_type} listed in {origin} as entry {index}",
            "pattern": f"[file:hashes.'{key}' = '{entry.value}']",
            "pattern_type": "stix",
            "pattern_version": "2.1",
            "valid_from": moment,
            "external_references": [
                {"source_name": "hashmesh", "external_id": f"{origin}#{index}"}
            ],
        }
        if entry.labels:
            indicator["labels"] = list(entry.labels)
        stream.write(",")
        stream.write(json.dumps(indicator, separators=(",", ":")))
        count += 1
    stream.write("]}\n")
    return count
