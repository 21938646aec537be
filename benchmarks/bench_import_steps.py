"""Where a bulk import's CPU time goes, step by step (instrumented, not profiled).

    .venv/bin/python benchmarks/bench_import_steps.py [--entries 1000000]

Imports N random sha256 lines into a fresh node exactly as ``hashmesh
import --type sha256`` does (``Ledger.import_lines``), with each step of the
write path wrapped by a timer of the importing thread's CPU time and wall
time: the ``entries``/``nodes`` and ``active`` inserts, the duplicate
look-ups, the active keys, salting and encoding, leaf hashing, extending the
tree and the ``COMMIT``. CPU seconds are steadier than wall time on a shared
machine (a process waiting for a core accrues none), so compare them between
two checkouts run alternately. Prints one JSON object: rate, wall and CPU
seconds of the whole import, peak RSS (``VmHWM``), the database size, and
each step's seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import node.ledger.integration as integration  # noqa: E402
import node.storage.connection as connection  # noqa: E402
import node.storage.ledger_store as ledger_store  # noqa: E402
from node.ledger import Ledger  # noqa: E402
from node.ledger.hashlist import HashListReader  # noqa: E402
from node.ledger.provision import init_node  # noqa: E402

SECONDS: defaultdict[str, float] = defaultdict(float)


def timed(owner: Any, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper adding its CPU and wall seconds to ``label``."""
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            SECONDS[f"{label} cpu"] += time.thread_time() - cpu
            SECONDS[f"{label} wall"] += time.perf_counter() - wall

    setattr(owner, name, wrapper)


class _TimedCommit:
    """A connection whose ``COMMIT`` statements are timed (the rest passes through)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, *args: Any) -> Any:
        if sql != "COMMIT":
            return self._conn.execute(sql, *args)
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return self._conn.execute(sql, *args)
        finally:
            SECONDS["COMMIT cpu"] += time.thread_time() - cpu
            SECONDS["COMMIT wall"] += time.perf_counter() - wall

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def instrument() -> None:
    timed(ledger_store.LedgerStore, "append_entries", "entries + nodes inserts")
    timed(ledger_store.LedgerStore, "add_active", "active inserts")
    timed(ledger_store.LedgerStore, "find_listed", "duplicate look-ups")
    timed(integration, "active_keys", "active keys")
    timed(integration, "salt_values", "salt + encode")
    timed(integration, "hash_leaves", "leaf hashing")
    if hasattr(integration.Integration, "flush_active"):  # absent before the held-back rows
        timed(integration.Integration, "flush_active", "active inserts held back")
    timed(integration.CompactRange, "extend", "tree extend")
    timed(integration.Integration, "append_values", "append_values (all of the above but COMMIT)")
    plain = connection.write_transaction.__wrapped__  # type: ignore[attr-defined]

    @contextmanager
    def write_transaction(conn: Any) -> Iterator[None]:
        with contextmanager(plain)(_TimedCommit(conn)):
            yield

    ledger_store.write_transaction = write_transaction  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hashmesh-steps-") as tmp:
        work = Path(tmp)
        rng = random.Random(1)
        list_path = work / "list.txt"
        with list_path.open("w") as f:
            for _ in range(args.entries):
                f.write(f"{rng.getrandbits(256):064x}\n")
        node_dir = work / "node"
        init_node(node_dir, "bench.example/hashmesh")
        instrument()
        wall, cpu = time.perf_counter(), time.process_time()
        with Ledger.open(node_dir) as ledger, list_path.open(encoding="utf-8") as f:
            reader = HashListReader(fmt="lines", default_type="sha256", extra_labels=["src:bench"])
            count = ledger.import_lines(reader.read(f)).append.count
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        with open("/proc/self/status", encoding="ascii") as status:
            hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        db_bytes = sum(p.stat().st_size for p in node_dir.glob("ledger.db*"))
    result = {
        "entries_per_s": round(count / wall),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mib": hwm // 1024,
        "bytes_per_entry": round(db_bytes / count),
        **{k: round(v, 2) for k, v in sorted(SECONDS.items())},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
