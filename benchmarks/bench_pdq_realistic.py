"""PDQ near-matching on realistic data: p99 per query and recall per named distribution.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_pdq_realistic.py \\
        [--size 1000000] [--queries 1000] [--scan-queries 300] \\
        [--distributions uniform,biased,clusters,degenerate,images] [--json out.json]

Data: ``benchmarks/pdq_data.py`` (one named distribution per run of the
loop, same seed). The index is the node's own: a
:class:`~node.ledger.matching.LivePdqIndex` with the default quality floor
(stored rows below 50 go to the exact-only index), searched as
``match()`` searches it: distance 31, at most ``max_hits + 1`` (1,001) pairs
per query, a query below the floor at distance 0 only. One query per call,
timed in CPU time of the calling thread (``time.thread_time``) around the
call: on a loaded machine wall-clock times mostly measure waiting for a core.

Reference: a numpy brute-force scan of every stored row applying the same
rules (near rows within 31, exact-only rows at 0, nearest 1,001 by distance
then id), on the first ``--scan-queries`` queries. Recall is the share of
the reference's pairs the index returned (it must be 100 %: the index is
exact); the scan's own per-query time is the same-run baseline the index's
times are divided by, because the machine this runs on is shared and loaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.pdq_data import DISTRIBUTIONS, PdqData, generate  # noqa: E402
from node.config import DEFAULT_MAX_HITS, DEFAULT_MIN_QUALITY  # noqa: E402
from node.ledger.matching import DEFAULT_MAX_DISTANCE, LivePdqIndex  # noqa: E402
from node.storage.segment_file import open_segment, write_segment  # noqa: E402

LIMIT = DEFAULT_MAX_HITS + 1  # what match() asks the index for


def brute_force(
    words: npt.NDArray[np.uint64], near_rows: npt.NDArray[np.bool_], query: bytes, near: bool
) -> list[tuple[int, int]]:
    """The reference answer: the same rules as the index, by a scan of every row."""
    q = np.frombuffer(query, dtype=">u8").astype(np.uint64)
    dist = np.bitwise_count(words ^ q).sum(axis=1, dtype=np.int64)
    wide = (dist <= DEFAULT_MAX_DISTANCE) & near_rows if near else np.zeros(len(dist), bool)
    rows = np.flatnonzero(wide | (dist == 0))
    order = np.lexsort((rows, dist[rows]))[:LIMIT]
    return list(zip(rows[order].tolist(), dist[rows[order]].tolist(), strict=True))


def run_one(
    data: PdqData,
    scan_queries: int,
    min_quality: int,
    mapped: Path | None = None,
    warmup: int = 0,
) -> dict[str, Any]:
    n = len(data.hashes)
    index = LivePdqIndex(min_quality)
    started = time.perf_counter()
    index.add_rows(np.arange(n, dtype=np.int64), data.hashes, data.quality)
    # Every row into a fully indexed base, as a node's persisted base holds them.
    index.compact()
    build_s = time.perf_counter() - started
    segment = None
    if mapped is not None:
        # The serving layout itself: the base written as a segment file and
        # searched through a read-only mapping of it (page cache warm).
        write_segment(mapped, "pdq-index", {}, index.base_arrays())
        index.close()
        segment = open_segment(mapped, "pdq-index")
        index = LivePdqIndex.from_base_arrays(
            {name: segment.array(name) for name in segment.names()}, min_quality
        )
    queries = [bytes(q) for q in data.queries]
    near = [index.near_allowed(int(q)) for q in data.query_quality]
    # Warm-up queries (stored rows, so drawn like the data; not timed): a
    # freshly mapped file's pages fault in on first use, and the timed
    # queries then measure the steady state.
    warm = data.hashes[np.random.default_rng(99).integers(0, n, warmup)]
    for q in warm:
        index.search_many([bytes(q)], DEFAULT_MAX_DISTANCE, limit=LIMIT)
    times: list[float] = []
    answers: list[list[tuple[int, int]]] = []
    for q, flag in zip(queries, near, strict=True):
        t0 = time.thread_time()
        (found,) = index.search_many([q], DEFAULT_MAX_DISTANCE, near=[flag], limit=LIMIT)
        times.append(time.thread_time() - t0)
        answers.append(found)
    words = data.hashes.view(">u8").reshape(n, 4).astype(np.uint64)
    near_rows = data.quality >= index.min_quality
    expected = returned = 0
    scan_times: list[float] = []
    for i in range(min(scan_queries, len(queries))):
        t0 = time.thread_time()
        want = brute_force(words, near_rows, queries[i], near[i])
        scan_times.append(time.thread_time() - t0)
        got = set(answers[i])
        expected += len(want)
        returned += len(got & set(want))
        if len(answers[i]) != len(want):
            print(f"  MISMATCH query {i}: index {len(answers[i])} pairs, scan {len(want)}")
    ms = np.array(times) * 1e3
    scan_ms = float(np.median(scan_times) * 1e3) if scan_times else float("nan")
    hits = np.array([len(a) for a in answers])
    result: dict[str, Any] = {
        "distribution": data.name,
        "size": n,
        "min_quality": min_quality,
        "near_rows": int(near_rows.sum()),
        "queries": len(queries),
        "queries_below_floor": int(len(near) - sum(near)),
        "build_s": round(build_s, 2),
        "layout": "mapped file" if segment is not None else "memory",
        "warmup_queries": warmup,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "scan_p50_ms": round(scan_ms, 3),
        "p99_over_scan": round(float(np.percentile(ms, 99)) / scan_ms, 4),
        "recall": 1.0 if expected == 0 else returned / expected,
        "checked_queries": len(scan_times),
        "mean_hits": round(float(hits.mean()), 1),
        "truncated_queries": int((hits >= LIMIT).sum()),
        **data.notes,
    }
    if data.edits:
        # How robust PDQ is to each edit: share of edited queries with their
        # original within distance 31 (not a property of the index).
        per_edit: dict[str, list[int]] = {}
        for edit, found in zip(data.edits, answers, strict=False):
            kind = edit.split("/", 1)[1]
            matched = any(row >= n - result["images"] for row, _d in found)
            per_edit.setdefault(kind, []).append(int(matched))
        result["edit_found_share"] = {k: round(sum(v) / len(v), 3) for k, v in per_edit.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="stored rows per distribution")
    parser.add_argument("--queries", type=int, default=1_000, help="timed queries per distribution")
    parser.add_argument(
        "--scan-queries", type=int, default=300, help="queries checked against brute force"
    )
    parser.add_argument(
        "--distributions",
        default=",".join(DISTRIBUTIONS),
        help=f"comma-separated subset of {', '.join(DISTRIBUTIONS)}",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--min-quality",
        type=int,
        default=DEFAULT_MIN_QUALITY,
        help="quality floor (0: every row near-matched, the behaviour before the floor)",
    )
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--mapped",
        metavar="DIR",
        help="search the base through a memory-mapped segment file written in DIR "
        "(as serve does), not the in-memory arrays",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed random queries first (a mapped file's pages fault in on first use)",
    )
    args = parser.parse_args()
    results = []
    for name in args.distributions.split(","):
        started = time.perf_counter()
        data = generate(name, args.size, queries=args.queries, seed=args.seed)
        print(f"{name}: generated {args.size:,} rows in {time.perf_counter() - started:.1f} s")
        mapped = None
        if args.mapped is not None:
            mapped = Path(args.mapped) / f"bench-pdq-{os.getpid()}-{name}.seg"
        result = run_one(data, args.scan_queries, args.min_quality, mapped, args.warmup)
        if mapped is not None:
            mapped.unlink(missing_ok=True)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(f"\n{'distribution':<12} {'p50 ms':>8} {'p99 ms':>8} {'scan ms':>8} "
          f"{'p99/scan':>9} {'recall':>7} {'hits':>7}")  # fmt: skip
    for r in results:
        print(
            f"{r['distribution']:<12} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
            f"{r['scan_p50_ms']:>8.2f} {r['p99_over_scan']:>9.4f} {r['recall']:>7.2%} "
            f"{r['mean_hits']:>7.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
