"""Auditor-level checks combining signatures and proofs.

Layer: protocol (pure). This module performs no I/O.

Each function verifies the signed checkpoint(s) first, against the origin's
key, and only then the proof against the signed root: a proof is worth
nothing until the root it leads to is known to be signed by the log.
"""

from __future__ import annotations

from protocol.checkpoint import Checkpoint, open_checkpoint
from protocol.errors import InconsistencyError, ProofError, VerificationError
from protocol.hashing import hash_leaf
from protocol.keys import NoteVerifier
from protocol.merkle import verify_consistency, verify_inclusion
from protocol.wire import ConsistencyProof, InclusionProof

__all__ = ["verify_append_only", "verify_entry_inclusion"]


def verify_entry_inclusion(
    note_raw: bytes,
    verifier: NoteVerifier,
    proof: InclusionProof,
    *,
    entry: bytes | None = None,
    origin: str | None = None,
) -> Checkpoint:
    """Verify that a leaf is in the log at the signed checkpoint.

    Args:
        note_raw: the exact signed checkpoint note.
        verifier: the origin's verifier key.
        proof: the inclusion proof; its size must equal the checkpoint's.
        entry: the exact entry bytes, if known; their leaf hash must be the
            proof's ``leaf_hash``.
        origin: the origin the caller expects, if any.

    Returns:
        The verified checkpoint.

    Raises:
        MalformedError: if the note is malformed.
        VerificationError: if the signature, sizes, leaf hash or proof fail.
    """
    checkpoint = open_checkpoint(note_raw, verifier, origin=origin).checkpoint
    if proof.size != checkpoint.size:
        raise ProofError(
            f"proof is for tree size {proof.size}, checkpoint has size {checkpoint.size}"
        )
    if entry is not None and hash_leaf(entry) != proof.leaf_hash:
        raise VerificationError(
            f"entry hashes to leaf hash {hash_leaf(entry).hex()}, "
            f"the proof is for {proof.leaf_hash.hex()}"
        )
    verify_inclusion(proof.index, proof.size, proof.leaf_hash, proof.hashes, checkpoint.root_hash)
    return checkpoint


def verify_append_only(
    old_note_raw: bytes,
    new_note_raw: bytes,
    verifier: NoteVerifier,
    proof: ConsistencyProof,
) -> tuple[Checkpoint, Checkpoint]:
    """Verify that the newer signed checkpoint extends the older one.

    Two validly signed checkpoints of the same size with different roots are
    reported as :class:`InconsistencyError` carrying both notes: that pair
    alone proves the log was forked.

    Returns:
        The old and new checkpoints.

    Raises:
        MalformedError: if a note is malformed.
        InconsistencyError: for two signed checkpoints of one size that differ.
        VerificationError: if a signature, the origins, the sizes or the proof
            fail.
    """
    old = open_checkpoint(old_note_raw, verifier).checkpoint
    new = open_checkpoint(new_note_raw, verifier).checkpoint
    if (proof.old_size, proof.new_size) != (old.size, new.size):
        raise ProofError(
            f"proof is for sizes {proof.old_size} -> {proof.new_size}, "
            f"checkpoints have {old.size} -> {new.size}"
        )
    if old.size == new.size and old.root_hash != new.root_hash:
        raise InconsistencyError(
            f"two signed checkpoints of size {old.size} have different roots",
            older_raw=old_note_raw,
            newer_raw=new_note_raw,
            proof=proof.hashes,
        )
    verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof.hashes)
    return old, new
