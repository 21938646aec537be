"""Ledger benchmark: import N sha256 hashes end to end, then prove at that size.

    .venv/bin/python benchmarks/bench_ledger.py [--entries 1000000]

End to end means what `hashmesh import` does: read lines, normalise, validate,
encode, hash, insert entries, tree nodes and the active index, sign and store
a checkpoint, commit with synchronous=FULL. The import runs in a child process
so its peak RSS is its own. Baselines measured in the same run: plain
sqlite3.executemany of the same number of (int, 32-byte blob) rows, and raw
hashlib.sha256 leaf hashing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child_import(node_dir: str, list_path: str, signal_type: str = "sha256") -> None:
    """Import one list (``signal_type`` lines) into ``node_dir``; print JSON figures."""
    from node.ledger import Ledger
    from node.ledger.hashlist import HashListReader

    started = time.perf_counter()
    with (
        Ledger.open(Path(node_dir)) as ledger,
        open(list_path, encoding="utf-8", newline="") as f,
    ):
        reader = HashListReader(
            fmt="lines",
            default_type=signal_type,
            extra_labels=["src:bench"],
            default_quality=100 if signal_type == "pdq" else None,
        )
        result = ledger.import_lines(reader.read(f))
    elapsed = time.perf_counter() - started
    cpu = time.process_time()
    # VmHWM starts afresh at exec; ru_maxrss would keep the high-water mark
    # of the parent at fork (which holds the baselines' million rows).
    with open("/proc/self/status", encoding="ascii") as status:
        rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(
        json.dumps(
            {
                "count": result.append.count,
                "seconds": elapsed,
                "cpu": cpu,
                "rss_mib": rss_kib / 1024,
            }
        )
    )


def baseline_executemany(n: int, path: Path) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (idx INTEGER PRIMARY KEY, h BLOB)")
    rows = [(i, hashlib.sha256(i.to_bytes(8, "big")).digest()) for i in range(n)]
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?, ?)", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


def raw_leaf_rate(n: int) -> float:
    sha = hashlib.sha256
    datas = [
        b'{"kind":"add","labels":[],"salt":"%032x","signal":{"type":"sha256","value":"%064x"},'
        b'"v":2}' % (i, i)
        for i in range(n)
    ]
    started = time.perf_counter()
    for d in datas:
        sha(b"\x00" + d).digest()
    return n / (time.perf_counter() - started)


def proof_latency(ledger: Any, rng: random.Random, count: int) -> tuple[list[int], float, float]:
    """Mean inclusion and consistency proof times (ms) at the ledger's size, each proof verified.

    Returns the indexes proven, the inclusion and the consistency figure.
    """
    from protocol.merkle import verify_consistency, verify_inclusion

    latest = ledger.latest_checkpoint()
    size, root = latest.size, latest.root_hash
    indexes = [rng.randrange(size) for _ in range(count)]
    started = time.perf_counter()
    proofs = [ledger.prove_inclusion(i) for i in indexes]
    incl_ms = (time.perf_counter() - started) / len(indexes) * 1000
    for i, p in zip(indexes, proofs, strict=True):
        verify_inclusion(i, size, p.leaf_hash or b"", p.hashes, root)
    olds = [rng.randrange(1, size) for _ in range(count)]
    started = time.perf_counter()
    cons = [ledger.prove_consistency(o) for o in olds]
    cons_ms = (time.perf_counter() - started) / len(olds) * 1000
    old_root = ledger.store.get_checkpoint(ledger.own_log.log_id, 0)
    assert old_root is not None
    verify_consistency(0, size, old_root.root_hash, root, ledger.prove_consistency(0).hashes)
    assert len(cons) == len(olds)
    return indexes, incl_ms, cons_ms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--proofs", type=int, default=2000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_import(*args.child)
        return

    from node.ledger import Ledger
    from node.ledger.leaf_index import LeafHashIndex
    from node.ledger.provision import init_node

    n = args.entries
    with tempfile.TemporaryDirectory(prefix="hashmesh-bench-") as tmp:
        work = Path(tmp)
        rng = random.Random(1)
        list_path = work / "list.txt"
        with list_path.open("w") as f:
            for _ in range(n):
                f.write(f"{rng.getrandbits(256):064x}\n")
        node_dir = work / "node"
        init_node(node_dir, "bench.example/hashmesh")

        print(f"hashmesh ledger benchmark, {n:,} sha256 entries, python {sys.version.split()[0]}")
        base_insert = baseline_executemany(n, work / "baseline.db")
        base_hash = raw_leaf_rate(min(n, 1_000_000))
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(node_dir), str(list_path)],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        child = json.loads(out.stdout.strip().splitlines()[-1])
        rate = child["count"] / child["seconds"]
        db_bytes = sum(p.stat().st_size for p in node_dir.glob("ledger.db*"))

        with Ledger.open(node_dir, read_only=True) as ledger:
            size = ledger.latest_checkpoint().size
            indexes, incl_ms, cons_ms = proof_latency(ledger, rng, args.proofs)

            # Inclusion by leaf hash: the first question builds the in-memory
            # index of the log (node/ledger/leaf_index.py), later ones use it.
            log_id = ledger.own_log.log_id
            wanted = [ledger.store.leaf_hash_at(log_id, i) or b"" for i in indexes]
            leaf_index = LeafHashIndex()
            started = time.perf_counter()
            assert leaf_index.find(ledger.store, log_id, wanted[0], size) == indexes[0]
            leaf_first_s = time.perf_counter() - started
            started = time.perf_counter()
            found = [leaf_index.find(ledger.store, log_id, h, size) for h in wanted]
            leaf_ms = (time.perf_counter() - started) / len(wanted) * 1000
            assert all(f is not None and f <= i for f, i in zip(found, indexes, strict=True))

        print(
            f"  import end to end:        {rate:>12,.0f} entries/s  ({child['seconds']:.2f} s, target >= 100,000)"
        )
        print(
            f"  per CPU second:           {child['count'] / child['cpu']:>12,.0f} entries/s  "
            f"({child['cpu']:.2f} s of the importing process, start-up included)"
        )
        print(f"  peak RSS of the import:   {child['rss_mib']:>12,.0f} MiB        (target <= 300)")
        print(
            f"  baseline executemany:     {base_insert:>12,.0f} rows/s     (import is {rate / base_insert:.2f}x)"
        )
        print(
            f"  baseline raw leaf hash:   {base_hash:>12,.0f} leaves/s   (import is {rate / base_hash:.2f}x)"
        )
        print(f"  inclusion proof at {size:,}: {incl_ms:>8.3f} ms each (target <= 1 ms)")
        print(f"  consistency proof at {size:,}: {cons_ms:>6.3f} ms each (target <= 1 ms)")
        print(
            f"  entry by leaf hash:        first {leaf_first_s:.2f} s (builds the index), "
            f"then {leaf_ms:.3f} ms each"
        )
        print(
            f"  bytes on disk per entry:  {db_bytes / size:>12,.0f}     ({db_bytes / 1e6:,.0f} MB for {size:,})"
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
