"""What an audit run reports: per source, per origin, and for the whole run.

Layer: node.audit. Plain frozen values; the CLI prints them and saves
:attr:`AuditReport.state`.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.audit.state import AuditState
from protocol.audit import AuditHead, Failure

__all__ = ["AuditReport", "OriginReport", "SourceReport"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceReport:
    """What one source showed of one origin."""

    source: str
    size: int | None
    checkpoints: int
    replay_from: int
    leaves_hashed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OriginReport:
    """The outcome for one origin.

    Attributes:
        status: ``ok``, ``failed`` or ``skipped``.
        head_before: the saved head's size before this run (None: first audit).
        head_after: the head saved by this run (the old one if it failed).
    """

    origin: str
    status: str
    sources: tuple[SourceReport, ...]
    head_before: int | None
    head_after: AuditHead | None
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """Everything one run found; ``state`` is what to save."""

    failures: tuple[Failure, ...]
    origins: tuple[OriginReport, ...]
    notes: tuple[str, ...]
    state: AuditState

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failures
