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
* ``witness status``: what this node witnessed, asks and requires.

Settings take effect when ``hashmesh serve`` starts (restart it after a change).
"""

from __future__ import annotations

import argparse
import asyncio

from node.cli.output import Command, Output
from node.config import (
    WitnessAsk,
    WitnessRequirement,
    append_witness_setting,
    load_config,
    resolve_node_dir,
)
from node.errors import ConfigError
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.witness import load_witness_signer
from node.sync.witness_client import cosign_once
from protocol.encoding import encode_b64

__all__ = ["register"]


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


def cmd_witness_status(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    with Ledger.open(node_dir, read_only=True) as ledger:
        config = ledger.config
        store = ledger.witnessing
        states = store.list_states()
        own = ledger.own_log
        latest = ledger.latest_checkpoint()
        held = store.cosignatures(own.log_id, latest.size)
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
        "status", help="what this node witnessed, asks and requires", parents=[common]
    )
    q.add_argument("--json", action="store_true")
    q.set_defaults(run=cmd_witness_status)
