"""Exceptions raised by the node.

Layer: node (bottom). This module performs no I/O.

::

    NodeError
    ├── ConfigError              bad or missing node directory, config or key
    │   ├── NodeExistsError      init would overwrite an existing node
    │   └── AuditStateError      an auditor's state file is unreadable or corrupt
    ├── StorageError             SQLite failed (wraps sqlite3.Error)
    │   └── SchemaVersionError   database written by a newer hashmesh
    ├── LedgerError              a write the ledger refuses (nothing written)
    │   ├── RetractionError      retracting a missing or already retracted entry
    │   ├── RecoveringError      a restored node signs nothing until it has recovered
    │   ├── ReplicationError     a replicated batch or checkpoint was refused
    │   │   └── FrozenLogError   the origin has fork evidence; nothing more accepted
    │   └── WitnessError         this node, as a witness, refused to cosign
    │       ├── WitnessConflictError  old size is not ours, or same size, other root
    │       └── WitnessProofError     the consistency proof does not verify
    ├── ImportRejectedError      an import file had invalid lines (carries them)
    ├── PublishError             publish refuses its output directory (another log's)
    ├── UnknownLogError          no log with that origin is held here
    ├── IndexPendingError        an index this process waits for is being built (503)
    └── PeerError                a peer failed us during sync (names the peer)
        ├── PeerUnavailableError    cannot connect, TLS refused, timed out, 5xx
        └── PeerProtocolError       malformed, oversized or unexpected response

Protocol-level failures (malformed input, failed verification) are raised as
:class:`protocol.errors.ProtocolError` subclasses and are not wrapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AuditStateError",
    "ConfigError",
    "FrozenLogError",
    "ImportRejectedError",
    "LedgerError",
    "LineError",
    "NodeError",
    "NodeExistsError",
    "PeerError",
    "PeerProtocolError",
    "PeerUnavailableError",
    "PublishError",
    "RecoveringError",
    "ReplicationError",
    "RetractionError",
    "SchemaVersionError",
    "StorageError",
    "UnknownLogError",
    "WitnessConflictError",
    "WitnessError",
    "WitnessProofError",
]


class NodeError(Exception):
    """Root of every error the node raises on its own account."""


class ConfigError(NodeError):
    """The node directory, its config file or its keys are missing or invalid."""


class NodeExistsError(ConfigError):
    """``init`` was asked to create a node where one already exists."""


class AuditStateError(ConfigError):
    """The auditor's state file cannot be read, or fails its own checks (names the field)."""


class StorageError(NodeError):
    """The database failed; the message says which operation."""


class SchemaVersionError(StorageError):
    """The database schema is newer than this version of hashmesh understands."""


class LedgerError(NodeError):
    """The ledger refused a write; nothing was written."""


class PublishError(NodeError):
    """``hashmesh publish`` refuses its output directory; nothing was written.

    The directory holds another origin's log, a tree this log does not
    extend, or files it cannot read or replace.
    """


class RetractionError(LedgerError):
    """A retraction names an entry that does not exist or is already retracted."""


class RecoveringError(LedgerError):
    """The node was restored from a backup and has not recovered its own log yet.

    Until ``hashmesh recover`` (or ``serve``) has fetched what its peers and
    witnesses hold of its own origin beyond the backup, signing anything
    could show them two histories (docs/operations.md).
    """


class ReplicationError(LedgerError):
    """A batch of another origin's log was refused (wrong start, bad entry, bad proof).

    Protocol failures (a bad signature, a root mismatch, a malformed entry)
    are raised as they are; this covers what only the replica can judge.
    """


class FrozenLogError(ReplicationError):
    """The origin has fork evidence: its log is frozen and nothing more is accepted."""


class WitnessError(LedgerError):
    """This node, as a witness, refused to cosign a checkpoint; its state is unchanged."""


class WitnessConflictError(WitnessError):
    """The old size is not the size we last cosigned, or that size with another root (409).

    Attributes:
        origin: the checkpoint's origin.
        size: the size of the latest checkpoint we cosigned for it (0 if none).
    """

    def __init__(self, reason: str, *, origin: str, size: int) -> None:
        self.origin = origin
        self.size = size
        super().__init__(reason)


class WitnessProofError(WitnessError):
    """The consistency proof from our last cosigned checkpoint does not verify (422)."""


class UnknownLogError(NodeError):
    """No log with the requested origin is held by this node."""


class IndexPendingError(NodeError):
    """An index is being built elsewhere; this process waits for it rather than build its own.

    A match worker facing a large PDQ table without a usable index file
    (a first start) waits for ``hashmesh serve`` to write the file
    (docs/matching.md "First start"); the API answers 503 with the message
    and ``Retry-After: retry_after``.
    """

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EntryNotFoundError(NodeError):
    """No entry of a held log matches what was asked for (``field`` names it)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class LineError:
    """One rejected line of an import file (or record: ``record`` names it then)."""

    line: int
    field: str | None
    reason: str
    # Where a record of a structured document is, when a line number says
    # nothing (a VICS media item: "value[0].Media[17]").
    record: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" if self.record is None else self.record
        if self.field:
            where += f", {self.field}" if self.record is None else f".{self.field}"
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


class PeerError(NodeError):
    """A peer failed during sync; nothing it sent in that batch was stored.

    Attributes:
        peer: the peer's name.
        reason: the message without the peer prefix.
    """

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason
        super().__init__(f"peer {peer}: {reason}")


class PeerUnavailableError(PeerError):
    """The peer could not be reached: connection, TLS, timeout or a 5xx answer."""


class PeerProtocolError(PeerError):
    """The peer answered with something malformed, oversized or unexpected."""


class PeerRefusedError(PeerError):
    """The peer understood the request and refused it, saying why (a signed card it refused)."""
