"""The background scrub of ``hashmesh serve``: the fsck checks, a small slice at a time.

Layer: node.ledger. Reads through :class:`node.ledger.database.Database`
(reader threads), writes only the record of damaged logs
(:mod:`node.ledger.damage`) and its own progress file, ``scrub.json``.

Bit rot is found when something reads the damaged bytes; for a listed hash
nobody looks up, that may be never. The scrub reads everything, steadily:
each held log is replayed with :class:`node.ledger.fsck.LogScan` in slices of
``[scrub] slice`` entries (one read each, in a reader thread), paced to
``[scrub] entries_per_second`` (200 by default: ten million entries in
about fourteen hours, so a 10M-entry node is covered within a day), and its
derived tables are compared once the whole log has been read. A pass that
finds a log damaged records it in ``damaged.json``: from then on the API
refuses that log's endpoints (503) and nothing is signed for it until it is
repaired. Damaged derived data is logged with the command that rebuilds it.

:class:`IntegrityState` is the small read-only view of all this that the
API, ``status``, readiness and metrics read: progress per log, passes
completed, the last findings and the damaged logs (re-read from
``damaged.json`` when the file changes, so a damage found by ``hashmesh
fsck`` in another process is honoured too).

A restart does not send the scrub back to the first entry: ``scrub.json``
keeps, per log, the last signed checkpoint the current pass verified, and
the next ``serve`` resumes there, once the stored tree frontier at that size
reproduces the signed root. Such a resumed pass checks the rest of the log
but not the derived tables (they need a replay of the whole log); the next
pass starts from the first entry and checks everything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from node.config import ScrubSettings
from node.errors import ConfigError, NodeError
from node.ledger.damage import Damage, DamageRegister
from node.ledger.database import Database
from node.ledger.fsck import Finding, LogScan
from node.ledger.service import Ledger
from node.storage.connection import describe_sqlite_error, now_text
from node.storage.ledger_store import LogRecord

__all__ = [
    "SAVE_EVERY",
    "SCRUB_FILE",
    "IntegrityState",
    "LogProgress",
    "Scrubber",
    "read_progress",
]

log = logging.getLogger("hashmesh.scrub")

SCRUB_FILE = "scrub.json"
_KEPT_FINDINGS = 50
SAVE_EVERY = 30.0
"""Seconds between saves of the progress within a pass (and of the resume point)."""
_IDLE = 60.0  # seconds to wait before a new pass when nothing is held
_DAMAGE_RECHECK = 1.0  # seconds between stats of damaged.json


@dataclass(frozen=True, slots=True)
class LogProgress:
    """How far the scrub has read one log in the current pass.

    ``start`` is where this pass began (0, or where a pass cut short by a
    restart had verified up to); ``resume`` is where a restart now would
    resume: the last signed checkpoint verified in this pass, 0 once a pass
    is complete (the next one starts from the first entry).
    """

    origin: str
    position: int
    size: int
    passes: int
    last_pass_at: str | None
    start: int = 0
    resume: int = 0

    def to_json(self) -> dict[str, object]:
        """As shown by ``status --json`` and kept in ``scrub.json``."""
        return {
            "origin": self.origin,
            "position": self.position,
            "size": self.size,
            "passes": self.passes,
            "last_pass_at": self.last_pass_at,
            "start": self.start,
            "resume": self.resume,
        }


class IntegrityState:
    """Scrub progress, findings and damaged logs of a serving node (read it, do not change it).

    The API refuses a damaged log's endpoints through :meth:`damage`; the
    operations listener shows :meth:`readiness_reasons` in ``/readyz`` and
    the progress, findings and damaged logs in ``/metrics``; ``status`` reads
    what :meth:`to_json` saved.
    """

    def __init__(self, node_dir: Path, *, enabled: bool = True) -> None:
        self.register = DamageRegister(node_dir)
        self.enabled = enabled
        self.logs: dict[str, LogProgress] = {}
        self.findings: deque[Finding] = deque(maxlen=_KEPT_FINDINGS)
        self.passes = 0
        """Complete passes over every held log since ``serve`` started."""
        self.started_at = now_text()
        self._damaged: dict[str, Damage] = {}
        self._unsaved: dict[str, Damage] = {}  # found when damaged.json could not be written
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self.resume: dict[str, int] = _saved_resume_points(node_dir)
        """Where the last ``serve`` left each log's pass (taken once by the scrub)."""
        self.resumed: dict[str, int] = {}
        """The logs whose first pass resumed where the last ``serve`` left it, and where."""
        self.reload_damage()

    def reload_damage(self) -> dict[str, Damage]:
        """Re-read ``damaged.json`` if it changed; returns the damaged logs."""
        try:
            stat = self.register.path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        except OSError:
            return self._damaged
        if stamp != self._stamp:
            try:
                self._damaged = {**self.register.load(), **self._unsaved}
            except ConfigError as e:
                log.error("%s", e)
            self._stamp = stamp
        return self._damaged

    def record(self, origin: str, first_bad_index: int | None, detail: str) -> Damage:
        """Record a damaged log found by the scrub, in ``damaged.json`` and here."""
        try:
            damage = self.register.mark(origin, first_bad_index, detail, "scrub")
        except OSError as e:
            # A full disk must not let a damaged log be served: keep it here.
            log.error("cannot record damage in %s: %s", self.register.path, e.strerror or e)
            damage = Damage(origin, first_bad_index, detail, "scrub", now_text())
            self._unsaved[origin] = damage
        self._damaged[origin] = damage
        return damage

    def damage(self, origin: str, clock: Callable[[], float] = time.monotonic) -> Damage | None:
        """The damage recorded for ``origin``, or None (checks the file at most once a second)."""
        now = clock()
        if now - self._checked >= _DAMAGE_RECHECK:
            self._checked = now
            self.reload_damage()
        return self._damaged.get(origin)

    @property
    def damaged(self) -> dict[str, Damage]:
        """The damaged logs as last read."""
        return dict(self._damaged)

    def readiness_reasons(self) -> list[str]:
        """One line per damaged log (empty when every log is sound), for a readiness check."""
        return [f"{d}: not served until repaired" for d in self.reload_damage().values()]

    def to_json(self) -> dict[str, object]:
        """The state as ``scrub.json`` keeps it and ``status --json`` shows it."""
        return {
            "enabled": self.enabled,
            "started_at": self.started_at,
            "updated_at": now_text(),
            "passes": self.passes,
            "resumed": dict(self.resumed),
            "logs": [p.to_json() for p in self.logs.values()],
            "findings": [f.to_json() for f in self.findings],
            "damaged": [d.to_json() for d in self._damaged.values()],
        }


def _saved_resume_points(node_dir: Path) -> dict[str, int]:
    doc = read_progress(node_dir)
    logs = doc.get("logs") if doc is not None else None
    points: dict[str, int] = {}
    for item in logs if isinstance(logs, list) else []:
        if isinstance(item, dict) and isinstance(item.get("origin"), str):
            resume = item.get("resume")
            if isinstance(resume, int) and not isinstance(resume, bool) and resume > 0:
                points[item["origin"]] = resume
    return points


def read_progress(node_dir: Path) -> dict[str, object] | None:
    """What the last ``serve`` saved in ``scrub.json``, or None (never run, or unreadable)."""
    try:
        doc = json.loads((node_dir / SCRUB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


_UNREADABLE = (NodeError, sqlite3.Error, UnicodeDecodeError, TypeError, ValueError)
"""What reading a damaged database raises (a flipped byte may change a column's type)."""


def _describe(e: Exception) -> str:
    return describe_sqlite_error(e) if isinstance(e, sqlite3.Error) else str(e)


class Scrubber:
    """Runs the scrub over every held log, pass after pass, until cancelled."""

    def __init__(
        self,
        db: Database,
        node_dir: Path,
        settings: ScrubSettings,
        state: IntegrityState,
        *,
        after_pass: Callable[[], Awaitable[list[str]]] | None = None,
    ) -> None:
        """Scrub ``db``; ``after_pass`` checks what the scrub cannot reach itself.

        That is the serving process's mapped index files; it returns the
        problems it found (and dealt with), logged here.
        """
        self.after_pass = after_pass
        self.db = db
        self.settings = settings
        self.state = state
        self.path = node_dir / SCRUB_FILE
        self._saved = time.monotonic()

    async def run(self) -> None:
        """Scrub forever at the configured pace (cancel the task to stop)."""
        while True:
            try:
                logs = await self.db.read(lambda ledger: ledger.logs())
            except _UNREADABLE as e:
                log.error("scrub: cannot list the logs: %s; run `hashmesh fsck`", _describe(e))
                await asyncio.sleep(_IDLE)
                continue
            held = 0
            for record in logs:
                held += await self._scrub_log(record)
            if self.after_pass is not None:
                for problem in await self.after_pass():
                    log.warning("scrub: %s; rebuilt from the log", problem)
            self.state.passes += 1
            self._save()
            if held == 0:
                await asyncio.sleep(_IDLE)

    async def _scrub_log(self, record: LogRecord) -> int:
        """One pass over one log; returns the entries it held."""
        state = self.state
        origin = record.origin
        if state.damage(origin) is not None:
            return 0  # known damaged: nothing to learn until it is repaired

        resume = state.resume.pop(origin, 0)

        def begin(ledger: Ledger) -> LogScan:
            return LogScan(ledger.store, record, resume_from=resume)

        try:
            scan = await self.db.read(begin)
        except _UNREADABLE as e:
            damage = state.record(origin, None, f"checkpoints unreadable: {_describe(e)}")
            log.error("%s; no longer served; run `hashmesh fsck`", damage)
            return 0
        previous = state.logs.get(origin)
        passes = previous.passes if previous is not None else 0
        last = previous.last_pass_at if previous is not None else None
        start = scan.position
        if scan.partial:
            state.resumed[origin] = start
            log.info("scrub of %s resumes at entry %d, where the last serve left it", origin, start)
        slice_size = self.settings.slice
        pause = slice_size / self.settings.entries_per_second
        while not scan.done:

            def step(ledger: Ledger, scan: LogScan = scan) -> int:
                with ledger.store.read_snapshot():
                    return scan.scan(ledger.store, slice_size)

            try:
                read = await self.db.read(step)
            except _UNREADABLE as e:
                # Rows the scan cannot even read: the log is damaged from here.
                damage = state.record(origin, scan.position, f"unreadable: {_describe(e)}")
                log.error("%s; no longer served; run `hashmesh fsck`", damage)
                return scan.size
            state.logs[origin] = LogProgress(
                origin, scan.position, scan.size, passes, last, start, scan.verified_size
            )
            if time.monotonic() - self._saved >= SAVE_EVERY:
                self._save()
            if read == 0 and not scan.done:
                break
            await asyncio.sleep(pause * max(read, 1) / slice_size)

        def finish(ledger: Ledger, scan: LogScan = scan) -> list[Finding]:
            with ledger.store.read_snapshot():
                return scan.derived_findings(ledger.store)

        try:
            await self.db.read(finish)
        except _UNREADABLE as e:
            scan.findings.append(
                Finding(origin, "derived", "derived tables", None, f"unreadable: {_describe(e)}")
            )
        for finding in scan.findings:
            state.findings.append(finding)
        if scan.log_damaged:
            first = next(f for f in scan.findings if f.part == "log")
            damage = state.record(origin, scan.first_bad_index, first.detail)
            log.error("%s; no longer served; run `hashmesh repair --from-peers`", damage)
        elif scan.findings:
            for finding in scan.findings:
                log.error("scrub: %s", finding)
            log.error("scrub: derived data of %s is damaged; run `hashmesh fsck --repair`", origin)
        state.logs[origin] = LogProgress(
            origin, scan.position, scan.size, passes + 1, now_text(), start, 0
        )
        return scan.size

    def _save(self) -> None:
        self._saved = time.monotonic()
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.state.to_json(), indent=2) + "\n")
            partial.replace(self.path)
        except OSError as e:
            # A full disk must not stop the scrub: progress is only for display.
            log.warning("cannot save scrub progress to %s: %s", self.path, e.strerror or e)
