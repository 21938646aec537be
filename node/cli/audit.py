"""``hashmesh audit``: audit live nodes (as an auditor) and bundles, incrementally.

Layer: node.cli (composition root). Parses the command line, reads cards,
keys and the state file, runs :func:`node.audit.run.run_audit` and reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from node.audit.report import AuditReport
from node.audit.run import AuditOptions, NodeTarget, PublishedTarget, run_audit
from node.audit.state import (
    STATE_ENV,
    default_state_path,
    load_state,
    locked_state,
    save_state,
)
from node.cli.cards import parse_card
from node.cli.output import Command, Output
from node.cli.progress import progress_bar
from node.config import load_config, resolve_node_dir
from node.errors import ConfigError
from node.ledger.cards import read_own_card_note
from protocol.audit import CHECKS, Failure
from protocol.errors import MalformedError
from protocol.keys import SIG_ED25519, NoteVerifier

__all__ = ["register"]


_DESCRIPTION = f"""\
Audit hashmesh logs: live nodes over mutual TLS (as a peer with role
'auditor', which sees checkpoints, proofs and leaf hashes but never hash
values or labels), audit bundles (`hashmesh export --format bundle`), and
logs published as C2SP tlog-tiles (a checkpoint and hash tiles, which
anyone may read: no certificate needed).

A target is a published log when it is a directory (`hashmesh publish --out
DIR`) or an https URL with a path (https://HOST/PREFIX, serving
PREFIX/checkpoint and PREFIX/tile/...); with --published every URL is one.
Its server is trusted through the system's store, or only --ca PEM (a node's
own certificate for its public listener). A bare https://HOST:PORT is a
node's API, audited live over mutual TLS; any other file is a bundle.

For every origin a target holds and a key is trusted for, it checks:
  signature     every checkpoint is signed by the origin's key (following
                key rotations proven in bundles)
  consistency   every checkpoint extends the earlier ones, and the head saved
                by the last audit (a history rewritten since is caught here)
  leaves        the leaf hashes produce every signed root (a published
                log's tiles hash to its checkpoint; a wrong tile is named)
  split-view    every node and bundle shows the same history of the origin
  history       the origin's own node still serves what was audited before
  key           a bundle's or the state's key agrees with the pinned one
  entries       with --check-entries, every bundle leaf is a canonical entry
An auditor needs a TLS identity and the auditor role at each node: create
one with `hashmesh init --dir auditor --origin auditor.example/audit` (the
log it also gets is never used), hand `hashmesh --dir auditor peer card` to
each node's operator, who runs `hashmesh peer add CARD --role auditor`, and
audit with their cards (--card) and `--dir auditor` (or --cert/--key).
With --dir, the auditor's signed card (once `hashmesh --dir auditor tls
renew` has run) is presented to every node audited, so each trusts the
renewed certificate without a card by hand (docs/operations.md).

Failures print as `FAIL <check> origin=O source=S [OLD -> NEW]: why`; a
proven fork comes with evidence that `python -m protocol verify-evidence
FILE --vkey KEY` checks with nothing but the origin's key.

The state file (--state, default ${STATE_ENV} or
$XDG_STATE_HOME/hashmesh/audit-state.json) remembers per origin the key chain
and the last verified tree, so the next run fetches only newer leaf hashes.
Exit status: 0 when every check passed, 1 when any failed or on an error,
2 on a usage error.

examples:
  hashmesh audit --card a.card.json --card b.card.json --dir auditor
  hashmesh audit https://10.0.0.5:8443 --server-cert a-tls.pem \\
      --cert me.crt --key me.key --vkey hotline-a.example/hashmesh+1a2b3c4d+AQ...
  hashmesh audit a.bundle b.bundle --vkey a.vkey --json
  hashmesh audit https://hotline-a.example/log --vkey a.vkey
  hashmesh audit ./published --vkey a.vkey
"""


def _read_key(text: str) -> NoteVerifier:
    path = Path(text)
    if "+" not in text or path.is_file():
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"--vkey {text}: not a key and not a readable file") from e
    try:
        verifier = NoteVerifier.from_text(text)
    except MalformedError as e:
        raise ConfigError(f"--vkey {text}: {e}") from e
    if verifier.sig_type != SIG_ED25519:
        raise ConfigError(f"--vkey {text}: a log key has signature type 0x01")
    return verifier


def _read_pem(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the certificate {path}: {e}") from e


def _is_published_url(url: str, every: bool) -> bool:
    """A URL with a path (a prefix) is a published log; a bare host and port is a node's API."""
    return every or urlsplit(url).path.strip("/") != ""


def _targets(
    args: argparse.Namespace,
) -> tuple[list[NodeTarget], list[Path], list[PublishedTarget], dict[str, str]]:
    keys: dict[str, str] = {}

    def trust(origin: str, vkey: str, where: str) -> None:
        if keys.get(origin, vkey) != vkey:
            raise ConfigError(f"{where}: another key than {keys[origin]} is given for {origin}")
        keys[origin] = vkey

    for text in args.vkey:
        verifier = _read_key(text)
        trust(verifier.name, verifier.to_text(), f"--vkey {text}")
    nodes: dict[str, NodeTarget] = {}
    for path in args.card:
        try:
            card = parse_card(Path(path).read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read card {path}: {e.strerror or e}") from e
        trust(card.name, card.vkey, f"card {path}")
        nodes[card.url] = NodeTarget(url=card.url, server_cert_pem=card.tls_cert, vkey=card.vkey)
    server_pems = "".join(_read_pem(p) for p in args.server_cert)
    ca = Path(args.ca) if args.ca else None
    if ca is not None:
        _read_pem(args.ca)
    bundles: list[Path] = []
    published: list[PublishedTarget] = []
    for target in args.targets:
        if target.startswith(("https://", "http://")):
            url = target.rstrip("/")
            if _is_published_url(url, args.published):
                if url.startswith("http://"):
                    raise ConfigError(f"{target}: a published log is audited over https only")
                published.append(PublishedTarget(url, ca))
                continue
            if url.startswith("http://"):
                raise ConfigError(f"{target}: nodes are audited over https (mutual TLS) only")
            if url in nodes:
                continue
            if not server_pems:
                raise ConfigError(
                    f"{target}: pin the node's TLS certificate with --server-cert PEM "
                    "(or give its card with --card)"
                )
            nodes[url] = NodeTarget(url=url, server_cert_pem=server_pems)
        elif Path(target).is_dir():
            published.append(PublishedTarget(target))
        else:
            bundles.append(Path(target))
    return list(nodes.values()), bundles, published, keys


def _identity(args: argparse.Namespace, live: bool) -> tuple[Path | None, Path | None, str | None]:
    """The auditor's TLS certificate and key, and its signed card when it has one."""
    if args.cert or args.key:
        if not (args.cert and args.key):
            raise ConfigError("give both --cert and --key")
        return Path(args.cert), Path(args.key), None
    if not live:
        return None, None, None
    node_dir = resolve_node_dir(getattr(args, "dir", None))
    try:
        config = load_config(node_dir)
    except ConfigError as e:
        raise ConfigError(
            "a live audit needs the auditor's TLS identity: --cert FILE --key FILE "
            f"(or --dir of a hashmesh node whose identity to use; {e})"
        ) from e
    # Presented to each node audited, so a renewed certificate needs no card by hand.
    return config.tls_cert_path, config.tls_key_path, read_own_card_note(config)


def _evidence_name(failure: Failure, index: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", failure.origin)
    return f"fork-{safe}-{failure.old_size}-{failure.new_size}-{index}.json"


def _write_evidence(report: AuditReport, directory: str | None) -> dict[int, str]:
    written: dict[int, str] = {}
    if directory is None:
        return written
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for i, failure in enumerate(report.failures):
        if failure.evidence is None:
            continue
        path = out / _evidence_name(failure, i)
        text = json.dumps(failure.evidence.to_json_obj(), indent=2) + "\n"
        path.write_text(text, encoding="utf-8")
        written[i] = str(path)
    return written


def _json_report(
    report: AuditReport, state_path: Path, saved: bool, files: dict[int, str]
) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "state": str(state_path),
        "state_saved": saved,
        "failures": [
            {
                "check": f.check,
                "origin": f.origin,
                "source": f.source,
                "message": f.message,
                "old_size": f.old_size,
                "new_size": f.new_size,
                "evidence": f.evidence.to_json_obj() if f.evidence else None,
                "evidence_file": files.get(i),
            }
            for i, f in enumerate(report.failures)
        ],
        "origins": [
            {
                "origin": o.origin,
                "status": o.status,
                "head_before": o.head_before,
                "head_after": None
                if o.head_after is None
                else {"size": o.head_after.size, "root": o.head_after.root_hash.hex()},
                "keys": list(o.keys),
                "sources": [
                    {
                        "source": s.source,
                        "size": s.size,
                        "checkpoints": s.checkpoints,
                        "replay_from": s.replay_from,
                        "leaves_hashed": s.leaves_hashed,
                    }
                    for s in o.sources
                ],
            }
            for o in report.origins
        ],
        "notes": list(report.notes),
    }


def _text_report(
    report: AuditReport, out: Output, state_path: Path, saved: bool, files: dict[int, str]
) -> None:
    for o in report.origins:
        if o.status == "skipped":
            continue
        before = "first audit" if o.head_before is None else f"from size {o.head_before}"
        after = o.head_after.size if o.head_after is not None else "-"
        word = "ok  " if o.status == "ok" else "FAIL"
        out.print(f"{word} origin={o.origin} ({before}, head now {after})")
        for s in o.sources:
            leaves = (
                f"{s.leaves_hashed} leaf hash{'es' if s.leaves_hashed > 1 else ''} "
                f"from {s.replay_from}"
                if s.leaves_hashed
                else "no new leaves"
            )
            out.print(
                f"       {s.source}: size {s.size}, "
                f"{s.checkpoints} checkpoint(s) verified, {leaves}"
            )
    for i, f in enumerate(report.failures):
        out.print(f.line())
        if f.evidence is not None:
            where = files.get(i)
            out.print(
                f"       fork evidence: {where}"
                if where
                else "       fork evidence held: save it with --evidence-dir DIR or see --json"
            )
    for note in report.notes:
        out.note(f"note: {note}")
    audited = sum(1 for o in report.origins if o.status != "skipped")
    state = f"state saved to {state_path}" if saved else f"state {state_path} not changed"
    if report.ok:
        out.print(f"OK: {audited} origin(s) audited, every check passed; {state}")
    else:
        checks = sorted({f.check for f in report.failures}, key=CHECKS.index)
        out.print(
            f"FAILED: {len(report.failures)} failure(s) ({', '.join(checks)}) in "
            f"{audited} origin(s) audited; {state}"
        )


def cmd_audit(args: argparse.Namespace, out: Output) -> int:
    nodes, bundles, published, keys = _targets(args)
    if not nodes and not bundles and not published:
        raise ConfigError(
            "nothing to audit: give node URLs, --card files, bundle files or published logs"
        )
    cert, key, card = _identity(args, bool(nodes))
    state_path = Path(args.state) if args.state else default_state_path()
    options = AuditOptions(
        cert_path=cert,
        key_path=key,
        trusted_keys=keys,
        full=args.full,
        check_entries=args.check_entries,
        origins=frozenset(args.origin) if args.origin else None,
        card=card,
    )
    with locked_state(state_path):
        state = load_state(state_path)
        with progress_bar(out.stderr, None, "audit", unit="hashes") as bar:
            report = asyncio.run(
                run_audit(nodes, bundles, state, options, published, bar.parts("audit"))
            )
        saved = not args.no_save and report.state != state
        if saved:
            save_state(state_path, report.state)
    files = _write_evidence(report, args.evidence_dir)
    if args.json:
        out.json(_json_report(report, state_path, saved, files))
    else:
        _text_report(report, out, state_path, saved, files)
    return 0 if report.ok else 1


def register(command: Command, common: argparse.ArgumentParser) -> None:
    """Add ``hashmesh audit`` to the parser."""
    p = command(
        "audit",
        cmd_audit,
        "audit live nodes and bundles: signatures, consistency, leaves, split views",
        _DESCRIPTION,
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="a node URL (https://HOST:PORT), an audit bundle file, or a published log "
        "(https://HOST/PREFIX or a directory)",
    )
    p.add_argument(
        "--card",
        action="append",
        default=[],
        metavar="FILE",
        help="a node's card: audit it live, pin its TLS certificate and trust its key "
        "for its own origin (repeatable)",
    )
    p.add_argument(
        "--server-cert",
        action="append",
        default=[],
        metavar="PEM",
        help="TLS certificate to pin for node URLs given without a card (repeatable)",
    )
    p.add_argument(
        "--published",
        action="store_true",
        help="every URL target is a published log (tlog-tiles), even one without a path",
    )
    p.add_argument(
        "--ca",
        metavar="PEM",
        help="trust only this certificate for published logs over https (default: the "
        "system's trust store)",
    )
    p.add_argument("--cert", metavar="PEM", help="the auditor's TLS certificate")
    p.add_argument("--key", metavar="PEM", help="the auditor's TLS private key")
    p.add_argument(
        "--vkey",
        action="append",
        default=[],
        metavar="KEY",
        help="an origin's verifier key, or a file holding it (repeatable)",
    )
    p.add_argument(
        "--origin", action="append", metavar="ORIGIN", help="audit only this origin (repeatable)"
    )
    p.add_argument(
        "--state",
        metavar="FILE",
        help=f"state file (default ${STATE_ENV}, else $XDG_STATE_HOME/hashmesh/audit-state.json)",
    )
    p.add_argument("--no-save", action="store_true", help="do not update the state file")
    p.add_argument(
        "--full",
        action="store_true",
        help="re-fetch every leaf hash from zero (the saved head is still checked)",
    )
    p.add_argument(
        "--check-entries",
        action="store_true",
        help="also check every bundle leaf is a canonical entry, retractions included (slower)",
    )
    p.add_argument(
        "--evidence-dir", metavar="DIR", help="write each fork evidence found as a JSON file here"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
