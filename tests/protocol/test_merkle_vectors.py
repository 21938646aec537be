"""Conformance with Go's golang.org/x/mod/sumdb/tlog, and named bad proofs.

The shared vectors (``../shared/vectors/tlog.json`` beside the repository)
were made with Go's sumdb/tlog: 20 leaves, the root of every size 1..20, every
inclusion proof and every consistency proof among those sizes. We reproduce
each byte for byte with ``protocol.tree`` (through a NodeReader over the
leaves) and verify each with ``protocol.merkle``.

The bad cases follow transparency-dev/merkle's habit of corrupting every
good proof in named ways. For each case the expected error class comes from
the naive RFC 6962 reference in ``test_merkle_properties``; a few size
mutations legitimately still verify (an inclusion or consistency proof does
not bind the tree size by itself; the signed checkpoint does), and those are
asserted to verify.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from protocol.errors import MalformedError, ProofError, RootMismatchError
from protocol.hashing import EMPTY_ROOT, hash_leaf, hash_leaves
from protocol.merkle import (
    root_from_consistency_proof,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from protocol.tree import CompactRange, compute_consistency_proof, compute_inclusion_proof
from tests.conftest import load_tlog_vectors
from tests.protocol.test_merkle_properties import (
    ListReader,
    ref_consistency_outcome,
    ref_inclusion_outcome,
    ref_mth,
    ref_path,
    ref_proof,
)

# Parametrisation needs the vectors at collection time, before fixtures exist.
VECTORS: dict[str, Any] = load_tlog_vectors()
LEAVES = [bytes.fromhex(h) for h in VECTORS["leaf_hashes"]]
ROOTS = {n + 1: bytes.fromhex(h) for n, h in enumerate(VECTORS["roots_by_size"])}
ROOTS[0] = EMPTY_ROOT

N_LEAVES = 20
N_INCLUSION = 210  # every (index, size) with 0 <= index < size <= 20
N_CONSISTENCY = 210  # every (old, new) with 1 <= old <= new <= 20


def unhex(hashes: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in hashes]


# --------------------------------------------------------------------------
# Conformance.
# --------------------------------------------------------------------------


def test_fixture_is_the_file_parametrised_here(tlog_vectors: dict[str, Any]) -> None:
    assert tlog_vectors == VECTORS


def test_vector_counts() -> None:
    assert len(VECTORS["leaf_data_hex"]) == N_LEAVES
    assert len(VECTORS["leaf_hashes"]) == N_LEAVES
    assert len(VECTORS["roots_by_size"]) == N_LEAVES
    assert len(VECTORS["inclusion_proofs"]) == N_INCLUSION
    assert len(VECTORS["consistency_proofs"]) == N_CONSISTENCY


def test_leaf_hashes(tlog_vectors: dict[str, Any]) -> None:
    datas = [bytes.fromhex(h) for h in tlog_vectors["leaf_data_hex"]]
    want = unhex(tlog_vectors["leaf_hashes"])
    assert [hash_leaf(d) for d in datas] == want
    assert hash_leaves(datas) == want
    assert len(want) == N_LEAVES


def test_roots_by_size(tlog_vectors: dict[str, Any]) -> None:
    leaves = unhex(tlog_vectors["leaf_hashes"])
    checked = 0
    cr = CompactRange.empty()
    assert cr.root() == EMPTY_ROOT == root_from_leaf_hashes([])
    for size, root_hex in enumerate(tlog_vectors["roots_by_size"], start=1):
        root = bytes.fromhex(root_hex)
        assert root_from_leaf_hashes(leaves[:size]) == root, size
        assert ref_mth(leaves[:size]) == root, size
        cr.append(leaves[size - 1])
        assert cr.size == size
        assert cr.root() == root, size
        assert CompactRange.from_frontier(size, cr.frontier).root() == root, size
        checked += 1
    assert checked == N_LEAVES


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 7, 20])
def test_compact_range_batches_reach_every_root(batch: int) -> None:
    cr = CompactRange.empty()
    checked = 0
    for start in range(0, N_LEAVES, batch):
        cr.extend(LEAVES[start : start + batch])
        assert cr.root() == ROOTS[cr.size]
        checked += 1
    assert cr.size == N_LEAVES
    assert checked == -(-N_LEAVES // batch)


def test_inclusion_proofs(tlog_vectors: dict[str, Any]) -> None:
    leaves = unhex(tlog_vectors["leaf_hashes"])
    roots = [EMPTY_ROOT, *unhex(tlog_vectors["roots_by_size"])]
    seen = set()
    for entry in tlog_vectors["inclusion_proofs"]:
        index, size, want = entry["index"], entry["size"], unhex(entry["proof"])
        reader = ListReader(leaves[:size])
        assert compute_inclusion_proof(index, size, reader) == want, (index, size)
        assert len(reader.requests) == 1  # one batched read per proof
        assert ref_path(index, leaves[:size]) == want
        verify_inclusion(index, size, leaves[index], want, roots[size])
        assert root_from_inclusion_proof(index, size, leaves[index], want) == roots[size]
        seen.add((index, size))
    assert len(seen) == N_INCLUSION


def test_consistency_proofs(tlog_vectors: dict[str, Any]) -> None:
    leaves = unhex(tlog_vectors["leaf_hashes"])
    roots = [EMPTY_ROOT, *unhex(tlog_vectors["roots_by_size"])]
    seen = set()
    equal_sizes = 0
    for entry in tlog_vectors["consistency_proofs"]:
        old, new, want = entry["old_size"], entry["new_size"], unhex(entry["proof"])
        reader = ListReader(leaves[:new])
        assert compute_consistency_proof(old, new, reader) == want, (old, new)
        assert ref_proof(old, leaves[:new]) == want
        verify_consistency(old, new, roots[old], roots[new], want)
        if old > 0:
            assert root_from_consistency_proof(old, new, roots[old], want) == roots[new]
        if old in (0, new):
            assert want == []
            equal_sizes += old == new
        seen.add((old, new))
    assert len(seen) == N_CONSISTENCY
    assert equal_sizes == N_LEAVES


def test_consistency_from_the_empty_tree() -> None:
    # The Go vectors start at old size 1; size 0 is our convention (empty proof).
    checked = 0
    for new in range(N_LEAVES + 1):
        assert compute_consistency_proof(0, new, ListReader(LEAVES[:new])) == []
        verify_consistency(0, new, EMPTY_ROOT, ROOTS[new], [])
        checked += 1
    assert checked == N_LEAVES + 1
    with pytest.raises(RootMismatchError):
        verify_consistency(0, 5, ROOTS[1], ROOTS[5], [])
    with pytest.raises(ProofError) as exc:
        verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [LEAVES[0]])
    assert type(exc.value) is ProofError
    with pytest.raises(MalformedError):
        root_from_consistency_proof(0, 5, EMPTY_ROOT, [])


# --------------------------------------------------------------------------
# Named bad cases.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BadCase:
    """One corrupted proof and the outcome the naive reference predicts."""

    id: str
    call: Callable[[], None]
    expected: type[Exception] | None


def flip(h: bytes, bit: int = 0) -> bytes:
    out = bytearray(h)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _label(expected: type[Exception] | None) -> str:
    return "verifies" if expected is None else expected.__name__


def inclusion_cases() -> list[BadCase]:
    cases: list[BadCase] = []
    for entry in VECTORS["inclusion_proofs"]:
        index, size, proof = entry["index"], entry["size"], unhex(entry["proof"])
        leaf, root = LEAVES[index], ROOTS[size]
        other_leaf = LEAVES[(index + 1) % N_LEAVES]
        variants: list[tuple[str, tuple[int, int, bytes, list[bytes], bytes]]] = []
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = flip(bad[j], (7 * j + index) % 256)
            variants.append((f"flip-proof[{j}]", (index, size, leaf, bad, root)))
        variants += [
            ("index+1", (index + 1, size, leaf, proof, root)),
            ("index-1", (index - 1, size, leaf, proof, root)),
            ("size+1", (index, size + 1, leaf, proof, root)),
            ("size-1", (index, size - 1, leaf, proof, root)),
            ("index=size", (size, size, leaf, proof, root)),
            ("index>size", (size + 3, size, leaf, proof, root)),
            ("hash-appended", (index, size, leaf, [*proof, leaf], root)),
            ("hash-prepended", (index, size, leaf, [leaf, *proof], root)),
            ("wrong-leaf", (index, size, other_leaf, proof, root)),
            ("flipped-leaf", (index, size, flip(leaf, 255), proof, root)),
            ("wrong-root", (index, size, leaf, proof, flip(root, 128))),
            ("empty-root", (index, size, leaf, proof, EMPTY_ROOT)),
            ("leaf-31-bytes", (index, size, leaf[:31], proof, root)),
            ("leaf-33-bytes", (index, size, leaf + b"\x00", proof, root)),
            ("root-31-bytes", (index, size, leaf, proof, root[:31])),
            ("root-33-bytes", (index, size, leaf, proof, root + b"\x00")),
        ]
        if proof:
            variants += [
                ("hash-removed", (index, size, leaf, proof[:-1], root)),
                ("first-hash-removed", (index, size, leaf, proof[1:], root)),
                ("empty-proof", (index, size, leaf, [], root)),
                ("proof[0]-31-bytes", (index, size, leaf, [proof[0][:31], *proof[1:]], root)),
                ("proof[0]-33-bytes", (index, size, leaf, [proof[0] + b"\x00", *proof[1:]], root)),
                ("proof[-1]-empty", (index, size, leaf, [*proof[:-1], b""], root)),
            ]
        if len(proof) >= 2:
            variants.append(("proof-reversed", (index, size, leaf, proof[::-1], root)))
        for name, args in variants:
            expected = ref_inclusion_outcome(*args)
            cases.append(
                BadCase(
                    f"incl-{index}-of-{size}/{name}/{_label(expected)}",
                    partial(verify_inclusion, *args),
                    expected,
                )
            )
    return cases


def consistency_cases() -> list[BadCase]:
    cases: list[BadCase] = []
    for entry in VECTORS["consistency_proofs"]:
        old, new, proof = entry["old_size"], entry["new_size"], unhex(entry["proof"])
        old_root, new_root = ROOTS[old], ROOTS[new]
        variants: list[tuple[str, tuple[int, int, bytes, bytes, list[bytes]]]] = []
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = flip(bad[j], (5 * j + old + new) % 256)
            variants.append((f"flip-proof[{j}]", (old, new, old_root, new_root, bad)))
        variants += [
            ("old+1", (old + 1, new, old_root, new_root, proof)),
            ("old-1", (old - 1, new, old_root, new_root, proof)),
            ("new+1", (old, new + 1, old_root, new_root, proof)),
            ("new-1", (old, new - 1, old_root, new_root, proof)),
            ("hash-appended", (old, new, old_root, new_root, [*proof, old_root])),
            ("hash-prepended", (old, new, old_root, new_root, [new_root, *proof])),
            ("wrong-old-root", (old, new, flip(old_root, 3), new_root, proof)),
            ("wrong-new-root", (old, new, old_root, flip(new_root, 200), proof)),
            ("old-root-31-bytes", (old, new, old_root[:31], new_root, proof)),
            ("old-root-33-bytes", (old, new, old_root + b"\x00", new_root, proof)),
            ("new-root-31-bytes", (old, new, old_root, new_root[:31], proof)),
            ("new-root-33-bytes", (old, new, old_root, new_root + b"\x00", proof)),
        ]
        if old < new:
            variants += [
                ("roots-swapped", (old, new, new_root, old_root, proof)),
                ("sizes-swapped", (new, old, old_root, new_root, proof)),
                ("old>new", (new + 1, new, old_root, new_root, proof)),
            ]
        if proof:
            variants += [
                ("hash-removed", (old, new, old_root, new_root, proof[:-1])),
                ("first-hash-removed", (old, new, old_root, new_root, proof[1:])),
                ("empty-proof", (old, new, old_root, new_root, [])),
                ("proof[0]-31-bytes", (old, new, old_root, new_root, [proof[0][:31], *proof[1:]])),
                (
                    "proof[0]-33-bytes",
                    (old, new, old_root, new_root, [proof[0] + b"\x00", *proof[1:]]),
                ),
            ]
        if len(proof) >= 2:
            variants.append(("proof-reversed", (old, new, old_root, new_root, proof[::-1])))
        for name, args in variants:
            expected = ref_consistency_outcome(*args)
            cases.append(
                BadCase(
                    f"cons-{old}-to-{new}/{name}/{_label(expected)}",
                    partial(verify_consistency, *args),
                    expected,
                )
            )
    return cases


INCLUSION_CASES = inclusion_cases()
CONSISTENCY_CASES = consistency_cases()


def run_case(case: BadCase) -> None:
    if case.expected is None:
        case.call()
        return
    with pytest.raises(case.expected) as exc:
        case.call()
    # Exact class: a RootMismatchError must not pass for a ProofError case.
    assert type(exc.value) is case.expected, (type(exc.value), str(exc.value))


@pytest.mark.parametrize("case", INCLUSION_CASES, ids=[c.id for c in INCLUSION_CASES])
def test_bad_inclusion_proof(case: BadCase) -> None:
    run_case(case)


@pytest.mark.parametrize("case", CONSISTENCY_CASES, ids=[c.id for c in CONSISTENCY_CASES])
def test_bad_consistency_proof(case: BadCase) -> None:
    run_case(case)


def _tally(cases: list[BadCase]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for case in cases:
        key = _label(case.expected)
        tally[key] = tally.get(key, 0) + 1
    return tally


def test_bad_case_tally() -> None:
    """Pin how many cases of each outcome exist, so a change in either side shows."""
    assert _tally(INCLUSION_CASES) == {
        "MalformedError": 1947,
        "ProofError": 1189,
        "RootMismatchError": 2202,
        "verifies": 292,  # size+1 (154) and size-1 (138) with the same path shape
    }
    assert _tally(CONSISTENCY_CASES) == {
        "MalformedError": 1640,
        "ProofError": 1497,
        "RootMismatchError": 1526,
        "verifies": 292,  # new+1 (154) and new-1 (138) with the same proof shape
    }
    # Only size changes may leave a proof valid: every other corruption must fail.
    for case in INCLUSION_CASES + CONSISTENCY_CASES:
        if case.expected is None:
            assert case.id.split("/")[1] in {"size+1", "size-1", "new+1", "new-1"}, case.id


def test_flips_cover_every_proof_position() -> None:
    flips = sum(len(e["proof"]) for e in VECTORS["inclusion_proofs"])
    assert sum("/flip-proof[" in c.id for c in INCLUSION_CASES) == flips > 0
    flips = sum(len(e["proof"]) for e in VECTORS["consistency_proofs"])
    assert sum("/flip-proof[" in c.id for c in CONSISTENCY_CASES) == flips > 0
    assert all(c.expected is RootMismatchError for c in INCLUSION_CASES if "/flip-" in c.id)
    assert all(c.expected is RootMismatchError for c in CONSISTENCY_CASES if "/flip-" in c.id)


def test_proofs_alone_do_not_bind_the_tree_size() -> None:
    """Why some size mutations above verify: callers must take size from the checkpoint."""
    proof = unhex(VECTORS["inclusion_proofs"][3]["proof"])  # index 0 of size 3
    assert (VECTORS["inclusion_proofs"][3]["index"], VECTORS["inclusion_proofs"][3]["size"]) == (
        0,
        3,
    )
    verify_inclusion(0, 3, LEAVES[0], proof, ROOTS[3])
    verify_inclusion(0, 4, LEAVES[0], proof, ROOTS[3])  # same hashing, same result
    with pytest.raises(RootMismatchError):
        verify_inclusion(0, 4, LEAVES[0], proof, ROOTS[4])
