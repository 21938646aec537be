"""Key commands: rotate the node's signing key, show a key chain.

Layer: node.cli (composition root).
"""

from __future__ import annotations

import argparse

from node.cli.output import Command, Output
from node.config import resolve_node_dir
from node.ledger import Ledger

__all__ = ["register"]


def cmd_key_rotate(args: argparse.Namespace, out: Output) -> int:
    with Ledger.open(resolve_node_dir(args.dir)) as ledger:
        result = ledger.rotate_key(args.reason)
    if args.json:
        out.json(
            {
                "checkpoint": result.checkpoint.note,
                "index": result.index,
                "new_vkey": result.new_vkey,
                "old_vkey": result.old_vkey,
            }
        )
        return 0
    out.print(f"rotated: entry {result.index} names the new key")
    out.print(f"old key (signs checkpoints up to size {result.index + 1}): {result.old_vkey}")
    out.print(f"new key (signs checkpoints from size {result.index + 2}): {result.new_vkey}")
    out.note(
        "followers pick the rotation up on their next sync; give peers a new card "
        "(`hashmesh peer card`) for nodes that follow you from now on"
    )
    return 0


def cmd_key_chain(args: argparse.Namespace, out: Output) -> int:
    with Ledger.open(resolve_node_dir(args.dir), read_only=True) as ledger:
        origin = args.origin or ledger.own_log.origin
        chain = ledger.key_chain(origin)
    periods = [
        {
            "from_size": p.from_size,
            "rotated_by": p.rotated_by,
            "vkey": p.verifier.to_text(),
        }
        for p in chain.periods
    ]
    if args.json:
        out.json({"origin": origin, "periods": periods})
        return 0
    out.print(f"key chain of {origin}:")
    for period in periods:
        how = (
            "pinned or initial key"
            if period["rotated_by"] is None
            else f"rotate entry {period['rotated_by']}"
        )
        out.print(f"  sizes >= {period['from_size']}: {period['vkey']}  ({how})")
    return 0


def _need_sub(args: argparse.Namespace, out: Output) -> int:
    out.note("error: name an action: rotate or chain (see `hashmesh key --help`)")
    return 2


def register(command: Command, common: argparse.ArgumentParser) -> None:
    """Add the ``key`` commands to the ``hashmesh`` parser."""
    p = command(
        "key",
        _need_sub,
        "rotate the log's signing key, or show a log's key chain",
        "Key rotation: `key rotate` appends a rotate entry naming a fresh key, signs "
        "the checkpoint that commits it with the OLD key, and signs every later "
        "checkpoint with the new one. Followers verify each checkpoint with the key its "
        "size calls for. See docs/protocol.md (key rotation) and docs/audit.md.",
    )
    sub = p.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    q = sub.add_parser(
        "rotate",
        help="rotate this node's signing key",
        description="Append a rotate entry naming a new Ed25519 key, commit it under a "
        "checkpoint signed by the current key, then switch to the new key. The old key "
        "file is replaced. If the current key is compromised, run this at once and see "
        "docs/protocol.md for the rest of the procedure.",
        parents=[common],
    )
    q.add_argument(
        "--reason", required=True, help="why (recorded in the log; every follower sees it)"
    )
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(run=cmd_key_rotate)
    q = sub.add_parser(
        "chain",
        help="show which key signs which checkpoint sizes",
        description="Show the key chain of the own log or of a followed origin.",
        parents=[common],
    )
    q.add_argument("--origin", help="a followed origin instead of the own log")
    q.add_argument("--json", action="store_true", help="print the chain as JSON")
    q.set_defaults(run=cmd_key_chain)
