"""``hashmesh publish``: write the public tree as static files.

Layer: node.cli (composition root).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from node.cli.output import Command, Output
from node.cli.progress import progress_bar
from node.cli.witness import add_attach_arguments, attach_files
from node.config import resolve_node_dir
from node.ledger import Ledger
from node.ledger.publish import MARKER_FILE, publish

__all__ = ["register"]


def cmd_publish(args: argparse.Namespace, out: Output) -> int:
    target = Path(args.out)
    node_dir = resolve_node_dir(args.dir)
    if args.cosignatures:
        attach_files(
            node_dir, args.cosignatures, args.witness_key, args.origin, out, to_stderr=args.json
        )
    with (
        Ledger.open(node_dir, read_only=True) as ledger,
        progress_bar(out.stderr, None, f"publish {target}", unit="tiles") as bar,
    ):
        tiles = bar.parts(f"publish {target}")  # the total is known once DIR is read
        result = publish(
            ledger, target, origin=args.origin, progress=lambda done, n: tiles("", done, n)
        )
    if args.json:
        out.json(
            {
                "checkpoint_written": result.checkpoint_written,
                "full_tiles": result.full_tiles,
                "old_size": result.old_size,
                "origin": result.origin,
                "partial_tiles": result.partial_tiles,
                "size": result.size,
                "tile_bytes": result.tile_bytes,
            }
        )
        return 0
    if result.tiles:
        out.print(
            f"published {result.origin} at size {result.size} (was {result.old_size}) "
            f"to {target}: {result.full_tiles} full and {result.partial_tiles} partial "
            f"tile(s), {result.tile_bytes:,} bytes, then the checkpoint"
        )
    elif result.checkpoint_written:
        out.print(
            f"{target} already had every tile of {result.origin} at size {result.size}; "
            "wrote the checkpoint (new cosignatures or a first publish)"
        )
    else:
        out.print(f"{target} is up to date: {result.origin} at size {result.size}; nothing written")
    return 0


def register(command: Command, common: argparse.ArgumentParser) -> None:
    """Add ``publish`` to the ``hashmesh`` parser."""
    del common  # no subcommands
    p = command(
        "publish",
        cmd_publish,
        "write the log's public tree (checkpoint and hash tiles) as static files",
        "Write the log's latest signed checkpoint (with the witness cosignatures "
        "held) and its hash tiles into DIR in the C2SP tlog-tiles layout "
        "(checkpoint, tile/<L>/<N>[.p/<W>], tile height 8), for any web server, "
        "CDN or object store to serve; `hashmesh audit DIR|URL --vkey KEY` audits "
        "it. Hash tiles hold only leaf and node hashes, which reveal nothing about "
        "the listed values; entry bundles (tile/entries/...) are never written. "
        "Incremental: run it again after new entries (e.g. from cron) and it adds "
        "only the new tiles, replaces partial tiles atomically and writes the "
        "checkpoint last, so readers never see a checkpoint whose tiles are "
        f"missing. {MARKER_FILE} in DIR records the origin and published size; "
        "DIR holding another origin's log is refused.",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (created if missing)"
    )
    p.add_argument("--origin", help="a replicated log instead of the own log")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument(
        "--cosignatures",
        action="append",
        default=[],
        metavar="FILE",
        help="first attach the witness cosignatures in FILE (repeat for several; see "
        "`hashmesh witness attach`), so the checkpoint written carries them",
    )
    add_attach_arguments(p, "")
