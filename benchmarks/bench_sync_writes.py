"""Bytes a verified replica sync writes to disk, with and without deferred WAL checkpoints.

    .venv/bin/python benchmarks/bench_sync_writes.py --source DIR [--chunk 50000]
    .venv/bin/python benchmarks/bench_sync_writes.py --source DIR --into NODE_COPY [--default]

The writer's side of a sync, in this process and without the network: the
source node (opened read-only) hands out its own log's entries in chunks of
``--chunk`` with the consistency proof of each chunk's end to its latest
checkpoint, as a peer serves them; each chunk is prepared
(:func:`node.ledger.replica.prepare_chunk`) and stored by
``Replica.append_verified``: verified against the signed checkpoint, one
transaction, ``synchronous=FULL``, as the sync engine does it. Like the
engine (:mod:`node.sync.engine`), a catch-up of more than one chunk runs
between ``Ledger.defer_checkpoints`` and ``resume_checkpoints``; ``--default``
leaves SQLite's checkpoint after every commit instead (the code before).

Without ``--into``, two fresh nodes in a temporary directory are synced in
turn, default then deferred: the baseline in the same process. With
``--into``, that node (a copy you own: it is written) follows the source
and is synced once; pass ``--default`` for the baseline run on a second copy.

Reported: bytes written to disk per entry (``write_bytes`` of
``/proc/self/io``, the final checkpoint included), for the first and the last
chunk, the database's size per entry, the WAL's size before the final
checkpoint, wall and CPU seconds, and the load average.
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
from node.ledger.provision import init_node  # noqa: E402
from node.ledger.replica import prepare_chunk  # noqa: E402
from node.sync.engine import CHUNK_ENTRIES  # noqa: E402


def written() -> int:
    """Bytes this process has had written to disk so far."""
    with open("/proc/self/io", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


def sync_into(source: Path, target: Path, chunk: int, *, deferred: bool) -> dict[str, Any]:
    """Sync the source's own log into ``target`` (created if missing); the figures."""
    if not target.exists():
        init_node(target, f"bench-sync-writes-{time.time_ns()}.example/hashmesh")
    with Ledger.open(source, read_only=True) as src, Ledger.open(target) as dst:
        latest = src.latest_checkpoint()
        origin, want = src.own_log.origin, latest.size
        dst.follow(origin, src.own_log.verifier_key)
        replica = dst.replica(origin)
        have = replica.state().size
        if have >= want:
            raise SystemExit(f"{target} already holds {have:,} entries of {origin}")
        per_chunk: list[float] = []
        started, cpu, before = time.perf_counter(), time.process_time(), written()
        if deferred and want - have > chunk:
            dst.defer_checkpoints()
        try:
            start = have
            while start < want:
                end = min(start + chunk, want)
                datas = [bytes(d) for _i, d, _h in src.entries(src.own_log, start, end)]
                proof = None if end == want else src.prove_consistency(end, want).hashes
                prepared = prepare_chunk(datas, start)
                at = written()
                replica.append_verified(latest.note, start, prepared, proof)
                per_chunk.append((written() - at) / (end - start))
                start = end
            wal = target / "ledger.db-wal"
            wal_bytes = wal.stat().st_size if wal.exists() else 0
        finally:
            if deferred:
                dst.resume_checkpoints()
        n = want - have
        return {
            "entries": n,
            "chunk": chunk,
            "deferred": deferred,
            "held_before": have,
            "bytes_written_per_entry": (written() - before) / n,
            "first_chunk_bytes_per_entry": per_chunk[0],
            "last_chunk_bytes_per_entry": per_chunk[-1],
            "wal_bytes_before_final_checkpoint": wal_bytes,
            "db_bytes_per_entry": (target / "ledger.db").stat().st_size / max(1, n + have),
            "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu,
            "loadavg": os.getloadavg(),
        }


def line(row: dict[str, Any]) -> str:
    mode = "deferred" if row["deferred"] else "default"
    return (
        f"  {mode:8s} {row['entries']:,} entries (held before {row['held_before']:,}): "
        f"{row['bytes_written_per_entry']:,.0f} bytes written an entry (first chunk "
        f"{row['first_chunk_bytes_per_entry']:,.0f}, last {row['last_chunk_bytes_per_entry']:,.0f}); "
        f"WAL {row['wal_bytes_before_final_checkpoint'] / 2**20:,.0f} MiB before the last "
        f"checkpoint; {row['seconds']:.1f} s, {row['cpu_seconds']:.1f} CPU s; "
        f"load {row['loadavg'][0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, required=True, help="node whose own log is synced")
    parser.add_argument("--into", type=Path, help="node to sync into (a copy you own)")
    parser.add_argument("--chunk", type=int, default=CHUNK_ENTRIES, help="entries per chunk")
    parser.add_argument(
        "--default", action="store_true", help="with --into: SQLite's checkpoints (baseline)"
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    if args.into is not None:
        rows.append(sync_into(args.source, args.into, args.chunk, deferred=not args.default))
        print(line(rows[-1]), flush=True)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-sync-writes-", dir="/var/tmp") as work:
            for deferred in (False, True):
                target = Path(work) / ("deferred" if deferred else "default")
                rows.append(sync_into(args.source, target, args.chunk, deferred=deferred))
                print(line(rows[-1]), flush=True)
        ratio = rows[1]["bytes_written_per_entry"] / rows[0]["bytes_written_per_entry"]
        print(f"  bytes written, deferred / default: {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
