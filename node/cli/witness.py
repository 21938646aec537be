"""Witness commands: the witness key, the witnesses asked, the policies required.

Layer: node.cli (composition root). See docs/witness.md.

* ``witness vkey``: print this node's witness key (made on first use); give
  it to the operators of the logs this node witnesses.
* ``witness add PEER KEY``: ask peer PEER, whose witness key is KEY, to cosign
  this node's checkpoints (a ``[[witness.ask]]`` table in ``config.toml``).
* ``witness require ORIGIN --key K ... --threshold N``: accept checkpoints of
  a followed origin only when cosigned by N of these witnesses
  (``[[witness.require]]``).
* ``witness ask``: ask every configured witness now, once.
* ``witness feed TARGET``: cosign a followed origin's checkpoint read from
  where it publishes its log (tlog-tiles, a directory or https), with the
  consistency proof computed from its public tiles.
* ``witness attach FILE...``: keep the cosignatures that witnesses sent
  for this node's published checkpoint (what ``witness feed --out`` wrote),
  each verified first (:mod:`node.ledger.attach`); they are then served and
  published with the checkpoint.
* ``witness status``: what this node witnessed, asks and requires.

Settings take effect when ``hashmesh serve`` starts (restart it after a change).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from node.cli.output import Command, Output
from node.config import (
    WitnessAsk,
    WitnessRequirement,
    append_witness_setting,
    load_config,
    resolve_node_dir,
)
from node.errors import ConfigError, PeerError, WitnessConflictError
from node.ledger import Ledger
from node.ledger.attach import attach_cosignatures
from node.ledger.database import Database
from node.ledger.witness import Cosigned, QuorumWait, load_witness_signer
from node.sync.published import PublishedLog, PublishedTarget, open_published
from node.sync.witness_client import cosign_once
from protocol.checkpoint import checkpoint_size
from protocol.encoding import encode_b64
from protocol.errors import MalformedError
from protocol.keys import NoteVerifier
from protocol.tiles import TileNodeReader
from protocol.tree import compute_consistency_proof

__all__ = ["add_attach_arguments", "attach_files", "register"]


_RESTART = "restart `hashmesh serve` for it to take effect"


def cmd_witness_vkey(args: argparse.Namespace, out: Output) -> int:
    config = load_config(resolve_node_dir(args.dir))
    out.print(load_witness_signer(config).verifier().to_text())
    return 0


def cmd_witness_add(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    with Ledger.open(node_dir, read_only=True) as ledger:
        names = {p.name for p in ledger.peers.list_peers()}
    if args.peer not in names:
        raise ConfigError(f"no peer named {args.peer!r}; add its card with `hashmesh peer add`")
    append_witness_setting(node_dir, WitnessAsk(peer=args.peer, key=args.key))
    out.print(f"asking {args.peer} to cosign this node's checkpoints; {_RESTART}")
    out.note(f"{args.peer} must have this node as a peer (role peer) and follow its origin")
    return 0


def cmd_witness_require(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    requirement = WitnessRequirement(
        origin=args.origin, keys=tuple(args.key), threshold=args.threshold
    )
    append_witness_setting(node_dir, requirement)
    out.print(
        f"checkpoints of {args.origin} now need {args.threshold} of {len(args.key)} witness "
        f"cosignature(s); {_RESTART}"
    )
    return 0


def cmd_witness_ask(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    config = load_config(node_dir)
    if not config.witness.ask:
        raise ConfigError("no witness is configured; add one with `hashmesh witness add`")

    async def run() -> int:
        db = await Database.open(node_dir)
        try:
            outcomes = await cosign_once(
                db, cert_path=config.tls_cert_path, key_path=config.tls_key_path
            )
        finally:
            await db.close()
        failed = 0
        for o in outcomes:
            if o.error:
                failed += 1
                out.note(f"{o.peer}: FAILED: {o.error}")
            elif o.added:
                out.print(f"{o.peer}: cosigned checkpoint {o.size}")
            else:
                out.print(f"{o.peer}: checkpoint {o.size} was already cosigned")
        return 1 if failed else 0

    return asyncio.run(run())


async def _feed(node_dir: Path, log: PublishedLog) -> Cosigned:
    """Cosign ``log``'s checkpoint, proving it extends what this witness cosigned last."""
    with Ledger.open(node_dir, read_only=True) as ledger:
        state = ledger.witnessing.get_state(log.origin)
    old = 0 if state is None else state.size
    new = checkpoint_size(log.note)
    if old > new:
        raise WitnessConflictError(
            f"{log.origin}: {log.source} publishes size {new}, smaller than the size {old} this "
            "witness cosigned: the log went backwards; nothing was cosigned",
            origin=log.origin,
            size=old,
        )
    proof: list[bytes] = []
    if 0 < old < new:
        # The witness checks the proof against the root it cosigned: the tiles need no trust.
        reader = TileNodeReader(new, log.read_tile)
        proof = await asyncio.to_thread(compute_consistency_proof, old, new, reader)
    with Ledger.open(node_dir) as ledger:
        return ledger.witness().add_checkpoint(old, proof, log.note)


def cmd_witness_feed(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    location = args.target
    if location.startswith("http://"):
        raise ConfigError(f"{location}: a published log is read over https only")
    if not location.startswith("https://") and not Path(location).is_dir():
        raise ConfigError(f"{location}: not an https URL or a directory of a published log")
    target = PublishedTarget(location.rstrip("/"), Path(args.ca) if args.ca else None)

    async def run() -> tuple[Cosigned, str]:
        try:
            log = await open_published(target)
        except OSError as e:
            raise ConfigError(f"cannot read {location}/checkpoint: {e.strerror or e}") from e
        try:
            return await _feed(node_dir, log), log.note
        except OSError as e:
            raise ConfigError(f"{location}: cannot read {e.filename}: {e.strerror or e}") from e
        finally:
            await log.close()

    try:
        cosigned, note = asyncio.run(run())
    except PeerError as e:
        raise ConfigError(f"{location}: {e.reason}") from e
    line = cosigned.signature.to_line()
    out.print(f"cosigned {cosigned.origin} at size {cosigned.size} from {location}")
    if args.out:
        Path(args.out).write_text(note + line, encoding="utf-8")
        out.print(f"wrote the cosigned checkpoint to {args.out}")
    else:
        out.print(line.rstrip("\n"))
    return 0


def wait_line(wait: QuorumWait) -> str:
    """One line saying which cosignatures a held-back checkpoint waits for, since when."""
    return (
        f"{wait.origin} size {wait.size:,} since {wait.since}: {len(wait.signed)} of "
        f"{wait.threshold} cosignatures (signed: {', '.join(wait.signed) or 'none'}; "
        f"waiting for {', '.join(wait.missing)})"
    )


def attach_files(
    node_dir: Path,
    paths: list[str],
    keys: list[str],
    origin: str | None,
    out: Output,
    *,
    to_stderr: bool = False,
) -> None:
    """Attach the cosignatures of witness files to the log's checkpoints (all or none).

    What was kept is printed (on stderr with ``to_stderr``, beside a JSON answer).

    Raises:
        ConfigError: a key or a file cannot be read.
        AttachError: a file is refused (an unknown witness, a bad cosignature...).
    """
    verifiers: list[NoteVerifier] = []
    for key in keys:
        try:
            verifiers.append(NoteVerifier.from_text(key))
        except MalformedError as e:
            raise ConfigError(f"--witness-key {key!r}: {e}") from e
    files: list[tuple[str, str]] = []
    for path in paths:
        try:
            files.append((path, Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from e
    with Ledger.open(node_dir) as ledger:
        attached = attach_cosignatures(ledger, files, verifiers, origin=origin)
    say = out.note if to_stderr else out.print
    for path, item in zip(paths, attached, strict=True):
        say(
            f"{path}: checkpoint {item.size} of {item.origin} cosigned by "
            f"{', '.join(item.witnesses)} ({item.new} new line(s) kept)"
        )
        if item.latest > item.size:
            out.note(
                f"the latest checkpoint of {item.origin} is {item.latest}, newer than the "
                f"cosigned {item.size}: it is what is served and published, without these "
                "cosignatures; have the witnesses feed on it again"
            )


def add_attach_arguments(q: argparse.ArgumentParser, files: str) -> None:
    """``--witness-key`` (and the files argument when ``files`` names it) of attaching."""
    if files:
        q.add_argument(
            files,
            nargs="+",
            metavar="FILE",
            help="a cosigned checkpoint note (`hashmesh witness feed --out FILE` on the "
            "witness), or cosignature lines for the latest checkpoint",
        )
    q.add_argument(
        "--witness-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="a witness's verifier key (cosignature/v1; repeat for several); the keys of "
        "[[witness.ask]] and of this origin's [[witness.require]] are trusted too",
    )


def cmd_witness_attach(args: argparse.Namespace, out: Output) -> int:
    attach_files(resolve_node_dir(args.dir), args.files, args.witness_key, args.origin, out)
    return 0


def cmd_witness_status(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    with Ledger.open(node_dir, read_only=True) as ledger:
        config = ledger.config
        store = ledger.witnessing
        states = store.list_states()
        own = ledger.own_log
        latest = ledger.latest_checkpoint()
        held = store.cosignatures(own.log_id, latest.size)
        waits = ledger.witness_waits()
    doc = {
        "witnessed": [
            {
                "origin": s.origin,
                "size": s.size,
                "root_hash": encode_b64(s.root_hash),
                "updated_at": s.updated_at,
            }
            for s in states
        ],
        "ask": [{"peer": a.peer, "key": a.key} for a in config.witness.ask],
        "require": [
            {"origin": r.origin, "keys": list(r.keys), "threshold": r.threshold}
            for r in config.witness.require
        ],
        "own_checkpoint": {
            "size": latest.size,
            "cosigned_by": sorted({c.witness for c in held}),
        },
        "waiting": [w.to_json() for w in waits],
    }
    if args.json:
        out.json(doc)
        return 0
    signers = ", ".join(sorted({c.witness for c in held})) or "no witness yet"
    out.print(f"own checkpoint {latest.size}: cosigned by {signers}")
    for a in config.witness.ask:
        out.print(f"asks {a.peer} ({a.key})")
    for r in config.witness.require:
        out.print(f"requires {r.threshold} of {len(r.keys)} witness(es) for {r.origin}")
    for w in waits:
        out.print(f"waiting: {wait_line(w)}")
    if not states:
        out.print("witnessed: nothing yet (peers ask with POST /v1/witness/add-checkpoint)")
    for s in states:
        out.print(f"witnessed {s.origin}: size {s.size} (cosigned {s.updated_at})")
    return 0


def _need_sub(args: argparse.Namespace, out: Output) -> int:
    raise ConfigError("this command needs an action; see `hashmesh witness --help`")


def register(command: Command, common: argparse.ArgumentParser) -> None:
    """Add the ``witness`` commands to the ``hashmesh`` parser."""
    p = command(
        "witness",
        _need_sub,
        "witness key, witnesses asked, witness policies (docs/witness.md)",
        "A node witnesses the logs it follows: it cosigns a checkpoint only when it "
        "is consistent with the last one it cosigned for that origin (C2SP "
        "tlog-witness). It can ask peers to witness its own log, and require k of n "
        "witnesses' cosignatures before accepting a followed origin's checkpoint.",
    )
    sub = p.add_subparsers(dest="witness_command", required=True, metavar="ACTION")
    q = sub.add_parser(
        "vkey", help="print this node's witness key (made on first use)", parents=[common]
    )
    q.set_defaults(run=cmd_witness_vkey)
    q = sub.add_parser(
        "add",
        help="ask a peer to cosign this node's checkpoints",
        description="Ask PEER (a peer added from its card) to witness this node's log; "
        "KEY is what `hashmesh witness vkey` prints on PEER. Answers by other keys are "
        "ignored.",
        parents=[common],
    )
    q.add_argument("peer", help="the peer's name (see `hashmesh peer list`)")
    q.add_argument("key", help="its witness verifier key (cosignature/v1)")
    q.set_defaults(run=cmd_witness_add)
    q = sub.add_parser(
        "require",
        help="accept an origin's checkpoints only with k of n witness cosignatures",
        parents=[common],
    )
    q.add_argument("origin", help="a followed origin")
    q.add_argument(
        "--key",
        action="append",
        required=True,
        help="a witness verifier key (repeat for each witness)",
    )
    q.add_argument("--threshold", type=int, required=True, help="how many must have cosigned")
    q.set_defaults(run=cmd_witness_require)
    q = sub.add_parser("ask", help="ask every configured witness now, once", parents=[common])
    q.set_defaults(run=cmd_witness_ask)
    q = sub.add_parser(
        "feed",
        help="cosign a followed origin's published checkpoint (tlog-tiles)",
        description="Read the checkpoint a followed origin publishes (a directory, or "
        "https://HOST/PREFIX serving PREFIX/checkpoint and PREFIX/tile/...; no client "
        "certificate), compute the consistency proof from the size this witness last "
        "cosigned out of the public tiles, and cosign it if it extends that size, as "
        "for POST /v1/witness/add-checkpoint. Prints the cosignature line, or writes "
        "the cosigned checkpoint with --out.",
        parents=[common],
    )
    q.add_argument("target", help="the published log: https://HOST/PREFIX or a directory")
    q.add_argument(
        "--ca",
        metavar="PEM",
        help="trust only this certificate for the https server (default: the system's store)",
    )
    q.add_argument("--out", metavar="FILE", help="write the cosigned checkpoint note here")
    q.set_defaults(run=cmd_witness_feed)
    q = sub.add_parser(
        "attach",
        help="keep witnesses' cosignatures of this node's published checkpoint",
        description="Attach the cosignatures that witnesses made of this node's "
        "published checkpoint (each witness runs `hashmesh witness feed URL|DIR --out "
        "FILE` and sends FILE). Each file is checked before anything is kept: the "
        "checkpoint must be one this node signed and holds, and every cosignature line "
        "must be by a known witness key (--witness-key, or configured) and verify; "
        "otherwise nothing is kept and the witness is named. Kept cosignatures are "
        "served with the checkpoint (/v1/checkpoint, the public listener) and written "
        "by the next `hashmesh publish` (or use `hashmesh publish --cosignatures FILE`).",
        parents=[common],
    )
    add_attach_arguments(q, "files")
    q.add_argument("--origin", help="a replicated log instead of the own log")
    q.set_defaults(run=cmd_witness_attach)
    q = sub.add_parser(
        "status", help="what this node witnessed, asks and requires", parents=[common]
    )
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(run=cmd_witness_status)
