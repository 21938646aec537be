"""Imports into a large node with ``active`` in two levels: time and bytes, merges included.

    .venv/bin/python benchmarks/bench_active_levels.py --node COPY [--lines 200000] [--rounds 6]

``COPY`` is a node you own (it is written: e.g. a copy of the 10M node of
``bench_scale.py``). In this process, a fresh node in a temporary directory
(the baseline) and then ``COPY`` each import ``--rounds`` files of
``--lines`` random sha256 values through ``Ledger.import_lines`` (what
``hashmesh import`` runs); an import ends with a merge of ``active`` into
``active_base`` when one is due (:mod:`node.ledger.active_levels`), and its
time and bytes are counted in that import's. Per round: entries/s, bytes
written to disk (``write_bytes`` of ``/proc/self/io``) per entry, the merge
if there was one; then the totals over all rounds (the merge cost amortised
over the entries) and their ratio to the fresh node's, and the load average.
``--merge`` finally merges what is left in ``active`` of ``COPY`` and reports
that merge alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.ledger import Ledger  # noqa: E402
from node.ledger.active_levels import merge_active, merge_bound  # noqa: E402
from node.ledger.hashlist import HashListReader  # noqa: E402
from node.ledger.provision import init_node  # noqa: E402


def written() -> int:
    """Bytes this process has had written to disk so far."""
    with open("/proc/self/io", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


def levels(ledger: Ledger) -> tuple[int, int]:
    """Rows in ``active`` and in ``active_base``."""
    conn = ledger.store.conn
    return (
        int(conn.execute("SELECT count(*) FROM active").fetchone()[0]),
        int(conn.execute("SELECT count(*) FROM active_base").fetchone()[0]),
    )


def import_rounds(node: Path, files: list[list[str]]) -> list[dict[str, Any]]:
    """Import each file of lines into ``node``; one row of figures per file."""
    rows = []
    with Ledger.open(node) as ledger:
        for lines in files:
            reader = HashListReader(fmt="lines", default_type="sha256")
            before, began, cpu = written(), time.perf_counter(), time.process_time()
            result = ledger.import_lines(reader.read(lines))
            seconds = time.perf_counter() - began
            rows.append(
                {
                    "entries": result.append.count,
                    "size": result.append.checkpoint.size,
                    "seconds": seconds,
                    "cpu_seconds": time.process_time() - cpu,
                    "bytes": written() - before,
                    "merged_rows": 0 if result.merged is None else result.merged.rows,
                    "merge_seconds": 0.0 if result.merged is None else result.merged.seconds,
                    "levels": levels(ledger),
                    "bound": merge_bound(ledger.store),
                    "load": os.getloadavg()[0],
                }
            )
            print(line(rows[-1]), flush=True)
    return rows


def line(row: dict[str, Any]) -> str:
    merge = (
        f"; merged {row['merged_rows']:,} rows in {row['merge_seconds']:.1f} s"
        if row["merged_rows"]
        else ""
    )
    return (
        f"  {row['entries']:,} entries to {row['size']:,}: "
        f"{row['entries'] / row['seconds']:,.0f} entries/s, "
        f"{row['bytes'] / max(1, row['entries']):,.0f} bytes written an entry, "
        f"{row['cpu_seconds']:.1f} CPU s{merge}; levels {row['levels'][0]:,} + "
        f"{row['levels'][1]:,} (bound {row['bound']:,}); load {row['load']:.1f}"
    )


def totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    entries = sum(r["entries"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    return {
        "entries": entries,
        "entries_per_s": entries / seconds,
        "bytes_per_entry": sum(r["bytes"] for r in rows) / entries,
        "cpu_per_entry_us": 1e6 * sum(r["cpu_seconds"] for r in rows) / entries,
        "merge_seconds": sum(r["merge_seconds"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", type=Path, required=True, help="a large node you own (written)")
    parser.add_argument("--lines", type=int, default=200_000, help="lines per import (200000)")
    parser.add_argument("--rounds", type=int, default=6, help="imports of --lines each (6)")
    parser.add_argument("--merge", action="store_true", help="then merge what is left, alone")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    files = [[os.urandom(32).hex() + "\n" for _ in range(args.lines)] for _ in range(args.rounds)]
    report: dict[str, Any] = {"lines": args.lines, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="bench-active-levels-") as tmp:
        fresh = Path(tmp) / "fresh"
        init_node(fresh, "bench-active-levels.example/hashmesh")
        print("fresh node:")
        report["fresh"] = import_rounds(fresh, files)
    print(f"{args.node}:")
    report["node"] = import_rounds(args.node, files)
    base, into = totals(report["fresh"]), totals(report["node"])
    report["totals"] = {"fresh": base, "node": into}
    print(
        f"over {args.rounds} imports, merges included: fresh {base['entries_per_s']:,.0f} "
        f"entries/s, {base['bytes_per_entry']:,.0f} B/entry, {base['cpu_per_entry_us']:.1f} "
        f"CPU us/entry; node {into['entries_per_s']:,.0f} entries/s "
        f"({into['entries_per_s'] / base['entries_per_s']:.2f}x), "
        f"{into['bytes_per_entry']:,.0f} B/entry "
        f"({into['bytes_per_entry'] / base['bytes_per_entry']:.2f}x), "
        f"{into['cpu_per_entry_us']:.1f} CPU us/entry "
        f"({into['cpu_per_entry_us'] / base['cpu_per_entry_us']:.2f}x); "
        f"merging took {into['merge_seconds']:.1f} s of it"
    )
    if args.merge:
        with Ledger.open(args.node) as ledger:
            before, began = written(), time.perf_counter()
            result = merge_active(ledger.store)
            report["merge"] = {
                "rows": result.rows,
                "seconds": time.perf_counter() - began,
                "bytes": written() - before,
                "levels": levels(ledger),
            }
        print(
            f"merge alone: {result.rows:,} rows in {result.seconds:.1f} s "
            f"({result.chunks} transactions), {report['merge']['bytes'] / 1e6:,.0f} MB written"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
