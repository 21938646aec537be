"""Protocol benchmark: Merkle hashing, compact range, proofs (and signatures).

    .venv/bin/python benchmarks/bench_protocol.py [--leaves 1000000] [--batch 10000] [--quick]

Everything runs in this one process, against a baseline measured in the same
run: raw ``hashlib.sha256(data).digest()`` over leaf data of 32..100 bytes.
Each leaf-rate figure is printed with its ratio to that baseline (the
compact range target is >= 0.40). Proof figures are per second at the full
tree size, served from an in-memory store of every perfect node (level ->
list of hashes, filled from ``CompactRange.extend(..., collect=True)``), and
also expressed as "raw hashes per op" (baseline rate / op rate).

``bench_signatures()`` is a placeholder for Ed25519 sign/verify figures; it is
called last.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protocol.hashing import hash_leaves  # noqa: E402
from protocol.merkle import (  # noqa: E402
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from protocol.tree import (  # noqa: E402
    CompactRange,
    NodeId,
    NodeRun,
    compute_consistency_proof,
    compute_inclusion_proof,
    frontier_ids,
)

EXTEND_TARGET = 0.40

Row = tuple[str, float, str, str, str]
ROWS: list[Row] = []


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """Fastest wall time of ``repeats`` runs (least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def add_rate(name: str, rate: float, unit: str, raw: float | None) -> None:
    ratio = f"{rate / raw:.2f}" if raw else "1.00"
    ROWS.append((name, rate, unit, ratio, ""))


def add_op(name: str, rate: float, unit: str, raw: float) -> None:
    ROWS.append((name, rate, unit, f"{rate / raw:.4f}", f"{raw / rate:.1f}"))


class LevelStore:
    """A NodeReader over every stored perfect node: level -> hashes by index."""

    def __init__(self, leaf_hashes: list[bytes]) -> None:
        self.levels: dict[int, list[bytes]] = {0: leaf_hashes}

    def add_runs(self, runs: Sequence[NodeRun]) -> None:
        for run in runs:
            row = self.levels.setdefault(run.level, [])
            if run.start != len(row):
                raise AssertionError(f"gap at level {run.level}: {run.start} != {len(row)}")
            row.extend(run.hashes)

    def get_node_hashes(self, ids: Sequence[NodeId]) -> list[bytes]:
        levels = self.levels
        return [levels[n.level][n.index] for n in ids]

    def node_count(self) -> int:
        return sum(len(v) for v in self.levels.values())


def bench_merkle(n: int, batch: int, ops: int, repeats: int, seed: int) -> None:
    rng = random.Random(seed)
    print(f"preparing {n:,} leaves of 32..100 random bytes ...", flush=True)
    datas = [rng.randbytes(rng.randint(32, 100)) for _ in range(n)]

    sha = hashlib.sha256
    t_raw = best_of(repeats, lambda: [sha(d).digest() for d in datas])
    raw = n / t_raw
    add_rate("raw hashlib.sha256 (baseline)", raw, "leaves/s", None)

    t_leaf = best_of(repeats, lambda: hash_leaves(datas))
    add_rate("hash_leaves (0x00 prefix)", n / t_leaf, "leaves/s", raw)

    t_root = best_of(repeats, lambda: root_from_leaf_hashes(hash_leaves(datas)))
    add_rate("root_from_leaf_hashes incl. leaf hashing", n / t_root, "leaves/s", raw)

    leaf_hashes = hash_leaves(datas)
    want_root = root_from_leaf_hashes(leaf_hashes)

    def extend_all(collect: bool) -> CompactRange:
        cr = CompactRange.empty()
        for start in range(0, n, batch):
            cr.extend(leaf_hashes[start : start + batch], collect=collect)
        return cr

    t_ext = best_of(repeats, lambda: extend_all(False))
    ext_rate = n / t_ext
    add_rate(f"CompactRange.extend, batches of {batch:,}", ext_rate, "leaves/s", raw)
    t_col = best_of(repeats, lambda: extend_all(True))
    add_rate(f"CompactRange.extend collect=True, {batch:,}", n / t_col, "leaves/s", raw)

    store = LevelStore(leaf_hashes)
    cr = CompactRange.empty()
    for start in range(0, n, batch):
        store.add_runs(cr.extend(leaf_hashes[start : start + batch], collect=True))
    if cr.root() != want_root:
        raise AssertionError("compact range root differs from root_from_leaf_hashes")
    if store.node_count() != 2 * n - n.bit_count():
        raise AssertionError(f"stored {store.node_count()} nodes, want {2 * n - n.bit_count()}")

    indexes = [rng.randrange(n) for _ in range(ops)]
    olds = [rng.randrange(1, n) for _ in range(ops)]
    started = time.perf_counter()
    incl = [compute_inclusion_proof(i, n, store) for i in indexes]
    add_op(
        f"inclusion proof generation @ {n:,}",
        ops / (time.perf_counter() - started),
        "proofs/s",
        raw,
    )
    started = time.perf_counter()
    cons = [compute_consistency_proof(m, n, store) for m in olds]
    add_op(
        f"consistency proof generation @ {n:,}",
        ops / (time.perf_counter() - started),
        "proofs/s",
        raw,
    )

    # Old roots for the consistency checks come from the frontier of each old size.
    old_roots = []
    for m in olds:
        old_roots.append(
            CompactRange.from_frontier(m, store.get_node_hashes(frontier_ids(m))).root()
        )

    started = time.perf_counter()
    for i, proof in zip(indexes, incl, strict=True):
        verify_inclusion(i, n, leaf_hashes[i], proof, want_root)
    add_op(
        f"inclusion proof verification @ {n:,}",
        ops / (time.perf_counter() - started),
        "verifies/s",
        raw,
    )
    started = time.perf_counter()
    for m, old_root, proof in zip(olds, old_roots, cons, strict=True):
        verify_consistency(m, n, old_root, want_root, proof)
    add_op(
        f"consistency proof verification @ {n:,}",
        ops / (time.perf_counter() - started),
        "verifies/s",
        raw,
    )

    avg_incl = sum(map(len, incl)) / ops
    avg_cons = sum(map(len, cons)) / ops
    print(
        f"tree of {n:,} leaves, {store.node_count():,} stored nodes; "
        f"mean proof length: inclusion {avg_incl:.1f}, consistency {avg_cons:.1f} hashes"
    )
    verdict = "meets" if ext_rate / raw >= EXTEND_TARGET else "MISSES"
    print(
        f"CompactRange.extend ratio {ext_rate / raw:.2f} {verdict} the target {EXTEND_TARGET:.2f}"
    )


def print_table() -> None:
    header = ("benchmark", "figure", "unit", "ratio vs raw", "raw hashes/op")
    width = max(len(r[0]) for r in ROWS) if ROWS else len(header[0])
    print()
    print(
        f"{header[0]:<{width}}  {header[1]:>14}  {header[2]:<11}  {header[3]:>12}  {header[4]:>13}"
    )
    print("-" * (width + 60))
    for name, figure, unit, ratio, per_op in ROWS:
        print(f"{name:<{width}}  {figure:>14,.0f}  {unit:<11}  {ratio:>12}  {per_op:>13}")


# ---------------------------------------------------------------------------
# Signatures: Ed25519 via PyNaCl, and the full checkpoint note path around it.
# ---------------------------------------------------------------------------


def bench_signatures(ops: int) -> None:
    """Signs and verifies per second, beside the bare PyNaCl primitive."""
    import nacl.signing

    from protocol.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
    from protocol.keys import NoteSigner

    signer = NoteSigner.from_seed("bench.example/log", bytes(range(32)))
    verifier = signer.verifier()
    cp = Checkpoint(origin=signer.name, size=1_000_000, root_hash=bytes(32))
    body = cp.to_text().encode()
    raw_key = nacl.signing.SigningKey(bytes(range(32)))
    raw_sig = raw_key.sign(body).signature

    def rate(fn: Callable[[], object]) -> float:
        started = time.perf_counter()
        for _ in range(ops):
            fn()
        return ops / (time.perf_counter() - started)

    raw_sign = rate(lambda: raw_key.sign(body))
    raw_verify = rate(lambda: raw_key.verify_key.verify(body, raw_sig))
    note = sign_checkpoint(cp, signer)
    rows = [
        ("Ed25519 sign (PyNaCl, bare)", raw_sign, "signs/s", 1.0),
        ("sign_checkpoint (note text)", rate(lambda: sign_checkpoint(cp, signer)), "signs/s", 0),
        ("Ed25519 verify (PyNaCl, bare)", raw_verify, "verifies/s", 1.0),
        (
            "open_checkpoint (parse + verify)",
            rate(lambda: open_checkpoint(note, verifier)),
            "verifies/s",
            0,
        ),
    ]
    print()
    print(f"{'signatures':<34}  {'figure':>10}  {'unit':<10}  ratio vs bare PyNaCl")
    print("-" * 80)
    for name, figure, unit, _ in rows:
        base = raw_sign if unit == "signs/s" else raw_verify
        print(f"{name:<34}  {figure:>10,.0f}  {unit:<10}  {figure / base:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hashmesh protocol benchmark")
    parser.add_argument("--leaves", type=int, default=1_000_000, help="tree size (default 1M)")
    parser.add_argument("--batch", type=int, default=10_000, help="extend batch size")
    parser.add_argument("--ops", type=int, default=20_000, help="proofs to generate/verify")
    parser.add_argument("--quick", action="store_true", help="100k leaves, 2k proofs, one run each")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    n, ops, repeats = args.leaves, args.ops, 3
    if args.quick:
        n, ops, repeats = min(n, 100_000), min(ops, 2_000), 1
    if n < 2:
        parser.error("--leaves must be at least 2")
    print(f"python {sys.version.split()[0]}, {n:,} leaves, best of {repeats}")
    bench_merkle(n, args.batch, ops, repeats, args.seed)
    print_table()
    bench_signatures(min(ops, 5_000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
