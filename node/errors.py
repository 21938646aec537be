"""Exceptions raised by the node.

Layer: node (bottom). This module performs no I/O.

::

    NodeError
    ├── ConfigError              bad or missing node directory, config or key
    │   └── NodeExistsError      init would overwrite an existing node
    ├── StorageError             SQLite failed (wraps sqlite3.Error)
    │   └── SchemaVersionError   database written by a newer hashmesh
    ├── LedgerError              a write the ledger refuses (nothing written)
    │   └── RetractionError      retracting a missing or already retracted entry
    ├── ImportRejectedError      an import file had invalid lines (carries them)
    └── UnknownLogError          no log with that origin is held here

Protocol-level failures (malformed input, failed verification) are raised as
:class:`protocol.errors.ProtocolError` subclasses and are not wrapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "ImportRejectedError",
    "LedgerError",
    "LineError",
    "NodeError",
    "NodeExistsError",
    "RetractionError",
    "SchemaVersionError",
    "StorageError",
    "UnknownLogError",
]


class NodeError(Exception):
    """Root of every error the node raises on its own account."""


class ConfigError(NodeError):
    """The node directory, its config file or its keys are missing or invalid."""


class NodeExistsError(ConfigError):
    """``init`` was asked to create a node where one already exists."""


class StorageError(NodeError):
    """The database failed; the message says which operation."""


class SchemaVersionError(StorageError):
    """The database schema is newer than this version of hashmesh understands."""


class LedgerError(NodeError):
    """The ledger refused a write; nothing was written."""


class RetractionError(LedgerError):
    """A retraction names an entry that does not exist or is already retracted."""


class UnknownLogError(NodeError):
    """No log with the requested origin is held by this node."""


@dataclass(frozen=True, slots=True)
class LineError:
    """One rejected line of an import file."""

    line: int
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}"
        if self.field:
            where += f", {self.field}"
        return f"{where}: {self.reason}"


class ImportRejectedError(LedgerError):
    """An import found invalid lines and wrote nothing.

    Attributes:
        errors: every invalid line found (the import reads the whole file).
    """

    def __init__(self, errors: Sequence[LineError], *, total_lines: int) -> None:
        self.errors = tuple(errors)
        self.total_lines = total_lines
        first = self.errors[0] if self.errors else None
        super().__init__(
            f"{len(self.errors)} of {total_lines} lines are invalid; nothing was "
            f"imported (first: {first}). Fix them, or pass --skip-invalid"
        )
