"""Scrub and fsck benchmark: what checking a log costs, and what the scrub's pace means.

    .venv/bin/python benchmarks/bench_scrub.py [--entries 200000] [--slice 1000]

Builds a node with ``--entries`` md5 adds (bulk import, the common case),
then measures, in this process:

* ``fsck``'s whole-log check (:func:`node.ledger.fsck.check_log`): entries
  hashed, tree rebuilt and compared at every checkpoint, stored nodes
  compared, derived tables rebuilt in memory and compared: entries/s;
* one scrub slice of ``--slice`` entries (:meth:`LogScan.scan`), median of
  all slices of a pass: milliseconds of CPU per slice, hence the share of one
  core the scrub takes at its default pace of 200 entries/s, and the time a
  pass over ten million entries takes at that pace;
* the baseline of the same run: SHA-256 of every entry's bytes and one
  SELECT of them (no Python per row beyond the hash), so a loaded machine
  shows up as such.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.config import DEFAULT_SCRUB_RATE  # noqa: E402
from node.ledger import Ledger  # noqa: E402
from node.ledger.fsck import LogScan, check_log  # noqa: E402
from node.ledger.hashlist import HashListReader  # noqa: E402
from node.ledger.provision import init_node  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--slice", type=int, default=1000)
    args = parser.parse_args()
    rng = random.Random(14)
    with tempfile.TemporaryDirectory() as tmp:
        node = Path(tmp) / "node"
        init_node(node, "bench.example/hashmesh")
        with Ledger.open(node) as ledger:
            reader = HashListReader(fmt="lines", default_type="md5", extra_labels=["src:bench"])
            lines = [f"{rng.getrandbits(128):032x}\n" for _ in range(args.entries)]
            ledger.import_lines(reader.read(iter(lines)))
        with Ledger.open(node, read_only=True) as ledger:
            store, log = ledger.store, ledger.own_log
            started = time.perf_counter()
            rows = store.conn.execute(
                "SELECT data FROM entries WHERE log_id = ?", (log.log_id,)
            ).fetchall()
            for (data,) in rows:
                hashlib.sha256(b"\0" + data).digest()
            baseline = time.perf_counter() - started
            started = time.perf_counter()
            scan = check_log(store, log)
            whole = time.perf_counter() - started
            assert not scan.findings, scan.findings
            scan = LogScan(store, log)
            slices = []
            while not scan.done:
                t0 = time.process_time()
                scan.scan(store, args.slice)
                slices.append(time.process_time() - t0)
            t0 = time.process_time()
            scan.derived_findings(store)
            derived = time.process_time() - t0
    per_slice = statistics.median(slices)
    share = per_slice * DEFAULT_SCRUB_RATE / args.slice
    print(f"entries: {args.entries:,}")
    print(
        f"baseline (one SELECT + SHA-256 of every entry): {args.entries / baseline:,.0f} entries/s"
    )
    print(f"fsck whole-log check: {args.entries / whole:,.0f} entries/s ({whole:.2f} s)")
    print(f"scrub slice of {args.slice}: median {per_slice * 1000:.1f} ms CPU")
    print(f"derived comparison at the end of a pass: {derived:.2f} s CPU")
    print(
        f"at {DEFAULT_SCRUB_RATE:g} entries/s: {share:.2%} of one core; "
        f"10M entries in {10_000_000 / DEFAULT_SCRUB_RATE / 3600:.1f} h "
        f"(+ {derived * 10_000_000 / args.entries:.0f} s CPU for the derived tables)"
    )


if __name__ == "__main__":
    main()
