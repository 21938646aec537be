"""Publish benchmark: ``hashmesh publish`` of a large log, then incrementally.

    .venv/bin/python benchmarks/bench_publish.py [--entries 1000000] [--increment 1000]

Builds a node with ``--entries`` sha256 entries (bulk import), then times,
end to end through :func:`node.ledger.publish.publish` (what the command
runs, minus process start-up), on a fresh directory under the same temporary
directory as the node:

* a first publish of every tile (target >= 500,000 leaves/s), best of
  ``--repeats`` into fresh directories;
* ``--increments`` incremental publishes, each after ``--increment`` new
  entries (target < 50 ms plus the checkpoint); ``publish`` reports its own
  split: tiles (reading, staging, the two ``os.sync`` barriers, renames)
  and marker + checkpoint (each fsynced with its directory);
* a publish with nothing new (the cost of checking the directory).

Every published directory is checked with ``protocol.tiles.verify_tiles``
against the signed checkpoint, reading the files back. The baselines of the
same run are the raw file system (writing and renaming the same number of
8 KiB files, no database, one thread) and raw SQLite (every leaf hash in one
SELECT), so a slow disk or a loaded machine shows up as such.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.ledger import Ledger  # noqa: E402
from node.ledger.hashlist import HashListReader  # noqa: E402
from node.ledger.provision import init_node  # noqa: E402
from node.ledger.publish import publish  # noqa: E402
from protocol.checkpoint import open_checkpoint  # noqa: E402
from protocol.keys import NoteVerifier  # noqa: E402
from protocol.tiles import TileId, tiles_for_size, verify_tiles  # noqa: E402

PUBLISH_TARGET = 500_000  # leaves/s (issue 13)
INCREMENT_TARGET_MS = 50.0  # plus the checkpoint (issue 13)


def import_random(ledger: Ledger, n: int, rng: random.Random) -> None:
    reader = HashListReader(fmt="lines", default_type="sha256", extra_labels=["src:bench"])
    lines = [f"{rng.getrandbits(256):064x}\n" for _ in range(n)]
    ledger.import_lines(reader.read(iter(lines)))


def verify_directory(out: Path, vkey: str) -> int:
    """Check every published tile against the published checkpoint; return its size."""
    note = (out / "checkpoint").read_bytes()
    checkpoint = open_checkpoint(note, NoteVerifier.from_text(vkey)).checkpoint

    def read(tile: TileId) -> bytes:
        return (out / tile.to_path()).read_bytes()

    verify_tiles(checkpoint.size, checkpoint.root_hash, read)
    return checkpoint.size


def baseline_files(work: Path, count: int) -> float:
    """Seconds to write and rename ``count`` 8 KiB files (no database, no sync)."""
    base = work / "baseline"
    base.mkdir()
    data = os.urandom(8192)
    started = time.perf_counter()
    for i in range(count):
        staged = base / f"{i}.tmp"
        staged.write_bytes(data)
        os.replace(staged, base / str(i))
    return time.perf_counter() - started


def baseline_scan(db_path: Path) -> float:
    """Seconds to read every stored leaf hash in one SELECT (the storage floor of level 0)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        started = time.perf_counter()
        rows = conn.execute("SELECT leaf_hash FROM entries ORDER BY log_id, idx").fetchall()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    assert rows
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--increment", type=int, default=1_000)
    parser.add_argument("--increments", type=int, default=5, help="incremental runs in a row")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.entries
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="hashmesh-bench-publish-", dir=ROOT.parent) as tmp:
        work = Path(tmp)
        node_dir = work / "node"
        init_node(node_dir, "bench.example/hashmesh")
        with Ledger.open(node_dir) as ledger:
            import_random(ledger, n, rng)
            vkey = ledger.own_log.verifier_key
        tiles = len(tiles_for_size(n))
        print(
            f"hashmesh publish benchmark, {n:,} entries ({tiles:,} tiles), python "
            f"{sys.version.split()[0]}"
        )
        base_s = baseline_files(work, tiles)
        scan_s = baseline_scan(node_dir / "ledger.db")

        first_s = float("inf")
        with Ledger.open(node_dir, read_only=True) as ledger:
            for r in range(args.repeats):
                out = work / f"full-{r}"
                started = time.perf_counter()
                result = publish(ledger, out)
                first_s = min(first_s, time.perf_counter() - started)
                assert result.tiles == tiles
                assert result.size == n
        assert verify_directory(work / "full-0", vkey) == n

        out = work / "full-0"
        incs = []
        for _ in range(args.increments):
            with Ledger.open(node_dir) as ledger:
                import_random(ledger, args.increment, rng)
            with Ledger.open(node_dir, read_only=True) as ledger:
                started = time.perf_counter()
                inc = publish(ledger, out)
                incs.append((time.perf_counter() - started, inc))
                assert inc.checkpoint_written
        with Ledger.open(node_dir, read_only=True) as ledger:
            started = time.perf_counter()
            again = publish(ledger, out)
            noop_s = time.perf_counter() - started
        assert not again.checkpoint_written
        assert again.tiles == 0
        assert verify_directory(out, vkey) == n + args.increments * args.increment

    rate = n / first_s
    print(f"  baseline: write+rename {tiles:,} 8 KiB files, one thread: {base_s:.2f} s")
    print(f"  baseline: every leaf hash in one SELECT: {scan_s:.2f} s")
    print(
        f"  first publish:        {rate:>12,.0f} leaves/s  ({first_s:.2f} s, "
        f"target >= {PUBLISH_TARGET:,})"
    )
    for total, inc in incs:
        print(
            f"  incremental +{args.increment:,}:   {total * 1000:>7.1f} ms total: tiles "
            f"{inc.tiles_seconds * 1000:.1f} ms ({inc.tiles} tiles), marker+checkpoint "
            f"{inc.checkpoint_seconds * 1000:.1f} ms (target: tiles < {INCREMENT_TARGET_MS:g} ms)"
        )
    print(f"  nothing new:          {noop_s * 1000:>9.1f} ms")


if __name__ == "__main__":
    main()
