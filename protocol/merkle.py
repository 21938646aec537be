"""Merkle proof verification over plain values (RFC 9162 sections 2.1.3.2, 2.1.4.2).

Layer: protocol (pure). This module performs no I/O.

Every function takes sizes, indexes and raw 32-byte hashes, and either
returns a root or raises: :class:`~protocol.errors.MalformedError` for
impossible arguments, :class:`~protocol.errors.ProofError` for a proof of the
wrong length, :class:`~protocol.errors.RootMismatchError` when the proof leads
elsewhere. A ``verify_*`` function never returns False.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.errors import MalformedError, ProofError, RootMismatchError
from protocol.hashing import EMPTY_ROOT, HASH_SIZE, hash_children
from protocol.tree import CompactRange, consistency_subtrees, inclusion_subtrees

__all__ = [
    "MAX_PROOF_HASHES",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

MAX_PROOF_HASHES = 64
"""No proof in a tree of at most 2^63-1 leaves has more hashes than this."""


def _check_hash(value: bytes, field: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        size = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise MalformedError(f"expected a {HASH_SIZE}-byte hash, got {size}", field=field)


def _check_proof(proof: Sequence[bytes], want: int) -> None:
    if len(proof) > MAX_PROOF_HASHES:
        raise ProofError(f"proof of {len(proof)} hashes exceeds the maximum {MAX_PROOF_HASHES}")
    for i, h in enumerate(proof):
        _check_hash(h, f"proof[{i}]")
    if len(proof) != want:
        raise ProofError(f"wrong proof size {len(proof)}, want {want}")


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """The RFC 6962 root of the given leaf hashes (SHA-256("") when empty)."""
    tree = CompactRange.empty()
    tree.extend(leaf_hashes)
    return tree.root()


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 section 2.1.3.2).

    Raises:
        MalformedError: if ``index >= size`` or a hash is not 32 bytes.
        ProofError: if the proof has the wrong number of hashes.
    """
    want = len(inclusion_subtrees(index, size))
    _check_hash(leaf_hash, "leaf_hash")
    _check_proof(proof, want)
    fn, sn = index, size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if fn & 1 or fn == sn:
            r = hash_children(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hash_children(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # pragma: no cover - excluded by the length check above
        raise ProofError("proof does not reach the root")
    return r


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree with ``root_hash``.

    Raises:
        MalformedError: if the arguments are impossible.
        ProofError: if the proof has the wrong number of hashes.
        RootMismatchError: if the proof leads to another root.
    """
    _check_hash(root_hash, "root_hash")
    calculated = root_from_inclusion_proof(index, size, leaf_hash, proof)
    if calculated != root_hash:
        raise RootMismatchError(
            f"inclusion proof for index {index} at size {size} does not match",
            expected=bytes(root_hash),
            calculated=calculated,
        )


def root_from_consistency_proof(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> bytes:
    """The new root implied by a consistency proof, after checking the old root.

    Raises:
        MalformedError: if ``old_size`` is 0 (nothing to derive from) or
            exceeds ``new_size``, or a hash is not 32 bytes.
        ProofError: if the proof has the wrong number of hashes.
        RootMismatchError: if the proof does not lead to ``old_root``.
    """
    want = len(consistency_subtrees(old_size, new_size))
    _check_hash(old_root, "old_root")
    if old_size == 0:
        raise MalformedError("cannot derive a root from the empty tree", field="old_size")
    _check_proof(proof, want)
    if old_size == new_size:
        return bytes(old_root)
    hashes = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a complete subtree: its root is the proof's implied start.
        hashes.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = hashes[0]
    for c in hashes[1:]:
        if sn == 0:  # pragma: no cover - excluded by the length check above
            raise ProofError("proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # pragma: no cover - excluded by the length check above
        raise ProofError("proof does not reach the new root")
    if fr != old_root:
        raise RootMismatchError(
            f"consistency proof {old_size} -> {new_size} does not match the old root",
            expected=bytes(old_root),
            calculated=fr,
        )
    return sr


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Check that the tree (new_size, new_root) extends (old_size, old_root).

    Any tree is consistent with the empty one (the proof must then be empty,
    and ``old_root`` must be the empty root); equal sizes need an empty proof
    and equal roots.

    Raises:
        MalformedError: if the arguments are impossible.
        ProofError: if the proof has the wrong number of hashes.
        RootMismatchError: if the proof does not connect the two roots.
    """
    _check_hash(new_root, "new_root")
    _check_hash(old_root, "old_root")
    if old_size == 0:
        consistency_subtrees(old_size, new_size)
        _check_proof(proof, 0)
        if old_root != EMPTY_ROOT:
            raise RootMismatchError(
                "a tree of size 0 has the empty root",
                expected=EMPTY_ROOT,
                calculated=bytes(old_root),
            )
        return
    calculated = root_from_consistency_proof(old_size, new_size, old_root, proof)
    if calculated != new_root:
        raise RootMismatchError(
            f"consistency proof {old_size} -> {new_size} does not match the new root",
            expected=bytes(new_root),
            calculated=calculated,
        )
