"""Fork evidence: two signed checkpoints of one origin that cannot both be true.

Layer: protocol (pure). This module performs no I/O.

A log that shows different trees to different readers (a *fork*, or split
view) betrays itself as soon as two of its signed checkpoints meet. The
evidence document carries everything a third party needs to check that claim
with nothing but the origin's verifier key::

    {"origin": "<origin>",
     "note_a": "<signed checkpoint note, the smaller or equal size>",
     "note_b": "<signed checkpoint note, the larger size>",
     "prefix_root": "<64 hex: root of the first size_a leaves of tree b>",
     "proof": ["<64 hex>", ...]}

For equal sizes the two roots simply differ (``prefix_root`` is then the root
of ``note_b`` and ``proof`` is empty). For different sizes, ``proof`` is the
RFC 9162 consistency proof from ``size_a`` to ``size_b`` that ties
``prefix_root`` to the root of ``note_b``: tree b's first ``size_a`` leaves
have that root, which is not the root ``note_a`` signed. Parsing is strict, as
in :mod:`protocol.wire`: exact keys, lowercase hex, no duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol.checkpoint import Checkpoint, CheckpointNote, open_checkpoint
from protocol.encoding import (
    decode_hex,
    dumps_canonical,
    json_hashes,
    json_object,
    json_text,
)
from protocol.errors import (
    MalformedError,
    OriginMismatchError,
    ProofError,
    RootMismatchError,
    VerificationError,
)
from protocol.hashing import HASH_SIZE
from protocol.keys import NoteVerifier
from protocol.merkle import MAX_PROOF_HASHES, verify_consistency
from protocol.rotation import KeyChain

__all__ = ["ForkEvidence", "prove_fork", "verify_fork_evidence"]

_KEYS = frozenset({"origin", "note_a", "note_b", "prefix_root", "proof"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ForkEvidence:
    """Two signed checkpoints of one origin, and the proof that they conflict.

    Attributes:
        origin: the log both notes claim to be signed by.
        note_a: the exact signed note of the smaller (or equal) size.
        note_b: the exact signed note of the larger size.
        prefix_root: the root of the first ``size_a`` leaves of tree b.
        proof: consistency proof ``size_a -> size_b`` for
            (``prefix_root``, root b); empty when the sizes are equal.
    """

    origin: str
    note_a: CheckpointNote
    note_b: CheckpointNote
    prefix_root: bytes
    proof: tuple[bytes, ...]

    def __post_init__(self) -> None:
        for name in ("origin", "note_a", "note_b"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise MalformedError("expected a non-empty string", field=name)
        if not isinstance(self.prefix_root, bytes) or len(self.prefix_root) != HASH_SIZE:
            raise MalformedError(f"expected a {HASH_SIZE}-byte hash", field="prefix_root")
        if not isinstance(self.proof, tuple):
            raise MalformedError("expected a tuple of hashes", field="proof")
        if len(self.proof) > MAX_PROOF_HASHES:
            raise MalformedError(
                f"{len(self.proof)} hashes exceed the maximum {MAX_PROOF_HASHES}", field="proof"
            )
        for i, h in enumerate(self.proof):
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise MalformedError(f"expected a {HASH_SIZE}-byte hash", field=f"proof[{i}]")

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> ForkEvidence:
        """Parse an evidence document strictly.

        Raises:
            MalformedError: naming the field that is wrong (unknown, missing,
                wrongly typed or non-canonical hex).
        """
        obj = json_object(data, _KEYS)
        return cls(
            origin=json_text(obj, "origin"),
            note_a=json_text(obj, "note_a"),
            note_b=json_text(obj, "note_b"),
            prefix_root=decode_hex(obj["prefix_root"], field="prefix_root", length=HASH_SIZE),
            proof=json_hashes(obj, "proof", length=HASH_SIZE, max_count=MAX_PROOF_HASHES),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The evidence as a JSON-ready dict."""
        return {
            "origin": self.origin,
            "note_a": self.note_a,
            "note_b": self.note_b,
            "prefix_root": self.prefix_root.hex(),
            "proof": [h.hex() for h in self.proof],
        }

    def to_json(self) -> bytes:
        """Canonical JSON bytes of the evidence."""
        return dumps_canonical(self.to_json_obj())


def prove_fork(
    chain: KeyChain,
    *,
    older_note: CheckpointNote,
    newer_note: CheckpointNote,
    prefix_root: bytes,
    proof: Sequence[bytes],
) -> ForkEvidence:
    """Fork evidence from two signed notes of ``chain``'s origin, verified before use.

    The one place evidence is made (a replica that meets a fork, the
    auditor's conflicts): it is checked as any third party would check it,
    so a bug cannot freeze or accuse an honest log.

    Args:
        chain: the origin's key chain.
        older_note: the note of the smaller (or equal) size.
        newer_note: the note of the larger size.
        prefix_root: the root of the first ``older`` size leaves of the newer tree.
        proof: the newer tree's consistency proof from the older size
            (empty for equal sizes).

    Raises:
        VerificationError, MalformedError: as :func:`verify_fork_evidence`.
    """
    evidence = ForkEvidence(
        origin=chain.origin,
        note_a=older_note,
        note_b=newer_note,
        prefix_root=prefix_root,
        proof=tuple(proof),
    )
    verify_fork_evidence(evidence, chain)
    return evidence


def verify_fork_evidence(
    evidence: ForkEvidence, verifier: NoteVerifier | KeyChain
) -> tuple[Checkpoint, Checkpoint]:
    """Check that the evidence proves the origin signed two conflicting trees.

    Both notes must be signed by ``verifier``, whose name must be the
    evidence's origin. With equal sizes the roots must differ; otherwise the
    consistency proof must tie ``prefix_root`` to the root of note b, and
    ``prefix_root`` must differ from the root of note a.

    Args:
        evidence: the evidence document.
        verifier: the origin's verifier key (from a trusted source, never
            from the evidence itself), or its key chain after rotations
            (each note is then checked with the key its size calls for).

    Returns:
        The two verified checkpoints, a then b.

    Raises:
        MalformedError: if a note or its body is malformed.
        VerificationError: if the evidence does not prove a fork: a signature
            or origin fails (:class:`~protocol.errors.UnknownKeyError`,
            :class:`~protocol.errors.OriginMismatchError`, ...), the proof
            does not hold (:class:`~protocol.errors.ProofError`,
            :class:`~protocol.errors.RootMismatchError`), or the two
            checkpoints are consistent after all.
    """
    name = verifier.origin if isinstance(verifier, KeyChain) else verifier.name
    if name != evidence.origin:
        raise OriginMismatchError(
            f"evidence is about origin {evidence.origin!r}, the key is for {name!r}"
        )
    if isinstance(verifier, KeyChain):
        a = verifier.open(evidence.note_a).checkpoint
        b = verifier.open(evidence.note_b).checkpoint
    else:
        a = open_checkpoint(evidence.note_a, verifier, origin=evidence.origin).checkpoint
        b = open_checkpoint(evidence.note_b, verifier, origin=evidence.origin).checkpoint
    if a.size > b.size:
        raise ProofError(f"note_a has size {a.size}, larger than note_b's size {b.size}")
    if a.size == b.size:
        if evidence.proof:
            raise ProofError(
                f"checkpoints of equal size {a.size} need an empty proof, "
                f"got {len(evidence.proof)} hash(es)"
            )
        if evidence.prefix_root != b.root_hash:
            raise RootMismatchError(
                "prefix_root of equal-size evidence must be the root of note_b",
                expected=b.root_hash,
                calculated=evidence.prefix_root,
            )
    else:
        verify_consistency(a.size, b.size, evidence.prefix_root, b.root_hash, evidence.proof)
    if evidence.prefix_root == a.root_hash:
        raise VerificationError(
            f"checkpoints of sizes {a.size} and {b.size} are consistent: this is not "
            "evidence of a fork"
        )
    return a, b
