"""Merkle properties against a naive RFC 6962 reference, and the generated vectors.

The reference below is RFC 6962 section 2.1 transcribed as plain recursion
(MTH, PATH, PROOF/SUBPROOF) over lists of leaf hashes: slow, but obviously
correct. Everything in ``protocol.tree`` and ``protocol.merkle`` is checked
against it, with Hypothesis choosing sizes, indexes and bit flips.

Generated vectors: ``tests/protocol/vectors/merkle_generated.json`` holds the
roots of trees of 0..70 leaves (leaf i is ``b"hashmesh leaf %d" % i``) and a
fixed sample of inclusion and consistency proofs, all produced by the library.
``test_generated_vectors_have_not_drifted`` regenerates them and compares with
the file; ``test_generated_vectors_match_reference`` checks each entry with the
naive reference. After an intended change, rewrite the file with::

    cd /work/main && .venv/bin/python -m tests.protocol.test_merkle_properties --regenerate

and review the diff before committing it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import MalformedError, ProofError, RootMismatchError, VerificationError
from protocol.hashing import EMPTY_ROOT, hash_leaf
from protocol.merkle import root_from_leaf_hashes, verify_consistency, verify_inclusion
from protocol.tree import (
    CompactRange,
    NodeId,
    compute_consistency_proof,
    compute_inclusion_proof,
    consistency_proof_nodes,
    inclusion_proof_nodes,
)

GENERATED_PATH = Path(__file__).resolve().parent / "vectors" / "merkle_generated.json"
GENERATED_MAX_SIZE = 70
PROPERTY_MAX_SIZE = 300

# --------------------------------------------------------------------------
# Naive RFC 6962 section 2.1 reference (recursive, over leaf hashes).
# --------------------------------------------------------------------------


def ref_split(n: int) -> int:
    """k: the largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]) where D holds leaf hashes (so MTH of one entry is that entry)."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return d[0]
    k = ref_split(n)
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]): the audit path of leaf m."""
    n = len(d)
    if n == 1:
        return []
    k = ref_split(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = ref_split(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]); empty for m == 0 (any tree extends the empty one)."""
    if m == 0:
        return []
    return ref_subproof(m, d, True)


def ref_path_len(m: int, n: int) -> int:
    """len(PATH(m, D[n])), by the same recursion."""
    if n == 1:
        return 0
    k = ref_split(n)
    return 1 + (ref_path_len(m, k) if m < k else ref_path_len(m - k, n - k))


def ref_subproof_len(m: int, n: int, b: bool) -> int:
    """len(SUBPROOF(m, D[n], b)), by the same recursion."""
    if m == n:
        return 0 if b else 1
    k = ref_split(n)
    return 1 + (ref_subproof_len(m, k, b) if m <= k else ref_subproof_len(m - k, n - k, False))


def ref_root_from_path(m: int, n: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """Undo PATH: the root that ``path`` (of the right length) implies for leaf m."""
    if n == 1:
        return leaf
    k = ref_split(n)
    rest, last = path[:-1], path[-1]
    if m < k:
        return hashlib.sha256(b"\x01" + ref_root_from_path(m, k, leaf, rest) + last).digest()
    return hashlib.sha256(b"\x01" + last + ref_root_from_path(m - k, n - k, leaf, rest)).digest()


def ref_roots_from_subproof(
    m: int, n: int, proof: Sequence[bytes], b: bool, old_root: bytes
) -> tuple[bytes, bytes]:
    """Undo SUBPROOF: (MTH(D[0:m]), MTH(D[0:n])) of this subtree, implied by ``proof``."""
    if m == n:
        return (old_root, old_root) if b else (proof[0], proof[0])
    k = ref_split(n)
    rest, last = proof[:-1], proof[-1]
    if m <= k:
        o, left = ref_roots_from_subproof(m, k, rest, b, old_root)
        return o, hashlib.sha256(b"\x01" + left + last).digest()
    o, right = ref_roots_from_subproof(m - k, n - k, rest, False, old_root)
    return (
        hashlib.sha256(b"\x01" + last + o).digest(),
        hashlib.sha256(b"\x01" + last + right).digest(),
    )


def ref_inclusion_outcome(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> type[Exception] | None:
    """The error class verify_inclusion must raise (None: it must verify)."""
    if any(len(h) != 32 for h in (root, leaf, *proof)) or not 0 <= index < size:
        return MalformedError
    if len(proof) != ref_path_len(index, size):
        return ProofError
    if ref_root_from_path(index, size, leaf, proof) != root:
        return RootMismatchError
    return None


def ref_consistency_outcome(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> type[Exception] | None:
    """The error class verify_consistency must raise (None: it must verify)."""
    if any(len(h) != 32 for h in (old_root, new_root, *proof)) or not 0 <= old <= new:
        return MalformedError
    if old == 0:
        # Any tree extends the empty one; only the empty root is checked.
        if proof:
            return ProofError
        return None if old_root == hashlib.sha256(b"").digest() else RootMismatchError
    if len(proof) != ref_subproof_len(old, new, True):
        return ProofError
    o, n = ref_roots_from_subproof(old, new, proof, True, old_root)
    if o != old_root or n != new_root:
        return RootMismatchError
    return None


class ListReader:
    """A NodeReader over in-memory leaf hashes; perfect nodes via the reference MTH.

    It refuses any node that is not a perfect subtree inside the tree, so a
    plan asking for the wrong node fails loudly instead of hashing garbage.
    """

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.leaf_hashes = list(leaf_hashes)
        self.requests: list[tuple[NodeId, ...]] = []

    def get_node_hashes(self, ids: Sequence[NodeId]) -> Sequence[bytes]:
        self.requests.append(tuple(ids))
        out = []
        for node in ids:
            start, end = node.index << node.level, (node.index + 1) << node.level
            if node.level < 0 or node.index < 0 or end > len(self.leaf_hashes):
                raise AssertionError(
                    f"reader asked for {node}, outside [0, {len(self.leaf_hashes)})"
                )
            out.append(ref_mth(self.leaf_hashes[start:end]))
        return out


# --------------------------------------------------------------------------
# Generated vectors.
# --------------------------------------------------------------------------


def generated_leaf(i: int) -> bytes:
    return b"hashmesh leaf %d" % i


@cache
def generated_leaf_hashes() -> tuple[bytes, ...]:
    return tuple(hash_leaf(generated_leaf(i)) for i in range(GENERATED_MAX_SIZE))


def sample_indexes(size: int) -> list[int]:
    """The leaf indexes whose inclusion proofs are recorded for a tree of ``size``."""
    return sorted({0, size // 2, size - 1})


def sample_old_sizes(size: int) -> list[int]:
    """The old sizes whose consistency proofs to ``size`` are recorded."""
    pow2 = 1 << (size.bit_length() - 1)
    return sorted({1, size // 2 or 1, pow2, size - 1 or 1})


def generate_vectors() -> dict[str, Any]:
    """Build the generated vectors with the library under test (deterministic)."""
    leaves = generated_leaf_hashes()
    reader = ListReader(leaves)
    inclusion = []
    consistency = []
    for size in range(1, GENERATED_MAX_SIZE + 1):
        for index in sample_indexes(size):
            proof = compute_inclusion_proof(index, size, reader)
            inclusion.append({"index": index, "size": size, "proof": [h.hex() for h in proof]})
        for old in sample_old_sizes(size):
            proof = compute_consistency_proof(old, size, reader)
            consistency.append(
                {"old_size": old, "new_size": size, "proof": [h.hex() for h in proof]}
            )
    return {
        "about": (
            "Generated by tests/protocol/test_merkle_properties.py (generate_vectors). "
            "Leaf i is b'hashmesh leaf %d' % i; roots_by_size[n] is the root of leaves [0, n). "
            "Regenerate: python -m tests.protocol.test_merkle_properties --regenerate"
        ),
        "leaf_format": "hashmesh leaf %d",
        "roots_by_size": [
            root_from_leaf_hashes(leaves[:n]).hex() for n in range(GENERATED_MAX_SIZE + 1)
        ],
        "inclusion_proofs": inclusion,
        "consistency_proofs": consistency,
    }


def render_vectors(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=1, sort_keys=True) + "\n"


def test_generated_vectors_have_not_drifted() -> None:
    on_disk = GENERATED_PATH.read_text(encoding="utf-8")
    assert render_vectors(generate_vectors()) == on_disk, (
        "generated Merkle vectors drifted; if intended, regenerate (see module docstring)"
    )


def test_generated_vectors_match_reference() -> None:
    data = json.loads(GENERATED_PATH.read_text(encoding="utf-8"))
    leaves = [hash_leaf(data["leaf_format"].encode() % i) for i in range(GENERATED_MAX_SIZE)]
    roots = [bytes.fromhex(r) for r in data["roots_by_size"]]
    assert len(roots) == GENERATED_MAX_SIZE + 1
    assert roots[0] == EMPTY_ROOT
    for n, root in enumerate(roots):
        assert root == ref_mth(leaves[:n]), n

    checked_inclusion = 0
    for entry in data["inclusion_proofs"]:
        index, size = entry["index"], entry["size"]
        proof = [bytes.fromhex(h) for h in entry["proof"]]
        assert proof == ref_path(index, leaves[:size]), entry
        verify_inclusion(index, size, leaves[index], proof, roots[size])
        checked_inclusion += 1

    checked_consistency = 0
    for entry in data["consistency_proofs"]:
        old, new = entry["old_size"], entry["new_size"]
        proof = [bytes.fromhex(h) for h in entry["proof"]]
        assert proof == ref_proof(old, leaves[:new]), entry
        verify_consistency(old, new, roots[old], roots[new], proof)
        checked_consistency += 1

    expected_inclusion = sum(len(sample_indexes(n)) for n in range(1, GENERATED_MAX_SIZE + 1))
    expected_consistency = sum(len(sample_old_sizes(n)) for n in range(1, GENERATED_MAX_SIZE + 1))
    assert checked_inclusion == expected_inclusion == 207
    assert checked_consistency == expected_consistency == 268


# --------------------------------------------------------------------------
# Hypothesis properties.
# --------------------------------------------------------------------------


@cache
def property_leaf_hashes() -> tuple[bytes, ...]:
    return tuple(hash_leaf(b"property leaf %d" % i) for i in range(PROPERTY_MAX_SIZE))


@cache
def property_root(size: int) -> bytes:
    return ref_mth(property_leaf_hashes()[:size])


@st.composite
def size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, PROPERTY_MAX_SIZE))
    return size, draw(st.integers(0, size - 1))


@st.composite
def old_and_new(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(1, PROPERTY_MAX_SIZE))
    return draw(st.integers(0, new)), new


def flip(h: bytes, bit: int) -> bytes:
    bit %= 8 * len(h)
    out = bytearray(h)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def assert_fails(call: Callable[[], None]) -> type[BaseException]:
    with pytest.raises(VerificationError) as exc:
        call()
    return type(exc.value)


@settings(max_examples=1000, deadline=None)
@given(size_and_index())
def test_inclusion_proofs_verify_and_match_reference(case: tuple[int, int]) -> None:
    size, index = case
    leaves = property_leaf_hashes()[:size]
    proof = compute_inclusion_proof(index, size, ListReader(leaves))
    assert proof == ref_path(index, leaves)
    verify_inclusion(index, size, leaves[index], proof, property_root(size))


@settings(max_examples=1000, deadline=None)
@given(old_and_new())
def test_consistency_proofs_verify_and_match_reference(case: tuple[int, int]) -> None:
    old, new = case
    leaves = property_leaf_hashes()[:new]
    proof = compute_consistency_proof(old, new, ListReader(leaves))
    assert proof == ref_proof(old, leaves)
    verify_consistency(old, new, property_root(old), property_root(new), proof)


@settings(max_examples=1000, deadline=None)
@given(size_and_index(), st.data())
def test_inclusion_any_bit_flip_fails(case: tuple[int, int], data: st.DataObject) -> None:
    size, index = case
    leaves = property_leaf_hashes()[:size]
    proof = ref_path(index, leaves)
    leaf, root = leaves[index], property_root(size)
    # Targets: each proof hash, the leaf hash, the root hash.
    target = data.draw(st.integers(0, len(proof) + 1), label="target")
    bit = data.draw(st.integers(0, 255), label="bit")
    if target < len(proof):
        bad = list(proof)
        bad[target] = flip(bad[target], bit)
        kind = assert_fails(lambda: verify_inclusion(index, size, leaf, bad, root))
    elif target == len(proof):
        kind = assert_fails(lambda: verify_inclusion(index, size, flip(leaf, bit), proof, root))
    else:
        kind = assert_fails(lambda: verify_inclusion(index, size, leaf, proof, flip(root, bit)))
    assert kind is RootMismatchError


@settings(max_examples=1000, deadline=None)
@given(old_and_new(), st.data())
def test_consistency_any_bit_flip_fails(case: tuple[int, int], data: st.DataObject) -> None:
    old, new = case
    leaves = property_leaf_hashes()[:new]
    proof = ref_proof(old, leaves)
    old_root, new_root = property_root(old), property_root(new)
    target = data.draw(st.integers(0, len(proof) + 1), label="target")
    bit = data.draw(st.integers(0, 255), label="bit")
    if target < len(proof):
        bad = list(proof)
        bad[target] = flip(bad[target], bit)
        kind = assert_fails(lambda: verify_consistency(old, new, old_root, new_root, bad))
    elif target == len(proof):
        kind = assert_fails(
            lambda: verify_consistency(old, new, flip(old_root, bit), new_root, proof)
        )
    elif old == 0:
        # Every tree extends the empty tree, so the new root is not constrained.
        verify_consistency(old, new, old_root, flip(new_root, bit), proof)
        return
    else:
        kind = assert_fails(
            lambda: verify_consistency(old, new, old_root, flip(new_root, bit), proof)
        )
    assert kind is RootMismatchError


@settings(max_examples=1000, deadline=None)
@given(size_and_index(), st.integers(-3, 3), st.integers(-3, 3))
def test_inclusion_wrong_index_or_size_agrees_with_reference(
    case: tuple[int, int], d_index: int, d_size: int
) -> None:
    size, index = case
    leaves = property_leaf_hashes()[:size]
    proof = ref_path(index, leaves)
    args = (index + d_index, size + d_size, leaves[index], proof, property_root(size))
    expected = ref_inclusion_outcome(*args)
    if expected is None:
        verify_inclusion(*args)
    else:
        with pytest.raises(expected) as exc:
            verify_inclusion(*args)
        assert type(exc.value) is expected
    if d_index == d_size == 0:
        assert expected is None


@settings(max_examples=1000, deadline=None)
@given(old_and_new(), st.integers(-3, 3), st.integers(-3, 3))
def test_consistency_wrong_sizes_agree_with_reference(
    case: tuple[int, int], d_old: int, d_new: int
) -> None:
    old, new = case
    leaves = property_leaf_hashes()[:new]
    proof = ref_proof(old, leaves)
    args = (old + d_old, new + d_new, property_root(old), property_root(new), proof)
    expected = ref_consistency_outcome(*args)
    if expected is None:
        verify_consistency(*args)
    else:
        with pytest.raises(expected) as exc:
            verify_consistency(*args)
        assert type(exc.value) is expected
    if d_old == d_new == 0:
        assert expected is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=0, max_size=12),
    st.integers(0, PROPERTY_MAX_SIZE),
)
def test_compact_range_chunked_extend_matches_reference(chunks: list[int], start: int) -> None:
    leaves = property_leaf_hashes()
    cr = CompactRange.from_frontier(0, [])
    cr.extend(leaves[:start])
    size = start
    for n in chunks:
        n = min(n, PROPERTY_MAX_SIZE - size)
        cr.extend(leaves[size : size + n])
        size += n
        assert cr.size == size
        assert cr.root() == property_root(size)
        again = CompactRange.from_frontier(size, cr.frontier)
        assert again.root() == cr.root()
        assert again.frontier == cr.frontier
        assert len(cr.frontier) == size.bit_count()


@settings(max_examples=200, deadline=None)
@given(size_and_index(), old_and_new())
def test_proof_plans_fetch_the_reference_proof(
    incl: tuple[int, int], cons: tuple[int, int]
) -> None:
    size, index = incl
    leaves = property_leaf_hashes()
    plan = inclusion_proof_nodes(index, size)
    reader = ListReader(leaves[:size])
    assert plan.fold(reader.get_node_hashes(plan.node_ids)) == ref_path(index, leaves[:size])
    assert len(set(plan.node_ids)) == len(plan.node_ids)

    old, new = cons
    plan = consistency_proof_nodes(old, new)
    reader = ListReader(leaves[:new])
    assert plan.fold(reader.get_node_hashes(plan.node_ids)) == ref_proof(old, leaves[:new])
    assert len(set(plan.node_ids)) == len(plan.node_ids)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--regenerate", action="store_true", help=f"rewrite {GENERATED_PATH.name}")
    args = parser.parse_args(argv)
    text = render_vectors(generate_vectors())
    if args.regenerate:
        GENERATED_PATH.parent.mkdir(parents=True, exist_ok=True)
        GENERATED_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {GENERATED_PATH}")
        return 0
    same = GENERATED_PATH.exists() and GENERATED_PATH.read_text(encoding="utf-8") == text
    print("up to date" if same else "drifted (run with --regenerate)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
