"""Proof latency at size: one proof's cost, cold and warm, against the earlier read path.

    .venv/bin/python benchmarks/bench_proofs.py --node DIR [--proofs 2000] [--rounds 2]
        [--evict] [--json out.json]

Opens the node read-only (``Ledger.open(dir, read_only=True)``) and never
writes to it, so it may run on a node another process serves. Two read
paths, alternating within each round, each on a fresh connection:

* ``before``: the read path of main 4c14975, reproduced here: one SQL
  statement per tile and per stored tree node (about 25 a proof at 1M, 30
  at 10M), the leaf of an inclusion proof read again, the log looked up
  twice, and SQLite's default page cache (2 MiB);
* ``after``: ``Ledger.prove_inclusion`` / ``prove_consistency`` as they are.

Each path proves ``--proofs`` random indexes (inclusion) and old sizes
(consistency) on a fresh connection, whose page cache is empty (*cold*),
then the same ones again (*warm*). With ``--evict`` the database file's
pages are dropped from the OS page cache before each cold pass
(``posix_fadvise(DONTNEED)``), so the cold pass reads the disk: use it only
on a copy you own, since it slows every other reader of that file.

Reported per path, kind and pass: p50, p99 and mean in ms; SQL statements
per proof (counted in a separate short pass: the trace callback costs
time); read system calls and bytes read from the disk per proof
(``/proc/self/io``); and the ratio after/before of each latency. The
``before`` path is the baseline in the same process: on a loaded machine
compare ratios, not levels (p99 then mostly measures the scheduler). Every
``after`` proof is verified against the signed root, and both paths must
return the same hashes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.ledger import Ledger  # noqa: E402
from node.storage.schema import TILE_LEVEL  # noqa: E402
from protocol.hashing import hash_children  # noqa: E402
from protocol.merkle import verify_consistency, verify_inclusion  # noqa: E402
from protocol.tree import NodeId, compute_consistency_proof, compute_inclusion_proof  # noqa: E402

SQLITE_DEFAULT_CACHE = "PRAGMA cache_size = -2000"


class PerNodeReader:
    """The earlier ``LedgerStore.get_node_hashes``: one statement per tile and per stored node."""

    def __init__(self, ledger: Ledger, log_id: int) -> None:
        self._conn = ledger.store.conn
        self._log_id = log_id

    def get_node_hashes(self, ids: Sequence[NodeId]) -> list[bytes]:
        found: dict[NodeId, bytes] = {}
        tiles = sorted({n.index >> (TILE_LEVEL - n.level) for n in ids if n.level < TILE_LEVEL})
        leaves: dict[int, bytes] = {}
        for tile in tiles:
            first = tile << TILE_LEVEL
            for idx, leaf_hash in self._conn.execute(
                "SELECT idx, leaf_hash FROM entries WHERE log_id = ? AND idx >= ? AND idx < ?",
                (self._log_id, first, first + (1 << TILE_LEVEL)),
            ):
                leaves[idx] = leaf_hash
        for node_id in ids:
            if node_id.level < TILE_LEVEL and node_id not in found:
                first = node_id.index << node_id.level
                level = [leaves[i] for i in range(first, first + (1 << node_id.level))]
                while len(level) > 1:
                    it = iter(level)
                    level = [hash_children(a, b) for a, b in zip(it, it, strict=True)]
                found[node_id] = level[0]
        for node_id in sorted({n for n in ids if n.level >= TILE_LEVEL}):
            row = self._conn.execute(
                "SELECT hash FROM nodes WHERE log_id = ? AND level = ? AND idx = ?",
                (self._log_id, node_id.level, node_id.index),
            ).fetchone()
            found[node_id] = row[0]
        return [found[n] for n in ids]


def before_inclusion(ledger: Ledger, index: int) -> tuple[bytes, ...]:
    log = ledger.log_for(None)
    size = ledger.latest_checkpoint(log.origin).size
    reader = PerNodeReader(ledger, log.log_id)
    hashes = compute_inclusion_proof(index, size, reader)
    reader.get_node_hashes([NodeId(0, index)])
    return tuple(hashes)


def before_consistency(ledger: Ledger, old: int) -> tuple[bytes, ...]:
    log = ledger.log_for(None)
    size = ledger.latest_checkpoint(log.origin).size
    return tuple(compute_consistency_proof(old, size, PerNodeReader(ledger, log.log_id)))


def after_inclusion(ledger: Ledger, index: int) -> tuple[bytes, ...]:
    return ledger.prove_inclusion(index).hashes


def after_consistency(ledger: Ledger, old: int) -> tuple[bytes, ...]:
    return ledger.prove_consistency(old).hashes


PATHS: dict[str, dict[str, Callable[[Ledger, int], tuple[bytes, ...]]]] = {
    "before": {"inclusion": before_inclusion, "consistency": before_consistency},
    "after": {"inclusion": after_inclusion, "consistency": after_consistency},
}


def proc_io() -> dict[str, int]:
    with open("/proc/self/io", encoding="ascii") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def evict(path: Path) -> None:
    """Drop the file's pages from the OS page cache (every process's reads of it go to disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed_pass(
    ledger: Ledger, prove: Callable[[Ledger, int], tuple[bytes, ...]], args: list[int]
) -> dict[str, float]:
    times: list[float] = []
    io_before = proc_io()
    for a in args:
        started = time.perf_counter()
        prove(ledger, a)
        times.append(time.perf_counter() - started)
    io_after = proc_io()
    times.sort()
    n = len(times)
    return {
        "p50_ms": times[n // 2] * 1000,
        "p99_ms": times[min(n - 1, (n * 99) // 100)] * 1000,
        "mean_ms": statistics.fmean(times) * 1000,
        "reads_per_proof": (io_after["syscr"] - io_before["syscr"]) / n,
        "disk_kib_per_proof": (io_after["read_bytes"] - io_before["read_bytes"]) / n / 1024,
    }


def statements_per_proof(
    ledger: Ledger, prove: Callable[[Ledger, int], tuple[bytes, ...]], args: list[int]
) -> float:
    count = 0

    def counted(_sql: str) -> None:
        nonlocal count
        count += 1

    ledger.store.conn.set_trace_callback(counted)
    try:
        for a in args:
            prove(ledger, a)
    finally:
        ledger.store.conn.set_trace_callback(None)
    return count / len(args)


def open_for(path_name: str, node: Path) -> Ledger:
    ledger = Ledger.open(node, read_only=True)
    if path_name == "before":
        ledger.store.conn.execute(SQLITE_DEFAULT_CACHE)
    return ledger


def measure_path(
    path_name: str, node: Path, work: dict[str, list[int]], do_evict: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, args in work.items():
        prove = PATHS[path_name][kind]
        if do_evict:
            evict(node / "ledger.db")
        with open_for(path_name, node) as ledger:
            out[kind] = {
                "cold": timed_pass(ledger, prove, args),
                "warm": timed_pass(ledger, prove, args),
                "statements_per_proof": statements_per_proof(ledger, prove, args[:50]),
            }
    return out


def check_proofs(node: Path, work: dict[str, list[int]]) -> None:
    """Both paths give the same hashes, and the current one verifies against the signed root."""
    with Ledger.open(node, read_only=True) as ledger:
        latest = ledger.latest_checkpoint()
        size, root = latest.size, latest.root_hash
        for index in work["inclusion"][:100]:
            proof = ledger.prove_inclusion(index)
            assert proof.hashes == before_inclusion(ledger, index)
            verify_inclusion(index, size, proof.leaf_hash or b"", proof.hashes, root)
        for old in work["consistency"][:100]:
            record = ledger.stored_checkpoint(ledger.own_log, old)
            hashes = ledger.prove_consistency(old).hashes
            assert hashes == before_consistency(ledger, old)
            if record is not None:
                verify_consistency(old, size, record.root_hash, root, hashes)


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of each figure, and the ratio after/before of each latency."""
    out: dict[str, Any] = {}
    for path_name in PATHS:
        out[path_name] = {}
        for kind in ("inclusion", "consistency"):
            figures: dict[str, Any] = {}
            for pass_name in ("cold", "warm"):
                keys = rounds[0][path_name][kind][pass_name]
                figures[pass_name] = {
                    k: statistics.median(r[path_name][kind][pass_name][k] for r in rounds)
                    for k in keys
                }
            figures["statements_per_proof"] = rounds[0][path_name][kind]["statements_per_proof"]
            out[path_name][kind] = figures
    out["ratio_after_before"] = {
        kind: {
            pass_name: {
                k: out["after"][kind][pass_name][k] / out["before"][kind][pass_name][k]
                for k in ("p50_ms", "p99_ms", "mean_ms")
            }
            for pass_name in ("cold", "warm")
        }
        for kind in ("inclusion", "consistency")
    }
    return out


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| path | proof | pass | p50 (ms) | p99 (ms) | mean (ms) | SQL statements | "
        "read calls | disk KiB | p50 after/before |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for path_name in PATHS:
        for kind in ("inclusion", "consistency"):
            fig = summary[path_name][kind]
            for pass_name in ("cold", "warm"):
                f = fig[pass_name]
                ratio = summary["ratio_after_before"][kind][pass_name]["p50_ms"]
                lines.append(
                    f"| {path_name} | {kind} | {pass_name} | {f['p50_ms']:.3f} | "
                    f"{f['p99_ms']:.3f} | {f['mean_ms']:.3f} | {fig['statements_per_proof']:.1f} | "
                    f"{f['reads_per_proof']:.1f} | {f['disk_kib_per_proof']:.1f} | "
                    f"{ratio:.2f} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--node", type=Path, required=True, help="node directory (read-only)")
    parser.add_argument("--proofs", type=int, default=2000, help="proofs of each kind (2000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both paths (2)")
    parser.add_argument(
        "--evict",
        action="store_true",
        help="drop the database file from the OS cache before each cold pass (own copies only)",
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    with Ledger.open(args.node, read_only=True) as ledger:
        size = ledger.latest_checkpoint().size
    if size < 2:
        raise SystemExit(f"{args.node}: the own log holds {size} entries; need at least 2")
    rng = random.Random(args.seed)
    work = {
        "inclusion": [rng.randrange(size) for _ in range(args.proofs)],
        "consistency": [rng.randrange(1, size) for _ in range(args.proofs)],
    }
    check_proofs(args.node, work)
    load_start = os.getloadavg()
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        one: dict[str, Any] = {}
        for path_name in order:
            one[path_name] = measure_path(path_name, args.node, work, args.evict)
        rounds.append(one)
        print(f"  round {r + 1} done, load {os.getloadavg()[0]:.1f}", flush=True)
    summary = summarise(rounds)
    summary.update(
        node=str(args.node),
        size=size,
        proofs=args.proofs,
        rounds=args.rounds,
        evict=args.evict,
        loadavg_start=load_start,
        loadavg_end=os.getloadavg(),
    )
    print(f"{args.node}: own log of {size:,} entries, {args.proofs} proofs of each kind")
    print(table(summary))
    print(f"load average {load_start[0]:.1f} -> {summary['loadavg_end'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
