"""Federation commands: serve, peer, follow, sync, evidence.

Layer: node.cli (composition root). Each command opens the node, does one
thing and reports; ``serve`` assembles the database, the event hub, the HTTP
API and the sync runner and runs them until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from node.cli.cards import ROLES, Card, make_card, parse_card
from node.cli.logs import configure_logging
from node.cli.output import Command, Output
from node.cli.progress import progress_bar
from node.cli.tls import print_expiry_warnings
from node.config import LOG_FORMATS, LOG_LEVELS, load_config, resolve_node_dir
from node.errors import ConfigError
from node.ledger import Ledger
from node.ledger.cards import holder_expiries
from node.ledger.database import Database
from node.storage.peer_store import EvidenceRecord
from node.sync.engine import PeerSyncReport
from node.sync.runner import sync_once
from protocol.evidence import ForkEvidence, verify_fork_evidence
from protocol.keys import NoteVerifier

__all__ = ["register"]


def _node_dir(args: argparse.Namespace) -> Path:
    return resolve_node_dir(args.dir)


# -- serve ---------------------------------------------------------------------

SERVE_SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the GIL while another waits, in ``hashmesh serve`` (default 0.005)."""


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    from node.api.server import run_server  # the API layer is only needed here

    node_dir = _node_dir(args)
    config = load_config(node_dir)
    listen = args.listen or config.listen
    restore_logging = configure_logging(
        level="debug" if args.verbose else (args.log_level or config.log.level),
        fmt=args.log_format or config.log.format,
        stream=out.stderr,
        access=config.log.access,
    )
    # Heavy requests run Python in threads; a shorter GIL switch interval
    # lets the event loop answer light requests sooner (docs/benchmarks.md).
    # Put back with the logging when serve returns, for in-process callers.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SERVE_SWITCH_INTERVAL)
    # Each listener is named by run_server's log line once it is bound (with
    # the real port of `--listen 127.0.0.1:0`): nothing is printed here.
    try:
        asyncio.run(
            run_server(
                node_dir,
                listen,
                sync=not args.no_sync,
                poll_interval=args.poll,
                start_workers=True,
            )
        )
    finally:
        sys.setswitchinterval(switch_interval)
        restore_logging()
    return 0


# -- peers ---------------------------------------------------------------------


def cmd_peer_card(args: argparse.Namespace, out: Output) -> int:
    node_dir = _node_dir(args)
    config = load_config(node_dir)
    with Ledger.open(node_dir, read_only=True) as ledger:
        vkey = ledger.own_log.verifier_key
    card = make_card(
        name=config.origin,
        url=config.card_url(args.url),
        tls_cert=config.tls_cert_path.read_text(encoding="ascii"),
        vkey=vkey,
    )
    out.print(card.to_json())
    return 0


def _read_card(path: str) -> Card:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read card {path}: {e.strerror or e}") from e
    return parse_card(data)


def cmd_peer_add(args: argparse.Namespace, out: Output) -> int:
    card = _read_card(args.card)
    with Ledger.open(_node_dir(args)) as ledger:
        if card.name == ledger.own_log.origin:
            raise ConfigError("that is this node's own card")
        with ledger.transaction():
            ledger.peers.add_peer(card.peer_record(args.role))
            followed = args.role == "peer" and not args.no_follow
            if followed:
                ledger.follow(card.name, card.vkey)
    out.print(f"added {card.name} as {args.role} (TLS sha256:{card.spki[:16]}…)")
    if followed:
        out.note(f"following {card.name}; a running `hashmesh serve` picks it up within a second")
    return 0


def cmd_peer_list(args: argparse.Namespace, out: Output) -> int:
    with Ledger.open(_node_dir(args), read_only=True) as ledger:
        peers = ledger.peers.list_peers()
        statuses = {s.name: s for s in ledger.peers.peer_statuses()}
        expiries = ledger.certificate_expiries()
    last = holder_expiries(expiries)
    rows = []
    for p in peers:
        s = statuses.get(p.name)
        ends = last.get(p.name)
        rows.append(
            {
                "name": p.name,
                "role": p.role,
                "url": p.url,
                "spki": p.spki,
                "added_at": p.added_at,
                "last_ok_at": s.last_ok_at if s else None,
                "last_error": s.last_error if s else None,
                "last_error_at": s.last_error_at if s else None,
                "tls_expires": ends.not_after.strftime("%Y-%m-%dT%H:%M:%SZ") if ends else None,
            }
        )
    print_expiry_warnings(expiries, out)
    if args.json:
        out.json(rows)
        return 0
    if not rows:
        out.note("no peers; add one with `hashmesh peer add CARD_FILE --role peer`")
    for r in rows:
        state = "never synced"
        if r["last_error"] and (r["last_ok_at"] or "") < (r["last_error_at"] or ""):
            state = f"FAILING since {r['last_error_at']}: {r['last_error']}"
        elif r["last_ok_at"]:
            state = f"ok at {r['last_ok_at']}"
        out.print(f"{r['name']:<40} {r['role']:<10} {r['url']:<28} {state}")
    return 0


def cmd_peer_remove(args: argparse.Namespace, out: Output) -> int:
    with Ledger.open(_node_dir(args)) as ledger:
        record = next((p for p in ledger.peers.list_peers() if p.name == args.name), None)
        if record is None:
            raise ConfigError(f"no peer named {args.name!r}; see `hashmesh peer list`")
        origin = NoteVerifier.from_text(record.vkey).name
        with ledger.transaction():
            ledger.peers.remove_peer(args.name)
            unfollowed = args.unfollow and ledger.peers.remove_follow(origin)
        followed = ledger.peers.get_follow(origin) is not None
        relays = [p.name for p in ledger.peers.list_peers() if p.role == "peer"]
    out.print(f"removed {args.name}; its next request to this node gets 403")
    if unfollowed:
        out.print(
            f"stopped following its origin {origin}: nothing more of it is accepted; "
            "the entries already held are kept"
        )
    elif followed:
        where = f" (relayed by {', '.join(relays)})" if relays else " (no peer left to relay it)"
        out.print(
            f"its origin {origin} is still followed{where}; "
            "`hashmesh peer remove --unfollow` stops following it too"
        )
    return 0


# -- follow --------------------------------------------------------------------


def cmd_follow(args: argparse.Namespace, out: Output) -> int:
    if args.card:
        card = _read_card(args.card)
        origin, vkey = card.name, card.vkey
    elif args.origin and args.vkey:
        origin, vkey = args.origin, args.vkey
    else:
        raise ConfigError("give ORIGIN and VKEY, or --card FILE")
    verifier = NoteVerifier.from_text(vkey)
    if verifier.name != origin:
        raise ConfigError(f"the key is for {verifier.name!r}, not {origin!r}")
    with Ledger.open(_node_dir(args)) as ledger:
        if origin == ledger.own_log.origin:
            raise ConfigError("a node does not follow its own origin")
        ledger.follow(origin, vkey)
    out.print(f"following {origin}; its entries are accepted only when signed by {vkey}")
    if args.witness:
        from node.config import WitnessRequirement, append_witness_setting

        threshold = args.witness_threshold or len(args.witness)
        append_witness_setting(
            _node_dir(args),
            WitnessRequirement(origin=origin, keys=tuple(args.witness), threshold=threshold),
        )
        out.print(
            f"and only when cosigned by {threshold} of {len(args.witness)} witness(es); "
            "restart `hashmesh serve` for that to take effect"
        )
    return 0


# -- sync ----------------------------------------------------------------------

SYNC_FORK_EXIT = 3
"""``hashmesh sync`` exit status when it stored new fork evidence (an origin is frozen)."""


def cmd_sync(args: argparse.Namespace, out: Output) -> int:
    node_dir = _node_dir(args)
    config = load_config(node_dir)

    async def run() -> int:
        db = await Database.open(node_dir)
        try:
            with progress_bar(out.stderr, None, "sync") as bar:
                reports = await sync_once(
                    db,
                    cert_path=config.tls_cert_path,
                    key_path=config.tls_key_path,
                    only_peer=args.peer,
                    progress=bar.parts("sync"),
                )
        finally:
            await db.close()
        failed = sum(1 for r in reports if r.error)
        forked = 0
        if args.json:
            out.json([_report_doc(r) for r in reports])
            forks = sum(r.evidence_added for r in reports) + sum(
                1 for report in reports for r in report.origins if r.verdict == "fork"
            )
            return SYNC_FORK_EXIT if forks else 1 if failed else 0
        if not reports:
            out.note("no peers with role 'peer' to sync from")
        for report in reports:
            if report.error:
                out.note(f"{report.peer}: FAILED: {report.error}")
                continue
            parts = [
                f"{r.origin} {r.verdict} size {r.size} (+{r.appended})" for r in report.origins
            ]
            out.print(f"{report.peer}: " + ("; ".join(parts) or "holds no followed origin"))
            for r in report.origins:
                if r.waiting:
                    out.note(f"{report.peer}: {r.waiting}")
                if r.verdict == "fork":
                    forked += 1
                    out.note(
                        f"{report.peer}: FORK: {r.origin} signed a checkpoint of size "
                        f"{r.peer_size} that contradicts the log held here; evidence stored, "
                        f"origin frozen (hashmesh evidence export {r.origin})"
                    )
            if report.evidence_added:
                forked += report.evidence_added
                out.note(
                    f"{report.peer}: {report.evidence_added} new fork evidence stored; "
                    "the forked origin is frozen (hashmesh evidence list)"
                )
        if forked:
            return SYNC_FORK_EXIT
        return 1 if failed else 0

    return asyncio.run(run())


def _report_doc(report: PeerSyncReport) -> dict[str, object]:
    return {
        "peer": report.peer,
        "ok": report.error is None,
        "error": report.error,
        "error_kind": report.error_kind,
        "evidence_added": report.evidence_added,
        "origins": [
            {"origin": r.origin, "verdict": r.verdict, "size": r.size, "appended": r.appended}
            for r in report.origins
        ],
    }


# -- evidence ------------------------------------------------------------------


def cmd_evidence_list(args: argparse.Namespace, out: Output) -> int:
    with Ledger.open(_node_dir(args), read_only=True) as ledger:
        items = ledger.peers.list_evidence()
    if args.json:
        out.json([_evidence_doc(item) for item in items])
        return 0
    if not items:
        out.note("no fork evidence held")
    for item in items:
        evidence = ForkEvidence.from_json(item.evidence_json)
        out.print(
            f"{item.origin}: fork detected {item.detected_at} (from {item.source}); "
            f"{_sizes(evidence)}"
        )
    return 0


def _fork_sizes(evidence: ForkEvidence) -> tuple[int, int]:
    from protocol.checkpoint import Checkpoint
    from protocol.note import parse_note

    a = Checkpoint.from_text(parse_note(evidence.note_a).text)
    b = Checkpoint.from_text(parse_note(evidence.note_b).text)
    return a.size, b.size


def _sizes(evidence: ForkEvidence) -> str:
    a, b = _fork_sizes(evidence)
    return f"signed checkpoints of sizes {a} and {b} that cannot both be true"


def _evidence_doc(item: EvidenceRecord) -> dict[str, object]:
    a, b = _fork_sizes(ForkEvidence.from_json(item.evidence_json))
    return {
        "origin": item.origin,
        "detected_at": item.detected_at,
        "source": item.source,
        "sizes": [a, b],
    }


def cmd_evidence_export(args: argparse.Namespace, out: Output) -> int:
    with Ledger.open(_node_dir(args), read_only=True) as ledger:
        items = [i for i in ledger.peers.list_evidence() if i.origin == args.origin]
        follows = {f.origin: f.vkey for f in ledger.peers.list_follows()}
    if not items:
        raise ConfigError(f"no fork evidence held for {args.origin!r}")
    evidence = ForkEvidence.from_json(items[0].evidence_json)
    vkey = follows.get(args.origin)
    if vkey is not None:
        verify_fork_evidence(evidence, NoteVerifier.from_text(vkey))
    data = json.loads(evidence.to_json())
    text = json.dumps(data, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        out.note(
            f"wrote evidence to {args.out}; anyone can check it with "
            f"`python -m protocol verify-evidence {args.out} --vkey KEY`"
        )
    else:
        out.stdout.write(text)
    return 0


def register(command: Command, common: argparse.ArgumentParser) -> None:
    """Add the federation commands to the ``hashmesh`` parser."""
    p = command(
        "serve",
        cmd_serve,
        "serve the read API over mutual TLS and keep synced with peers",
        "Serve this node's logs to its peers over HTTPS with client certificates "
        "required, pull every followed origin from every peer (live, on their "
        "announcements, with polling as fallback), until Ctrl-C. With [public] "
        "listen in config.toml, also serve the own log's public tree (checkpoint "
        "and hash tiles, C2SP tlog-tiles) over HTTPS without client certificates. "
        "With [ops] listen, also a plain-HTTP operations listener: /healthz, /readyz, "
        "Prometheus /metrics (docs/monitoring.md) and the analyst console at /console/ "
        "(docs/console.md). Every key: docs/configuration.md.",
    )
    p.add_argument("--listen", metavar="HOST:PORT", help="override the configured address")
    p.add_argument("--no-sync", action="store_true", help="serve only; do not pull from peers")
    p.add_argument(
        "--poll",
        type=float,
        metavar="SECONDS",
        help="fallback poll interval per peer (default: [sync] poll_interval, 30)",
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text lines, or one JSON object per line (default: [log] format, text)",
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="least severe level logged (default: [log] level, info)",
    )

    p = command("peer", _need_sub, "manage peers: card, add, list, remove")
    peer = p.add_subparsers(dest="peer_command", required=True, metavar="ACTION")
    q = peer.add_parser("card", help="print this node's card (give it to peers)", parents=[common])
    q.add_argument(
        "--url",
        "--advertise-url",
        dest="url",
        metavar="URL",
        help="https://HOST:PORT peers should use (default: [api] advertise in config.toml, "
        "else the listen address, which must then not be 0.0.0.0 or ::)",
    )
    q.set_defaults(run=cmd_peer_card)
    q = peer.add_parser(
        "add",
        help="add a peer from its card file",
        parents=[common],
        description="Add a node from its card. Roles: peer (reads, and we sync from it), "
        "subscriber (reads and matches, never writes), auditor (checkpoints, proofs "
        "and leaf hashes only, never hash values). Its TLS certificate is pinned; when "
        "it renews it, its card signed with the key on this card reaches this node by "
        "itself (docs/operations.md, certificate renewal).",
    )
    q.add_argument("card", help="card file (JSON from `hashmesh peer card`)")
    q.add_argument(
        "--role", required=True, choices=ROLES, help="what the node may do here (see above)"
    )
    q.add_argument(
        "--no-follow", action="store_true", help="with role peer: do not follow its origin"
    )
    q.set_defaults(run=cmd_peer_add)
    q = peer.add_parser(
        "list",
        help="list peers, their sync state and certificate expiry",
        parents=[common],
    )
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(run=cmd_peer_list)
    q = peer.add_parser(
        "remove", help="remove a peer (effective on its next request)", parents=[common]
    )
    q.add_argument("name", help="the peer's name (its origin, as `peer list` shows it)")
    q.add_argument(
        "--unfollow",
        action="store_true",
        help="also stop following the peer's own origin (entries already held are kept); "
        "without it, the origin stays followed and other peers may relay it",
    )
    q.set_defaults(run=cmd_peer_remove)

    p = command(
        "follow",
        cmd_follow,
        "accept an origin's log (from any peer that relays it), verified by its key",
    )
    p.add_argument("origin", nargs="?", help="the origin to follow")
    p.add_argument("vkey", nargs="?", help="its verifier key")
    p.add_argument("--card", help="take origin and key from a card file instead")
    p.add_argument(
        "--witness",
        action="append",
        metavar="VKEY",
        help="require cosignatures by this witness key (repeat; see docs/witness.md)",
    )
    p.add_argument(
        "--witness-threshold",
        type=int,
        metavar="K",
        help="how many --witness keys must have cosigned (default: all)",
    )

    p = command(
        "sync",
        cmd_sync,
        "pull every followed origin from every peer once; exits 1 if a peer failed, "
        f"{SYNC_FORK_EXIT} if new fork evidence was stored",
    )
    p.add_argument("--once", action="store_true", help="one round, then exit (the default)")
    p.add_argument("--peer", help="only this peer")
    p.add_argument("--json", action="store_true", help="print each peer's report as JSON")

    p = command("evidence", _need_sub, "fork evidence: list, export")
    ev = p.add_subparsers(dest="evidence_command", required=True, metavar="ACTION")
    q = ev.add_parser("list", help="list held fork evidence", parents=[common])
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(run=cmd_evidence_list)
    q = ev.add_parser(
        "export",
        help="write the evidence of an origin, verifiable with protocol alone",
        parents=[common],
    )
    q.add_argument("origin", help="the frozen origin (as `evidence list` shows it)")
    q.add_argument("--out", metavar="FILE", help="file to write (default: standard output)")
    q.set_defaults(run=cmd_evidence_export)


def _need_sub(args: argparse.Namespace, out: Output) -> int:
    raise ConfigError("this command needs an action; see --help")
