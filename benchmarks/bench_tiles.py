"""Tiles benchmark: C2SP tlog-tiles of a large tree, made and audited in memory.

    .venv/bin/python benchmarks/bench_tiles.py [--leaves 1000000] [--quick]

Everything runs in this one process beside a baseline measured in the same
run: raw ``hashlib.sha256(data).digest()`` over leaf data of 32..100 bytes
(as in ``bench_protocol.py``), alternating with the main figure so both see
the same load. Figures are best of N runs:

* every tile of the tree (full and partial, all levels) from its leaf hashes
  (``compute_tiles_from_leaf_hashes``): the hashing and copying ``hashmesh
  publish`` does, without storage and files. The issue's target for publishing
  end to end is >= 500,000 leaves/s;
* the same tiles from a node reader (``compute_tiles`` over an in-memory
  store of every perfect node, one batched read): the cost when the nodes
  come from storage, minus storage;
* an incremental publish of 1,000 new leaves, from the old partial tiles and
  the new leaf hashes (``compute_new_tiles``) and from a node reader;
* an auditor's check of every tile against the root (``verify_tiles``), and
  the root alone from the right edge (``root_from_tiles``);
* strict path parsing (``parse_tile_path``), per path.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_protocol import LevelStore, best_of  # noqa: E402
from protocol.hashing import hash_leaves  # noqa: E402
from protocol.merkle import root_from_leaf_hashes  # noqa: E402
from protocol.tiles import (  # noqa: E402
    TileId,
    compute_new_tiles,
    compute_tiles,
    compute_tiles_from_leaf_hashes,
    new_tiles,
    parse_tile_path,
    root_from_tiles,
    tiles_for_size,
    verify_tiles,
)
from protocol.tree import CompactRange  # noqa: E402

PUBLISH_TARGET = 500_000  # leaves/s, hashmesh publish end to end (issue 13)
INCREMENT = 1_000  # new leaves in the incremental publish


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hashmesh tlog-tiles benchmark")
    parser.add_argument("--leaves", type=int, default=1_000_000, help="tree size (default 1M)")
    parser.add_argument("--quick", action="store_true", help="100k leaves, one run each")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    n, repeats = args.leaves, 5
    if args.quick:
        n, repeats = min(n, 100_000), 1
    if n < 1:
        parser.error("--leaves must be at least 1")
    rng = random.Random(args.seed)
    print(f"python {sys.version.split()[0]}, {n:,} leaves, best of {repeats}")
    print(f"preparing {n + INCREMENT:,} leaves of 32..100 random bytes ...", flush=True)
    datas = [rng.randbytes(rng.randint(32, 100)) for _ in range(n + INCREMENT)]
    all_leaves = hash_leaves(datas)
    leaves = all_leaves[:n]
    root = root_from_leaf_hashes(leaves)

    rows: list[tuple[str, str, str]] = []
    sha = hashlib.sha256
    raw_datas = datas[:n]

    tiles = compute_tiles_from_leaf_hashes(leaves)
    want = tiles_for_size(n)
    if [t for t, _ in tiles] != want:
        raise AssertionError("compute_tiles_from_leaf_hashes returned other tiles")
    tile_bytes = sum(len(d) for _, d in tiles)
    by_tile = dict(tiles)
    if root_from_tiles(n, by_tile.__getitem__) != root:
        raise AssertionError("root from tiles differs from root_from_leaf_hashes")

    # Baseline and main figure alternate, so both see the same load.
    t_raw = t = float("inf")
    for _ in range(repeats):
        t_raw = min(t_raw, best_of(1, lambda: [sha(d).digest() for d in raw_datas]))
        t = min(t, best_of(1, lambda: compute_tiles_from_leaf_hashes(leaves)))
    raw = n / t_raw
    rows.append(("raw hashlib.sha256, 32..100 bytes (baseline)", f"{raw:,.0f} leaves/s", "1.00"))
    publish_rate = n / t
    rows.append(
        (
            "every tile from leaf hashes (compute_tiles_from_leaf_hashes)",
            f"{publish_rate:,.0f} leaves/s ({t * 1000:,.0f} ms)",
            f"{publish_rate / raw:.2f}",
        )
    )

    store = LevelStore(list(all_leaves))
    store.add_runs(CompactRange.empty().extend(all_leaves, collect=True))
    t = best_of(repeats, lambda: compute_tiles(want, store))
    if compute_tiles(want, store) != [d for _, d in tiles]:
        raise AssertionError("compute_tiles over a node reader differs")
    rows.append(
        (
            "every tile from a node reader (compute_tiles, 1 batched read)",
            f"{n / t:,.0f} leaves/s ({t * 1000:,.0f} ms)",
            f"{n / t / raw:.2f}",
        )
    )

    fresh = new_tiles(n, n + INCREMENT)
    new_leaves = all_leaves[n:]

    def incremental() -> list[tuple[TileId, bytes]]:
        return compute_new_tiles(n, new_leaves, by_tile.__getitem__)

    if [d for _, d in incremental()] != compute_tiles(fresh, store):
        raise AssertionError("incremental tiles differ from tiles read from the node store")
    t = best_of(max(repeats, 20), incremental)
    rows.append(
        (
            f"incremental: +{INCREMENT:,} leaves, {len(fresh)} new tiles (compute_new_tiles)",
            f"{t * 1000:.2f} ms",
            "",
        )
    )
    t = best_of(max(repeats, 20), lambda: compute_tiles(new_tiles(n, n + INCREMENT), store))
    rows.append(
        (
            "incremental: the same tiles from a node reader (compute_tiles)",
            f"{t * 1000:.2f} ms",
            "",
        )
    )

    t = best_of(repeats, lambda: verify_tiles(n, root, by_tile.__getitem__))
    rows.append(
        (
            "audit: verify_tiles, every tile against the root",
            f"{n / t:,.0f} leaves/s ({t * 1000:,.0f} ms)",
            f"{n / t / raw:.2f}",
        )
    )
    t = best_of(max(repeats, 20), lambda: root_from_tiles(n, by_tile.__getitem__))
    rows.append(("audit: root_from_tiles (right edge only)", f"{t * 1000:.3f} ms", ""))

    paths = [tile.to_path() for tile in want]
    t = best_of(repeats, lambda: [parse_tile_path(p) for p in paths])
    rows.append(("parse_tile_path (strict)", f"{len(paths) / t:,.0f} paths/s", ""))
    if [TileId.from_path(p) for p in paths] != want:
        raise AssertionError("paths do not round-trip")

    print(f"tree of {n:,} leaves: {len(want):,} tiles, {tile_bytes:,} bytes of hashes")
    print()
    width = max(len(r[0]) for r in rows)
    print(f"{'benchmark':<{width}}  {'figure':>32}  ratio vs raw")
    print("-" * (width + 48))
    for name, figure, ratio in rows:
        print(f"{name:<{width}}  {figure:>32}  {ratio:>12}")
    verdict = "meets" if publish_rate >= PUBLISH_TARGET else "MISSES"
    print(
        f"\ntiles from leaf hashes at {publish_rate:,.0f} leaves/s {verdict} the publish "
        f"target of {PUBLISH_TARGET:,} leaves/s (before storage and file writes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
