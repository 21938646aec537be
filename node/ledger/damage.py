"""Logs found damaged, remembered across processes until they are repaired.

Layer: node.ledger. Reads and writes one small JSON file in the node
directory, ``damaged.json``.

A log whose entries or checkpoints no longer verify must not be served or
signed: a checkpoint signed over a damaged tree would commit this node to a
history it never had, and peers would see a fork. ``hashmesh fsck`` and the
background scrub of ``hashmesh serve`` record what they find here; the
ledger refuses to sign for a log recorded here, ``serve`` refuses its
endpoints, and ``status`` shows it. Only ``hashmesh fsck`` (once the log
verifies again) and ``hashmesh repair --from-peers`` clear a record.

A file rather than a table: the database is what is damaged, and the record
must be readable (and writable) when the database is not.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError, LedgerError
from node.storage.connection import now_text

__all__ = ["DAMAGE_FILE", "Damage", "DamageRegister", "DamagedLogError"]

DAMAGE_FILE = "damaged.json"


class DamagedLogError(LedgerError):
    """The log is recorded as damaged: nothing is signed or served for it until repaired."""


@dataclass(frozen=True, slots=True)
class Damage:
    """One damaged log: where the damage starts and who found it when."""

    origin: str
    first_bad_index: int | None
    detail: str
    found_by: str
    found_at: str

    def __str__(self) -> str:
        where = "" if self.first_bad_index is None else f" from entry {self.first_bad_index}"
        return (
            f"log {self.origin} is damaged{where} ({self.detail}; found by {self.found_by} "
            f"at {self.found_at})"
        )

    def to_json(self) -> dict[str, object]:
        """The record as stored and as ``status --json`` shows it."""
        return {
            "origin": self.origin,
            "first_bad_index": self.first_bad_index,
            "detail": self.detail,
            "found_by": self.found_by,
            "found_at": self.found_at,
        }


class DamageRegister:
    """The damaged logs recorded in one node directory."""

    def __init__(self, node_dir: Path) -> None:
        self.path = node_dir / DAMAGE_FILE

    def load(self) -> dict[str, Damage]:
        """Every recorded damaged log, by origin (empty when none or no file).

        Raises:
            ConfigError: if the file exists but cannot be read as a register.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise ConfigError(f"cannot read {self.path}: {e.strerror or e}") from e
        try:
            items = json.loads(text)["damaged"]
            found = [
                Damage(
                    origin=str(d["origin"]),
                    first_bad_index=None
                    if d["first_bad_index"] is None
                    else int(d["first_bad_index"]),
                    detail=str(d["detail"]),
                    found_by=str(d["found_by"]),
                    found_at=str(d["found_at"]),
                )
                for d in items
            ]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{self.path} is not a damage record ({e}); delete it only after "
                "`hashmesh fsck` reports every log sound"
            ) from e
        return {d.origin: d for d in found}

    def get(self, origin: str) -> Damage | None:
        """The record of one log, or None."""
        return self.load().get(origin)

    def mark(self, origin: str, first_bad_index: int | None, detail: str, found_by: str) -> Damage:
        """Record a log as damaged (keeps the earliest bad index already recorded)."""
        records = self.load()
        old = records.get(origin)
        if old is not None and (
            first_bad_index is None
            or (old.first_bad_index is not None and old.first_bad_index <= first_bad_index)
        ):
            return old
        damage = Damage(origin, first_bad_index, detail, found_by, now_text())
        records[origin] = damage
        self._save(records)
        return damage

    def clear(self, origin: str) -> bool:
        """Forget a log's record once it verifies again; True if there was one."""
        records = self.load()
        if records.pop(origin, None) is None:
            return False
        self._save(records)
        return True

    def check_writable(self, origin: str, *, doing: str = "signed") -> None:
        """Refuse to sign for (or publish) a damaged log.

        Raises:
            DamagedLogError: if ``origin`` is recorded as damaged.
        """
        damage = self.get(origin)
        if damage is not None:
            raise DamagedLogError(
                f"{damage}: nothing is {doing} for it until it is repaired "
                "(`hashmesh repair --from-peers`; `hashmesh fsck` clears the record once it "
                "verifies); nothing was written"
            )

    def _save(self, records: dict[str, Damage]) -> None:
        if not records:
            self.path.unlink(missing_ok=True)
            return
        doc = {"damaged": [d.to_json() for d in sorted(records.values(), key=lambda d: d.origin)]}
        partial = self.path.with_name(self.path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        partial.replace(self.path)
