"""``hashmesh index``: the node's index files (PDQ index, leaf-hash indexes).

Layer: node.cli (composition root). The files live in
:mod:`node.ledger.live_pdq` and :mod:`node.ledger.leaf_index`;
:mod:`node.ledger.index_files` walks them.
"""

from __future__ import annotations

import argparse
import time

from node.cli.output import Command, Output
from node.config import resolve_node_dir
from node.errors import ConfigError
from node.ledger import Ledger
from node.ledger.index_files import index_files
from node.storage.segment_file import SegmentError, open_segment

__all__ = ["register"]


def cmd_index_build(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    started = time.monotonic()
    with Ledger.open(node_dir, read_only=True) as ledger:
        built = ledger.build_index_files()
    for item in built:
        size = item.path.stat().st_size if item.path.exists() else 0
        out.print(f"{item.path}: {item.rows:,} {item.what}, {size:,} bytes")
    out.print(f"built {len(built)} index files in {time.monotonic() - started:.1f} s")
    return 0


def cmd_index_status(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    with Ledger.open(node_dir, read_only=True) as ledger:
        paths = index_files(ledger.index_directory)
    if not paths:
        out.print("no index files yet: `hashmesh serve` writes them, or `hashmesh index build`")
    for path in paths:
        kind = (
            "pdq-index"
            if path.name.startswith("pdq")
            else "active-keys"
            if path.name.startswith("active")
            else "leaf-index"
        )
        try:
            segment = open_segment(path, kind)
        except SegmentError as e:
            out.print(f"{path}: NOT USABLE: {e} (`hashmesh fsck --repair` rebuilds it)")
            continue
        meta = segment.meta
        rows = meta.get("rows", meta.get("covered"))
        out.print(f"{path}: {kind}, {rows:,} rows, {segment.nbytes:,} bytes")
        segment.close()
    return 0


def _need_sub(args: argparse.Namespace, out: Output) -> int:
    raise ConfigError("this command needs an action; see `hashmesh index --help`")


def register(command: Command, common: argparse.ArgumentParser) -> None:
    """Add the ``index`` commands to the ``hashmesh`` parser."""
    p = command(
        "index",
        _need_sub,
        "the node's index files (PDQ index, active keys, leaf-hash indexes): build, status",
        "Matching and proofs by leaf hash use indexes kept as files in the node's "
        "index/ directory and memory-mapped, so a restart is ready in seconds at any "
        "size. `hashmesh serve` writes and updates them by itself (the first start of "
        "a large node builds them in the background); `fsck` checks them against the "
        "log and `fsck --repair` rebuilds them.",
    )
    sub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    q = sub.add_parser(
        "build",
        help="write every index file afresh from the database (serve may keep running)",
        description="Read every PDQ row, every listed hash (the active keys) and every "
        "leaf hash of every held log and write the index files, each replaced atomically: "
        "a running `hashmesh serve` and its match workers switch to a new file at their "
        "next refresh. Takes about 40 s per 10M PDQ hashes and 3 s per million entries.",
        parents=[common],
    )
    q.set_defaults(run=cmd_index_build)
    q = sub.add_parser(
        "status", help="list the index files, their rows and sizes", parents=[common]
    )
    q.set_defaults(run=cmd_index_status)
