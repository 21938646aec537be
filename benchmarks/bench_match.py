"""Matching benchmark: PDQ near-match at 1M and 10M hashes, three indexes in one run.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/bench_match.py \\
        [--sizes 1000000,10000000] [--queries 1000] [--misses 200] \\
        [--scan-queries 200] [--skip-baseline threatexchange] [--json out.json]

For each size N: N random 256-bit PDQ hashes (ids 0..N-1). Planted queries:
``--queries`` rows picked at random, each with exactly ``k % 32`` random bits
flipped (distances 0..31 spread evenly), so each has a known neighbour at
distance <= 31. Miss queries: ``--misses`` fresh random hashes (a random
hash is about 128 bits from everything, so they have none). Every index answers
the same queries at the default threshold (31), one query per call, timed with
``perf_counter`` around the call, on one core (run it under ``taskset -c 0``;
the script also pins faiss/OpenMP to one thread).

Indexes:

- ``PdqIndex`` (node/ledger/pdq_index.py), queried with 32-byte hashes.
- python-threatexchange's ``PDQIndex`` (``PdqSignal.get_index_cls()``, what
  hasher-matcher-actioner builds for PDQ): faiss ``IndexBinaryMultiHash`` with
  16 hash maps of 16 bits, ``nflip = threshold // 16``, behind
  ``IndexBinaryIDMap2``; queried through ``PDQIndex.query(hex)`` as HMA does, and
  its faiss ``range_search`` alone (no Python wrapper) for reference.
  Install with ``pip install -e .[bench]``; ``--skip-baseline threatexchange``
  leaves it out.
- A numpy brute-force scan (the obvious code: XOR, ``np.bitwise_count``, sum
  per row, blocks of 1M rows), the baseline for ratios. It runs on the first
  ``--scan-queries`` queries only (it is slow), and its answers are the exact
  reference: each index's full result set must equal it.

Reported: p50/p99 per query, recall of the planted neighbours, build time,
memory per hash (the index's own ``nbytes`` where it has one, and the process's
resident-set growth while it was built and held).

The exact-match-over-API figure (bulk ``POST /v1/match`` on loopback mTLS) is
added by the matching work in :func:`bench_exact_api`; ``--exact-api`` runs it.
"""

from __future__ import annotations

import os

# Before numpy/faiss load their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.ledger.pdq_index import PdqIndex  # noqa: E402

THRESHOLD = 31


@dataclass
class Result:
    name: str
    size: int
    build_s: float
    bytes_per_hash_rss: float
    bytes_per_hash_own: float | None
    p50_ms: float
    p99_ms: float
    mean_ms: float
    queries: int
    planted_found: int
    planted_total: int
    exact_sets: str  # "k/n" result sets identical to the scan's, or "reference"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_data(
    n: int, planted: int, misses: int, seed: int
) -> tuple[np.ndarray, list[bytes], list[tuple[int, int] | None]]:
    """Hashes (n, 32) uint8, the queries, and each query's planted (row, distance)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    queries: list[bytes] = []
    truth: list[tuple[int, int] | None] = []
    for k in range(planted):
        row = int(rng.integers(n))
        d = k % (THRESHOLD + 1)
        bits = np.unpackbits(hashes[row])
        bits[rng.choice(256, d, replace=False)] ^= 1
        queries.append(np.packbits(bits).tobytes())
        truth.append((row, d))
    for _ in range(misses):
        queries.append(rng.integers(0, 256, 32, dtype=np.uint8).tobytes())
        truth.append(None)
    # Interleave so neither kind is timed only when caches are warm or cold.
    order = rng.permutation(len(queries))
    return hashes, [queries[i] for i in order], [truth[i] for i in order]


def time_queries(
    search: Callable[[bytes], list[tuple[int, int]]], queries: Sequence[bytes]
) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    times = np.empty(len(queries))
    answers = []
    for i, q in enumerate(queries):
        started = time.perf_counter()
        answer = search(q)
        times[i] = time.perf_counter() - started
        answers.append(answer)
    return times * 1e3, answers


def summarise(
    name: str,
    n: int,
    build_s: float,
    rss_growth: int,
    own_bytes: int | None,
    times_ms: np.ndarray,
    answers: list[list[tuple[int, int]]],
    truth: list[tuple[int, int] | None],
    reference: list[list[tuple[int, int]]] | None,
    note: str = "",
) -> Result:
    found = total = 0
    for answer, planted in zip(answers, truth, strict=True):
        if planted is None:
            continue
        total += 1
        found += planted in set(answer)
    if reference is None:
        exact = "reference"
    else:
        same = sum(
            sorted(a) == sorted(r)
            for a, r in zip(answers[: len(reference)], reference, strict=True)
        )
        exact = f"{same}/{len(reference)}"
    return Result(
        name=name,
        size=n,
        build_s=build_s,
        bytes_per_hash_rss=rss_growth / n,
        bytes_per_hash_own=None if own_bytes is None else own_bytes / n,
        p50_ms=float(np.percentile(times_ms, 50)),
        p99_ms=float(np.percentile(times_ms, 99)),
        mean_ms=float(times_ms.mean()),
        queries=len(times_ms),
        planted_found=found,
        planted_total=total,
        exact_sets=exact,
        note=note,
    )


def warm_up(search: Callable[[bytes], object], seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    for _ in range(5):
        search(rng.integers(0, 256, 32, dtype=np.uint8).tobytes())


def bench_numpy_scan(
    hashes: np.ndarray, queries: Sequence[bytes], truth: list[tuple[int, int] | None]
) -> tuple[Result, list[list[tuple[int, int]]]]:
    """Brute force: the straightforward vectorised scan (baseline and exact reference)."""
    rss0 = rss_bytes()
    started = time.perf_counter()
    words = hashes.view(">u8").astype(np.uint64)  # (n, 4) native words
    build_s = time.perf_counter() - started
    growth = rss_bytes() - rss0
    block = 1 << 20

    def search(q: bytes) -> list[tuple[int, int]]:
        qw = np.frombuffer(q, dtype=">u8").astype(np.uint64)
        hits = []
        for lo in range(0, len(words), block):
            dist = np.bitwise_count(words[lo : lo + block] ^ qw).sum(axis=1)
            rows = np.flatnonzero(dist <= THRESHOLD)
            hits.extend(zip((rows + lo).tolist(), dist[rows].tolist(), strict=True))
        return sorted(hits, key=lambda h: (h[1], h[0]))

    warm_up(search, 0)
    times, answers = time_queries(search, queries)
    result = summarise(
        "numpy brute-force scan",
        len(hashes),
        build_s,
        growth,
        words.nbytes,
        times,
        answers,
        truth[: len(queries)],
        None,
        note="baseline",
    )
    return result, answers


def bench_pdq_index(
    hashes: np.ndarray,
    queries: Sequence[bytes],
    truth: list[tuple[int, int] | None],
    reference: list[list[tuple[int, int]]],
) -> Result:
    gc.collect()
    rss0 = rss_bytes()
    started = time.perf_counter()
    index = PdqIndex()
    index.add(np.arange(len(hashes), dtype=np.int64), hashes)
    build_s = time.perf_counter() - started
    growth = rss_bytes() - rss0

    def search(q: bytes) -> list[tuple[int, int]]:
        return index.search(q, THRESHOLD)

    warm_up(search, 0)
    times, answers = time_queries(search, queries)
    result = summarise(
        "hashmesh PdqIndex",
        len(hashes),
        build_s,
        growth,
        index.nbytes,
        times,
        answers,
        truth,
        reference,
    )
    result.extra = pdq_index_extras(index, queries[:200], seed=len(hashes))
    return result


def pdq_index_extras(index: PdqIndex, queries: Sequence[bytes], seed: int) -> dict[str, Any]:
    """Other thresholds, and the cost of incremental adds (the unindexed tail and merges)."""
    extra: dict[str, Any] = {}
    for d in (0, 16, 31, 48, 64):
        times, _ = time_queries(lambda q, d=d: index.search(q, d), queries)
        extra[f"d={d}"] = (float(np.percentile(times, 50)), float(np.percentile(times, 99)))
    # Internals, read only to report them: the tail a merge waits for.
    from node.ledger import pdq_index as module

    def tail_limit() -> int:
        return min(module._TAIL_LIMIT_MAX, max(module.TAIL_LIMIT, index._indexed // 64))

    rng = np.random.default_rng(seed)
    batch = 1000
    next_id = len(index)
    add_ms = []
    while len(index) - index._indexed + batch < tail_limit():
        rows = rng.integers(0, 256, (batch, 32), dtype=np.uint8)
        started = time.perf_counter()
        index.add(np.arange(next_id, next_id + batch), rows)
        add_ms.append((time.perf_counter() - started) * 1e3)
        next_id += batch
    tail = len(index) - index._indexed
    times, _ = time_queries(lambda q: index.search(q, THRESHOLD), queries)
    extra["tail rows"] = tail
    extra["d=31 with that tail"] = (
        float(np.percentile(times, 50)),
        float(np.percentile(times, 99)),
    )
    extra["add 1000 rows, p50 ms (no merge)"] = float(np.percentile(add_ms, 50)) if add_ms else None
    rows = rng.integers(0, 256, (batch, 32), dtype=np.uint8)
    started = time.perf_counter()
    index.add(np.arange(next_id, next_id + batch), rows)
    extra["add 1000 rows that triggers a merge, ms"] = (time.perf_counter() - started) * 1e3
    extra["tail after"] = len(index) - index._indexed
    times, _ = time_queries(lambda q: index.search(q, THRESHOLD), queries)
    extra["d=31 after the merge"] = (
        float(np.percentile(times, 50)),
        float(np.percentile(times, 99)),
    )
    return extra


def bench_threatexchange(
    hashes: np.ndarray,
    queries: Sequence[bytes],
    truth: list[tuple[int, int] | None],
    reference: list[list[tuple[int, int]]],
) -> list[Result]:
    import faiss
    from threatexchange.signal_type.pdq.signal import PdqSignal

    faiss.omp_set_num_threads(1)
    index_cls = PdqSignal.get_index_cls()
    gc.collect()
    # Its input is (hex, entry) pairs and it keeps them (local_id_to_entry), so they
    # count towards its memory; the hex text they are cut from does not.
    rss0 = rss_bytes()
    raw = hashes.tobytes().hex()
    entries = [(raw[64 * i : 64 * (i + 1)], i) for i in range(len(hashes))]
    del raw
    started = time.perf_counter()
    index = index_cls.build(entries)
    build_s = time.perf_counter() - started
    del entries
    gc.collect()
    growth = rss_bytes() - rss0
    hex_queries = [q.hex() for q in queries]
    by_hex = dict(zip(hex_queries, queries, strict=True))

    def search(q: bytes) -> list[tuple[int, int]]:
        return [(m.metadata, m.similarity_info.distance) for m in index.query(q.hex())]

    def search_hex(hq: str) -> list[tuple[int, int]]:
        return [(m.metadata, m.similarity_info.distance) for m in index.query(hq)]

    warm_up(search, 0)
    # Hex conversion is the caller's (HMA receives hex), so time the query on hex input.
    times = np.empty(len(hex_queries))
    answers = []
    for i, hq in enumerate(hex_queries):
        started = time.perf_counter()
        answer = search_hex(hq)
        times[i] = time.perf_counter() - started
        answers.append(answer)
    results = [
        summarise(
            f"threatexchange {index_cls.__name__}.query",
            len(hashes),
            build_s,
            growth,
            None,
            times * 1e3,
            answers,
            truth,
            reference,
            note=f"faiss {faiss.__version__}, IndexBinaryMultiHash nhash=16",
        )
    ]
    # The faiss engine alone, without threatexchange's Python per-hit work.
    faiss_index = index.index.faiss_index
    index.index.mih_index.nflip = THRESHOLD // index.index.mih_index.nhash
    arrays = [np.frombuffer(by_hex[hq], dtype=np.uint8).reshape(1, 32) for hq in hex_queries]
    raw_times = np.empty(len(arrays))
    raw_answers = []
    for i, qa in enumerate(arrays):
        started = time.perf_counter()
        _lims, dist, ids = faiss_index.range_search(qa, THRESHOLD + 1)
        raw_times[i] = time.perf_counter() - started
        raw_answers.append(list(zip(ids.tolist(), dist.astype(int).tolist(), strict=True)))
    results.append(
        summarise(
            "faiss IndexBinaryMultiHash.range_search (inside the above)",
            len(hashes),
            build_s,
            growth,
            None,
            raw_times * 1e3,
            raw_answers,
            truth,
            reference,
            note="same index object, no Python wrapper",
        )
    )
    return results


# -- exact matching through the bulk API (M2) ----------------------------------------

EXACT_ENTRIES = 1_000_000
EXACT_REQUESTS = 30
EXACT_BATCH = 10_000
EXACT_HIT_RATE = 0.1


def _exact_value(signal_type: str, i: int) -> str:
    import hashlib

    digest = hashlib.sha256(f"bench-exact-{i}".encode()).hexdigest()
    return digest[:32] if signal_type == "md5" else digest


def bench_exact_api(args: argparse.Namespace) -> dict[str, Any] | None:
    """Exact matching through the bulk API: ``POST /v1/match`` on loopback mTLS.

    A node holding ``EXACT_ENTRIES`` listed hashes (80 % sha256, 20 % md5, one
    label each) is served by ``hashmesh serve --no-sync`` in its own process; this
    process is a subscriber sending ``EXACT_REQUESTS`` sequential requests of
    ``EXACT_BATCH`` mixed sha256/md5 queries, 10 % of them listed, over one
    keep-alive connection, then the same requests over two connections at once
    (the server's reader threads overlap SQLite with Python). Bodies are built
    before timing; each response is parsed and its hits checked against the
    number planted. Target: >= 100,000 hashes/s.
    """
    del args
    import asyncio
    import random
    import signal
    import socket
    import subprocess
    import tempfile

    import aiohttp

    from node.config import load_config
    from node.ledger import Ledger
    from node.ledger.provision import init_node
    from node.storage.peer_store import PeerRecord
    from node.tls import client_ssl_context, spki_fingerprint, write_node_identity
    from protocol.entry import AddEntry

    base = Path(tempfile.mkdtemp(prefix="hashmesh-bench-exact-"))
    node_dir = base / "node"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    init_node(node_dir, "bench-exact.example/hashmesh", listen=f"127.0.0.1:{port}")
    started = time.perf_counter()
    with Ledger.open(node_dir) as ledger:
        makers = {
            t: AddEntry.maker(signal_type=t, labels=["iwf:category-a"]) for t in ("sha256", "md5")
        }
        chunk = 100_000
        for lo in range(0, EXACT_ENTRIES, chunk):
            ledger.append(
                [
                    makers["md5" if i % 5 == 0 else "sha256"](
                        _exact_value("md5" if i % 5 == 0 else "sha256", i)
                    )
                    for i in range(lo, min(lo + chunk, EXACT_ENTRIES))
                ]
            )
    print(f"  exact API: {EXACT_ENTRIES:,} hashes listed in {time.perf_counter() - started:.1f} s")
    client = base / "client"
    write_node_identity(
        client / "node.key", client / "node.crt", common_name="bench-client", host="127.0.0.1"
    )
    from cryptography import x509

    pem = (client / "node.crt").read_text(encoding="ascii")
    with Ledger.open(node_dir) as ledger:
        ledger.peers.add_peer(
            PeerRecord(
                name="bench-client.example/log",
                url="https://127.0.0.1:1",
                tls_cert=pem,
                spki=spki_fingerprint(x509.load_pem_x509_certificate(pem.encode())),
                vkey="bench-client.example/log+00000000+AAAA",
                role="subscriber",
                added_at="2026-01-01T00:00:00Z",
            )
        )
    rng = random.Random(7)
    bodies: list[bytes] = []
    expected: list[int] = []
    for r in range(EXACT_REQUESTS + 2):
        items, hits = [], 0
        for k in range(EXACT_BATCH):
            if rng.random() < EXACT_HIT_RATE:
                i = rng.randrange(EXACT_ENTRIES)
                hits += 1
            else:
                i = EXACT_ENTRIES + r * EXACT_BATCH + k  # never listed
            t = "md5" if i % 5 == 0 else "sha256"
            items.append({"type": t, "value": _exact_value(t, i)})
        bodies.append(json.dumps({"hashes": items}).encode())
        expected.append(hits)
    server = subprocess.Popen(
        [sys.executable, "-m", "node", "--dir", str(node_dir), "serve", "--no-sync"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(base / "server.log").open("wb"),
    )
    config = load_config(node_dir)
    ctx = client_ssl_context(
        client / "node.crt", client / "node.key", config.tls_cert_path.read_text(encoding="ascii")
    )
    url = f"https://127.0.0.1:{port}"

    async def post(session: aiohttp.ClientSession, n: int) -> float:
        t0 = time.perf_counter()
        async with session.post(
            url + "/v1/match", data=bodies[n], headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            doc = json.loads(await resp.read())
        found = sum(len(m["hits"]) for m in doc["matches"])
        assert found == expected[n], (found, expected[n])
        return time.perf_counter() - t0

    async def drive(session: aiohttp.ClientSession, connections: int) -> dict[str, Any]:
        todo = list(range(2, len(bodies)))  # bodies 0 and 1 warm the server up
        times: list[float] = []

        async def worker() -> None:
            while todo:
                times.append(await post(session, todo.pop()))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall = time.perf_counter() - started
        ms = np.array(times) * 1e3
        return {
            "connections": connections,
            "hashes_per_s": round(len(times) * EXACT_BATCH / wall),
            "request_p50_ms": round(float(np.percentile(ms, 50)), 1),
            "request_p99_ms": round(float(np.percentile(ms, 99)), 1),
        }

    async def run() -> dict[str, Any]:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=2)
        ) as session:
            for _ in range(200):
                try:
                    async with session.get(url + "/v1/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            for n in (0, 1):
                await post(session, n)
            runs = [await drive(session, 1), await drive(session, 2)]
        return {
            "entries": EXACT_ENTRIES,
            "requests": len(bodies) - 2,
            "hashes_per_request": EXACT_BATCH,
            "hit_rate": EXACT_HIT_RATE,
            "request_bytes": len(bodies[0]),
            "runs": runs,
        }

    try:
        return asyncio.run(run())
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def print_table(results: list[Result], baseline: Result | None) -> None:
    print(
        "| index | N | build s | bytes/hash (own) | bytes/hash (RSS) | p50 ms | p99 ms "
        "| p50 vs scan | recall (planted <= 31) | sets = scan |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        own = "" if r.bytes_per_hash_own is None else f"{r.bytes_per_hash_own:,.0f}"
        ratio = (
            f"{baseline.p50_ms / r.p50_ms:,.1f}x"
            if baseline is not None and r is not baseline
            else "1.0"
        )
        recall = f"{r.planted_found}/{r.planted_total}"
        print(
            f"| {r.name} | {r.size:,} | {r.build_s:.2f} | {own} | {r.bytes_per_hash_rss:,.0f} "
            f"| {r.p50_ms:.3f} | {r.p99_ms:.3f} | {ratio} | {recall} | {r.exact_sets} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--queries", type=int, default=1000, help="planted queries")
    parser.add_argument("--misses", type=int, default=200, help="queries with no neighbour")
    parser.add_argument(
        "--scan-queries", type=int, default=200, help="queries the numpy scan answers"
    )
    parser.add_argument(
        "--skip-baseline",
        action="append",
        default=[],
        choices=["threatexchange", "numpy"],
        help="leave a baseline out (repeatable)",
    )
    parser.add_argument("--exact-api", action="store_true", help="also run bench_exact_api")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    skip = set(args.skip_baseline)
    if "threatexchange" not in skip:
        try:
            import faiss  # noqa: F401
            import threatexchange  # noqa: F401
        except ImportError as exc:
            parser.error(
                f"threatexchange baseline not installed ({exc}); install the bench extra "
                "(pip install -e '.[bench]') or pass --skip-baseline threatexchange"
            )
    else:
        print("threatexchange baseline SKIPPED (--skip-baseline threatexchange)")
    if "numpy" in skip:
        print("numpy scan SKIPPED: no exact reference, recall from planted neighbours only")

    print(
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"cpu affinity {sorted(os.sched_getaffinity(0))}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    everything: list[Result] = []
    for n in (int(s) for s in args.sizes.split(",") if s):  # --sizes "": exact API only
        print(f"\n## {n:,} hashes, {args.queries} planted + {args.misses} miss queries")
        hashes, queries, truth = make_data(n, args.queries, args.misses, args.seed)
        results: list[Result] = []
        baseline = None
        reference: list[list[tuple[int, int]]] = []
        if "numpy" not in skip:
            baseline, reference = bench_numpy_scan(hashes, queries[: args.scan_queries], truth)
            results.append(baseline)
            print(f"  numpy scan done: p50 {baseline.p50_ms:.1f} ms", flush=True)
        ours = bench_pdq_index(hashes, queries, truth, reference)
        results.append(ours)
        print(f"  PdqIndex done: p50 {ours.p50_ms:.3f} ms", flush=True)
        if "threatexchange" not in skip:
            results.extend(bench_threatexchange(hashes, queries, truth, reference))
            print("  threatexchange done", flush=True)
        print()
        print_table(results, baseline)
        print(f"\nPdqIndex at {n:,}, 200 queries, ms (p50, p99) unless named:")
        for key, value in ours.extra.items():
            shown = (
                f"{value[0]:.3f}, {value[1]:.3f}"
                if isinstance(value, tuple)
                else f"{value:,.3f}"
                if isinstance(value, float)
                else f"{value:,}"
            )
            print(f"  {key}: {shown}")
        everything.extend(results)
        del hashes
        gc.collect()

    if args.exact_api:
        figures = bench_exact_api(args)
        if figures is None:
            print("\nexact match over the API: not implemented yet (bench_exact_api)")
        else:
            print("\nexact match over the API:", json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in everything], indent=2) + "\n")


if __name__ == "__main__":
    main()
