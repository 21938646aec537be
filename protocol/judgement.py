"""One judgement of a signed checkpoint against what a verifier holds of its log.

Layer: protocol (pure). This module performs no I/O: like python-tuf's
``TrustedMetadataSet``, it makes every trust decision about a checkpoint
from values the caller hands in, and returns the decision as a frozen
:class:`CheckpointJudgement` for the caller to act on. A replica
(``node.ledger.replica``) stores what the decision says; the auditor
(``node.audit``) reports it.

The questions, in order:

1. Is it signed by the key its size calls for (the origin's
   :class:`~protocol.rotation.KeyChain`)? The caller opens the note with the
   chain (and any witness policy) and hands in the
   :class:`~protocol.checkpoint.VerifiedCheckpoint`: a checkpoint that did
   not verify is never judged.
2. How does it relate to the tree held (:class:`HeldTree`)? ``ahead`` (a
   larger tree; with a consistency proof from the held size, it must
   extend the held tree, else it is ``inconsistent``), ``same``, ``behind``
   (a smaller tree whose root is the held tree's root at its size).
3. Otherwise it is a fork. With a signed checkpoint of the held tree at
   least as large, :func:`protocol.evidence.prove_fork` makes the
   :class:`~protocol.evidence.ForkEvidence`; entries held beyond the latest
   signed checkpoint cannot prove it (``unprovable``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from protocol.checkpoint import Checkpoint, CheckpointNote, VerifiedCheckpoint
from protocol.errors import ProtocolError
from protocol.evidence import ForkEvidence, prove_fork
from protocol.merkle import verify_consistency
from protocol.rotation import KeyChain

__all__ = ["CheckpointJudgement", "HeldTree", "Relation", "judge_checkpoint"]

Relation = Literal["ahead", "same", "behind", "inconsistent", "fork", "unprovable"]
"""How a verified checkpoint relates to the tree held (see the module docstring)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldTree:
    """What a verifier holds of an origin's log.

    Attributes:
        size: leaves held (a replica mid catch-up may hold more than its
            latest signed checkpoint covers).
        root_hash: the root of those leaves.
        signed_size: the size of the latest signed checkpoint held, if any.
        signed_note: its exact signed note (what fork evidence is made of).
    """

    size: int
    root_hash: bytes
    signed_size: int | None = None
    signed_note: CheckpointNote | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointJudgement:
    """The decision about one verified checkpoint; true when it agrees with the held tree.

    Attributes:
        relation: see :data:`Relation`.
        checkpoint: the judged checkpoint (its signature verified).
        note: its exact signed note text.
        evidence: the verified fork evidence, for ``fork``.
        reason: why it disagrees, for ``inconsistent`` and ``unprovable``.
    """

    relation: Relation
    checkpoint: Checkpoint
    note: CheckpointNote
    evidence: ForkEvidence | None = None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.relation in ("ahead", "same", "behind")


def judge_checkpoint(
    opened: VerifiedCheckpoint,
    held: HeldTree,
    chain: KeyChain | None = None,
    *,
    root_at: Callable[[int], bytes] | None = None,
    held_proof: Callable[[int, int], Sequence[bytes]] | None = None,
    proof_from_held: Sequence[bytes] | None = None,
) -> CheckpointJudgement:
    """Judge a verified checkpoint against the held tree.

    Args:
        opened: the checkpoint, opened with ``chain`` (and the witness policy).
        held: what is held of the log.
        chain: the origin's key chain, which fork evidence is checked with;
            needed when ``held`` has a signed note (else no evidence is made).
        root_at: the held tree's root at a size below ``held.size``; None
            when the holder keeps no tree (an auditor's head): a smaller
            checkpoint is then ``unprovable``.
        held_proof: the held tree's consistency proof ``(old, new)``, for
            evidence (``new`` is ``held.signed_size``); None as for ``root_at``.
        proof_from_held: for a larger checkpoint, the consistency proof
            ``held.size -> its size`` its source gave, if any; without one an
            ``ahead`` checkpoint is not yet known to extend the held tree.

    Returns:
        The decision; a fork's evidence has been verified as an auditor would.

    Raises:
        VerificationError: only if evidence built from the held tree does not
            verify (the held tree or its signed note is wrong: a bug or a
            damaged store, never the checkpoint's fault).
    """
    cp, note = opened.checkpoint, opened.text
    if cp.size > held.size:
        if proof_from_held is not None:
            try:
                verify_consistency(
                    held.size, cp.size, held.root_hash, cp.root_hash, proof_from_held
                )
            except ProtocolError as e:  # a wrong root, or a proof of the wrong shape
                return CheckpointJudgement(
                    relation="inconsistent", checkpoint=cp, note=note, reason=str(e)
                )
        return CheckpointJudgement(relation="ahead", checkpoint=cp, note=note)
    if cp.size < held.size and (root_at is None or held_proof is None):
        return CheckpointJudgement(
            relation="unprovable",
            checkpoint=cp,
            note=note,
            reason=f"the held tree's root at size {cp.size} is not known",
        )
    ours = held.root_hash if root_at is None or cp.size == held.size else root_at(cp.size)
    if ours == cp.root_hash:
        relation: Relation = "same" if cp.size == held.size else "behind"
        return CheckpointJudgement(relation=relation, checkpoint=cp, note=note)
    if (
        chain is None
        or held.signed_size is None
        or held.signed_note is None
        or cp.size > held.signed_size
    ):
        signed = 0 if held.signed_size is None else held.signed_size
        return CheckpointJudgement(
            relation="unprovable",
            checkpoint=cp,
            note=note,
            reason=(
                f"checkpoint of size {cp.size} conflicts with entries held beyond our latest "
                f"signed checkpoint (size {signed})"
            ),
        )
    proof = (
        held_proof(cp.size, held.signed_size)
        if held_proof is not None and cp.size < held.signed_size
        else ()
    )
    evidence = prove_fork(
        chain, older_note=note, newer_note=held.signed_note, prefix_root=ours, proof=proof
    )
    return CheckpointJudgement(relation="fork", checkpoint=cp, note=note, evidence=evidence)
