"""Backup commands: backup, restore, recover.

Layer: node.cli (composition root). The formats and checks are
:mod:`node.ledger.backup`'s; recovery is :mod:`node.sync.recovery`'s.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from node.cli.output import Command, Output
from node.cli.progress import StagedProgress, progress_bar
from node.config import load_config, resolve_node_dir
from node.errors import ConfigError, RecoveringError
from node.ledger import Ledger
from node.ledger.backup import make_backup, mark_recovering, restore_backup
from node.ledger.database import Database
from node.sync.recovery import RecoveryReport, recover_own_log

__all__ = ["register"]


def cmd_backup(args: argparse.Namespace, out: Output) -> int:
    with progress_bar(out.stderr, None, "backup", unit="B") as bar:
        result = make_backup(resolve_node_dir(args.dir), Path(args.out), bar.parts("backup"))
    out.print(f"wrote {result.path} (mode 0600): {result.origin} at size {result.log_size:,}")
    out.print(f"sha256 {result.sha256}  (also in {result.checksum_path})")
    out.note(
        "the file holds the signing key, the TLS key and every hash value: keep it "
        "encrypted and off shared storage"
    )
    return 0


def cmd_restore(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    if args.in_place:
        if args.file is not None:
            raise ConfigError("give a backup FILE or --in-place, not both")
        with Ledger.open(node_dir, read_only=True) as ledger:
            size = ledger.latest_checkpoint().size
        mark_recovering(node_dir, size, "unknown (restored in place)")
        out.print(f"marked {node_dir} as restored: own log size {size:,}; it is RECOVERING")
    else:
        if args.file is None:
            raise ConfigError("give the backup FILE to restore (or --in-place)")
        if args.dir is None:
            raise ConfigError("give --dir DIR: a backup is restored into a new directory")
        with progress_bar(out.stderr, None, "restore", unit="B") as bar:
            result = restore_backup(Path(args.file), node_dir, bar.parts("restore"))
        out.print(
            f"restored {result.origin} (own log size {result.log_size:,}, backup made "
            f"{result.created_at}) into {result.node_dir}; it is RECOVERING"
        )
    out.note(
        "it signs nothing until `hashmesh recover` (or `hashmesh serve`) has asked its peers "
        "and witnesses for what they hold of its own log beyond the backup"
    )
    return 0


def _report(report: RecoveryReport, out: Output, *, as_json: bool) -> None:
    if as_json:
        out.json(
            {
                "origin": report.origin,
                "backup_size": report.backup_size,
                "size": report.size,
                "recovered": report.recovered,
                "reason": report.reason,
                "answers": [
                    {"name": a.name, "kind": a.kind, "size": a.size, "error": a.error}
                    for a in report.answers
                ],
            }
        )
        return
    for a in report.answers:
        if a.error is not None:
            out.note(f"{a.kind} {a.name}: NOT REACHED: {a.error}")
        elif a.size is None:
            out.note(f"{a.kind} {a.name}: holds nothing of this log")
        else:
            out.note(f"{a.kind} {a.name}: size {a.size:,}")


def cmd_recover(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    config = load_config(node_dir)

    async def run(progress: StagedProgress) -> RecoveryReport:
        db = await Database.open(node_dir)
        try:
            return await recover_own_log(
                db,
                cert_path=config.tls_cert_path,
                key_path=config.tls_key_path,
                accept_fork_risk=args.accept_fork_risk,
                progress=progress,
            )
        finally:
            await db.close()

    with progress_bar(out.stderr, None, "recover") as bar:
        report = asyncio.run(run(bar.parts("recover")))
    _report(report, out, as_json=args.json)
    if not report.recovered:
        raise RecoveringError(f"still recovering, signing nothing: {report.reason}")
    if not args.json:
        if not report.was_recovering:
            out.print(f"{report.origin}: not recovering; nothing to do")
        elif not report.answers:
            out.print(
                f"recovered {report.origin} at size {report.size:,}: no peer (role peer) or "
                "witness is configured, so none could hold more; the node signs again"
            )
        else:
            out.print(
                f"recovered {report.origin}: size {report.backup_size:,} -> {report.size:,}; "
                "the node signs again, continuing from this head"
            )
    return 0


def register(command: Command, common: argparse.ArgumentParser) -> None:
    """Add ``backup``, ``restore`` and ``recover`` to the ``hashmesh`` parser."""
    p = command(
        "backup",
        cmd_backup,
        "write a consistent backup of this node (also while `serve` runs)",
        "Copy the database (SQLite's online backup: one consistent state, writers go on), "
        "config.toml, the signing, witness and TLS keys and certificates into one tar file "
        "(mode 0600) with the SHA-256 of every member, and FILE.sha256 beside it. The file "
        "holds keys and every hash value: keep it encrypted, never on shared storage. "
        "Restore with `hashmesh restore FILE --dir DIR` (docs/operations.md).",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the backup file to create")

    p = command(
        "restore",
        cmd_restore,
        "restore a backup into a new node directory; the node starts RECOVERING",
        "Check a backup (every member's SHA-256, FILE.sha256 if present, the database's "
        "integrity) and unpack it into --dir, which must be new or empty. The restored node "
        "is RECOVERING: it signs nothing (add, import, retract, opinion, key rotate, witness "
        "cosignatures) until `hashmesh recover` or `hashmesh serve` has fetched what its "
        "peers and witnesses hold of its own log beyond the backup, so nobody ever sees two "
        "histories of it. --in-place marks a node whose database was restored by other "
        "means (Litestream) the same way.",
    )
    p.add_argument("file", nargs="?", help="the backup file (from `hashmesh backup`)")
    p.add_argument(
        "--in-place",
        action="store_true",
        help="no FILE: mark the node in --dir as restored (its database came from "
        "Litestream or a disk snapshot) so it recovers before it signs",
    )

    p = command(
        "recover",
        cmd_recover,
        "bring a restored node's own log up to what its peers and witnesses hold",
        "Ask every peer (role peer) for its latest checkpoint of this node's own log and "
        "fetch, verify and append what it holds beyond ours (byte for byte, as any replica); "
        "ask every [[witness.ask]] witness which size it cosigned. When all answered and "
        "none holds more than the log now does, the node signs again, continuing from the "
        "true head. Exit status 1, naming them, if some could not be reached. "
        "`hashmesh serve` does the same in the background.",
    )
    p.add_argument(
        "--accept-fork-risk",
        action="store_true",
        help="sign again although some peers or witnesses could not be asked: if they hold "
        "checkpoints beyond this node's head, its next write forks its own log and every "
        "node that sees both freezes it",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
