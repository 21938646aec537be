"""``hashmesh fsck``: check the log against its checkpoints and derived data against the log.

Layer: node.cli (composition root). The checks live in :mod:`node.ledger.fsck`;
the record of damaged logs in :mod:`node.ledger.damage`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sqlite3
from pathlib import Path
from typing import Any

from node.cli.output import Command, Output
from node.cli.progress import StagedProgress, progress_bar
from node.config import load_config, resolve_node_dir
from node.errors import NodeError, StorageError
from node.ledger import Ledger
from node.ledger.damage import DamageRegister
from node.ledger.database import Database
from node.ledger.fsck import Finding, LogScan, entries_part
from node.ledger.scrub import read_progress
from node.storage.connection import describe_sqlite_error
from node.sync.repair import RepairReport, repair_from_peers
from protocol.errors import ProtocolError
from protocol.evidence import ForkEvidence, verify_fork_evidence

__all__ = ["integrity_json", "integrity_lines", "register", "run_checks"]


class _Report:
    """What one fsck run found, over every log."""

    def __init__(self) -> None:
        self.database: list[str] = []
        self.scans: list[LogScan] = []
        self.errors: list[Finding] = []  # a log that could not even be read
        self.notes: list[str] = []
        self.unlisted = False  # the logs table itself could not be read

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.scans for f in s.findings] + self.errors

    @property
    def damaged_logs(self) -> dict[str, int | None]:
        """Origin -> first bad index of every log whose entries or checkpoints fail."""
        found: dict[str, int | None] = {}
        for finding in self.findings:
            if finding.part == "log" and finding.origin not in found:
                found[finding.origin] = finding.index
        for scan in self.scans:
            if scan.log_damaged:
                found[scan.log.origin] = scan.first_bad_index
        return found

    @property
    def ok(self) -> bool:
        return not self.database and not self.findings

    @property
    def only_derived(self) -> bool:
        """Every log verifies, so a rebuild of derived data may fix the rest.

        SQLite's integrity check may also fail then (a broken B-tree of a
        derived table, which the rebuild drops); the check after the repair
        says whether it did.
        """
        return (
            not self.unlisted
            and not self.damaged_logs
            and all(f.part == "derived" for f in self.findings)
        )


def run_checks(ledger: Ledger, progress: StagedProgress | None = None) -> _Report:
    """Every check of ``hashmesh fsck``, each failure turned into a finding (never raised).

    ``progress`` is told the entries scanned of each log (the part is its origin).
    """
    report = _Report()
    try:
        integrity = ledger.integrity_check()
    except Exception as e:  # noqa: BLE001 - SQLite's message itself may quote damaged bytes
        integrity = [_describe(e)]
    if integrity != ["ok"]:
        report.database.append("sqlite integrity_check: " + "; ".join(integrity[:5]))
    try:
        report.errors.extend(ledger.guard_findings())
    except Exception as e:  # noqa: BLE001 - fsck reports damage, whatever form it takes
        report.database.append(f"cannot read the schema: {_describe(e)}")
    try:
        logs = ledger.logs()
    except Exception as e:  # noqa: BLE001 - fsck reports damage, whatever form it takes
        report.database.append(f"cannot list the logs: {_describe(e)}")
        report.unlisted = True
        return report
    for log in logs:
        try:
            total = functools.partial(ledger.held_entries, log.origin)
            scan = ledger.check(log, entries_part(progress, log.origin, total))
        except (sqlite3.Error, NodeError, ProtocolError) as e:
            detail = describe_sqlite_error(e) if isinstance(e, sqlite3.Error) else str(e)
            report.errors.append(
                Finding(log.origin, "log", "entries", None, f"unreadable: {detail}")
            )
            continue
        report.scans.append(scan)
        if scan.size > scan.signed_size and not log.is_own:
            report.notes.append(
                f"{log.origin}: {scan.size - scan.signed_size:,} entries past the latest "
                "checkpoint (a catch-up in progress)"
            )
        verified = "every entry" if not scan.log_damaged else f"{scan.position:,} entries"
        report.notes.append(
            f"{log.origin}: {scan.size:,} entries held, {verified} checked, "
            f"{scan.checkpoints_checked:,} checkpoints"
        )
    if not report.damaged_logs:
        try:
            report.errors.extend(ledger.check_index_files())
        except Exception as e:  # noqa: BLE001 - fsck reports damage, whatever form it takes
            report.database.append(f"cannot check the index files: {_describe(e)}")
    try:
        for item in ledger.peers.list_evidence():
            follow = ledger.peers.get_follow(item.origin)
            try:
                evidence = ForkEvidence.from_json(item.evidence_json)
                if follow is not None:
                    verify_fork_evidence(evidence, ledger.key_chain(item.origin))
            except ProtocolError as e:
                report.errors.append(
                    Finding(
                        item.origin,
                        "log",
                        "evidence",
                        None,
                        f"stored fork evidence does not verify: {e}",
                    )
                )
            else:
                report.notes.append(
                    f"{item.origin}: FROZEN by verified fork evidence ({item.detected_at})"
                )
    except Exception as e:  # noqa: BLE001 - fsck reports damage, whatever form it takes
        report.database.append(f"cannot read fork evidence: {_describe(e)}")
    return report


def _describe(e: Exception) -> str:
    """A failure met while reading a damaged database, in one line."""
    if isinstance(e, sqlite3.Error):
        return describe_sqlite_error(e)
    if isinstance(e, (NodeError, ProtocolError)):
        return str(e)
    if isinstance(e, UnicodeDecodeError):
        return f"a stored text is not valid UTF-8 ({e.reason})"
    return f"{type(e).__name__}: {e}"


def _record(register: DamageRegister, report: _Report, out: Output) -> None:
    """Mark damaged logs; clear the records of logs that verify again."""
    damaged = report.damaged_logs
    try:
        for origin, index in damaged.items():
            first = next(f for f in report.findings if f.origin == origin and f.part == "log")
            register.mark(origin, index, first.detail, "fsck")
        for scan in report.scans:
            if scan.log.origin not in damaged and register.clear(scan.log.origin):
                out.note(f"{scan.log.origin}: verifies again; its damage record is cleared")
    except OSError as e:
        # The findings still get printed; the record is what could not be kept.
        report.database.append(f"cannot update {register.path}: {e.strerror or e}")


def _print(report: _Report, out: Output, *, as_json: bool, repaired: bool) -> None:
    if as_json:
        doc: dict[str, Any] = {
            "ok": report.ok,
            "repaired": repaired,
            "database": report.database,
            "logs": [
                {
                    "origin": s.log.origin,
                    "entries": s.position,
                    "checkpoints": s.checkpoints_checked,
                    "first_bad_index": s.first_bad_index,
                    "log_damaged": s.log_damaged,
                }
                for s in report.scans
            ],
            "findings": [f.to_json() for f in report.findings],
            "notes": report.notes,
        }
        out.json(doc)
        return
    for note in report.notes:
        out.note(note)
    for problem in report.database:
        out.print(f"PROBLEM: {problem}")
    for finding in report.findings:
        out.print(f"PROBLEM: {finding}")
    for origin, index in report.damaged_logs.items():
        where = "" if index is None else f" from entry {index}"
        out.print(
            f"DAMAGED: log {origin}{where}: not served or signed until repaired; "
            "run `hashmesh repair --from-peers`"
        )
    if report.ok:
        out.print(
            "ok: database intact, every checkpoint verifies, roots recompute, "
            "derived data matches the log"
        )
    elif report.only_derived and not report.database:
        out.print("derived data only: `hashmesh fsck --repair` rebuilds it from the log")
    elif report.only_derived:
        out.print(
            "every log verifies: `hashmesh fsck --repair` rebuilds the derived data, which "
            "may also mend the database (it checks again); otherwise restore from a backup"
        )


def cmd_fsck(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    register = DamageRegister(node_dir)
    try:
        ledger = Ledger.open(node_dir, read_only=True)
    except StorageError as e:
        out.print(f"PROBLEM: {str(e).removesuffix('; run `hashmesh fsck`')}")
        out.print(
            "DAMAGED: the database file cannot be read at all; restore it from a backup "
            "(`hashmesh repair --from-peers` needs a readable database)"
        )
        return 1
    with ledger, progress_bar(out.stderr, None, "fsck") as bar:
        report = run_checks(ledger, bar.parts("fsck"))
    _record(register, report, out)
    repaired = False
    if args.repair and not report.ok:
        if not report.only_derived:
            _print(report, out, as_json=args.json, repaired=False)
            raise NodeError(
                "fsck --repair rebuilds derived data only from logs that verify: "
                + (
                    "repair the damaged log(s) first (`hashmesh repair --from-peers`); "
                    if report.damaged_logs
                    else "the logs cannot be read (see above); restore the database from a backup; "
                )
                + "nothing was written"
            )
        with progress_bar(out.stderr, None, "fsck --repair") as bar:
            report = _repair(node_dir, bar.parts("fsck --repair"))
        repaired = True
        _record(register, report, out)
    _print(report, out, as_json=args.json, repaired=repaired)
    if repaired and report.ok and not args.json:
        out.print(
            "repaired: derived data rebuilt from the log in one transaction; checked again: ok"
        )
    return 0 if report.ok else 1


def _repair(node_dir: Path, progress: StagedProgress) -> _Report:
    # Ledger.open in write mode: the repair needs the write lock, not the key.
    with Ledger.open(node_dir, read_only=False) as ledger:
        ledger.repair_derived(progress)
        # The index files derive from the tables just rebuilt.
        ledger.build_index_files()
        return run_checks(ledger, lambda origin, done, n: progress(f"fsck {origin}", done, n))


def integrity_json(node_dir: Path) -> dict[str, Any]:
    """Damaged logs and the last scrub's progress, for ``status --json``."""
    try:
        damaged = [d.to_json() for d in DamageRegister(node_dir).load().values()]
    except NodeError as e:
        damaged = [{"origin": None, "detail": str(e)}]
    return {"damaged": damaged, "scrub": read_progress(node_dir)}


def integrity_lines(node_dir: Path) -> list[str]:
    """Damaged logs and the last scrub's progress, as ``status`` prints them."""
    doc = integrity_json(node_dir)
    lines = [
        f"DAMAGED:          {d['origin']} from entry {d.get('first_bad_index')} "
        f"({d['detail']}; found by {d.get('found_by')}); not served or signed until repaired"
        for d in doc["damaged"]
    ]
    scrub = doc["scrub"]
    if isinstance(scrub, dict):
        logs = scrub.get("logs") or []
        done = sum(int(entry.get("position", 0)) for entry in logs if isinstance(entry, dict))
        held = sum(int(entry.get("size", 0)) for entry in logs if isinstance(entry, dict))
        findings = scrub.get("findings") or []
        lines.append(
            f"scrub:            {scrub.get('passes', 0)} passes since {scrub.get('started_at')}, "
            f"{done:,} of {held:,} entries in this pass, {len(findings)} findings "
            f"(at {scrub.get('updated_at')})"
        )
    return lines


def cmd_repair(args: argparse.Namespace, out: Output) -> int:
    if not args.from_peers:
        raise NodeError(
            "say where the good copy comes from: `hashmesh repair --from-peers` (derived "
            "data alone is rebuilt by `hashmesh fsck --repair`)"
        )
    node_dir = resolve_node_dir(args.dir)
    config = load_config(node_dir)
    if args.origin is not None:
        origins = [args.origin]
    else:
        origins = sorted(DamageRegister(node_dir).load()) or [config.origin]

    async def run(progress: StagedProgress) -> list[RepairReport]:
        db = await Database.open(node_dir, readers=1)
        try:
            return [
                await repair_from_peers(
                    db,
                    node_dir,
                    origin,
                    cert_path=config.tls_cert_path,
                    key_path=config.tls_key_path,
                    only_peer=args.peer,
                    progress=progress,
                )
                for origin in origins
            ]
        finally:
            await db.close()

    with progress_bar(out.stderr, None, "repair") as bar:
        reports = asyncio.run(run(bar.parts("repair")))
    for report in reports:
        for refusal in report.refusals:
            out.note(f"refused: {refusal}")
        if not report.ranges:
            out.print(
                f"{report.origin}: verifies; nothing to fetch (derived data checked and rebuilt)"
            )
            continue
        for plan, peer, written in report.ranges:
            out.print(
                f"{report.origin}: entries {plan.start}..{plan.end - 1} from {peer} give our "
                f"signed root of size {plan.end}: {written} damaged entries replaced"
            )
        out.print(f"{report.origin}: repaired; derived data rebuilt; served and signed again")
    return 0


def register(command: Command, common: argparse.ArgumentParser) -> None:
    """Add ``fsck`` and ``repair`` to the ``hashmesh`` parser."""
    del common
    p = command(
        "repair",
        cmd_repair,
        "fetch a damaged log's entries again from peers holding the same log",
        "Fetch the damaged entries of a log (named by `hashmesh fsck`) from peers "
        "(role peer) that hold the same log, range by range, and write a range only "
        "if, after our verified entries, it gives exactly the root of our own signed "
        "checkpoint: a peer with another history cannot. Then rebuild the derived "
        "data and clear the damage record, so the log is served and signed again. "
        "Stop `hashmesh serve` first or not: the writes are transactions.",
    )
    p.add_argument(
        "--from-peers",
        action="store_true",
        help="fetch from the peers in the peers table (the only source for now)",
    )
    p.add_argument(
        "--origin",
        help="the damaged log (default: every log recorded as damaged, else the own log)",
    )
    p.add_argument("--peer", metavar="NAME", help="ask only this peer")
    p = command(
        "fsck",
        cmd_fsck,
        "check the database, every signature, every root and all derived data",
        "Check the database: SQLite's own integrity check; every stored checkpoint "
        "against its signature; every entry against the roots of the signed "
        "checkpoints (the first bad entry is named, and the log is then neither "
        "served nor signed until repaired from a peer: `hashmesh repair "
        "--from-peers`); and every derived table against the log itself: stored "
        "leaf hashes and tree nodes, the active index (hash -> entry), PDQ rows, "
        "opinions, retraction state, and the index files (index/*.seg: PDQ index, "
        "leaf-hash indexes). Exit status 1 when anything is wrong.",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="rebuild derived data from the verified log in one transaction and the index "
        "files from it, then check again",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
