"""The one checkpoint judgement (protocol.judgement), on trees held in memory."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.evidence import verify_fork_evidence
from protocol.hashing import hash_leaf
from protocol.judgement import CheckpointJudgement, HeldTree, judge_checkpoint
from protocol.keys import NoteSigner
from protocol.merkle import root_from_leaf_hashes
from protocol.rotation import KeyChain
from protocol.tree import NodeId, compute_consistency_proof

ORIGIN = "hotline.example/log"
SIGNER = NoteSigner.from_seed(ORIGIN, b"\x07" * 32)
CHAIN = KeyChain.pinned(SIGNER.verifier())


def leaves(tag: str, n: int) -> list[bytes]:
    return [hash_leaf(f"{tag}{i}".encode()) for i in range(n)]


def note(hs: Sequence[bytes]) -> str:
    cp = Checkpoint(origin=ORIGIN, size=len(hs), root_hash=root_from_leaf_hashes(list(hs)))
    return sign_checkpoint(cp, SIGNER)


class Nodes:
    def __init__(self, hs: Sequence[bytes]) -> None:
        self.hs = hs

    def get_node_hashes(self, ids: Sequence[NodeId]) -> Sequence[bytes]:
        return [
            root_from_leaf_hashes(list(self.hs[i.index << i.level : (i.index + 1) << i.level]))
            for i in ids
        ]


def judge(
    hs: Sequence[bytes],
    held: list[bytes],
    signed: int | None,
    proof_from_held: Sequence[bytes] | None = None,
) -> CheckpointJudgement:
    text = note(hs)
    held_tree = HeldTree(
        size=len(held),
        root_hash=root_from_leaf_hashes(held),
        signed_size=signed,
        signed_note=None if signed is None else note(held[:signed]),
    )
    return judge_checkpoint(
        CHAIN.open(text),
        held_tree,
        CHAIN,
        root_at=lambda n: root_from_leaf_hashes(held[:n]),
        held_proof=lambda a, b: compute_consistency_proof(a, b, Nodes(held)),
        proof_from_held=proof_from_held,
    )


OURS = leaves("a", 10)
THEIRS = [*OURS[:4], *leaves("b", 8)]


@pytest.mark.parametrize(
    ("hs", "relation"),
    [(leaves("a", 12), "ahead"), (OURS, "same"), (OURS[:3], "behind"), (OURS[:8], "behind")],
)
def test_agreeing_checkpoints(hs: list[bytes], relation: str) -> None:
    judged = judge(hs, OURS, 10)
    assert judged.relation == relation and judged


@pytest.mark.parametrize("size", [5, 7, 10])
def test_a_fork_comes_with_verified_evidence(size: int) -> None:
    judged = judge(THEIRS[:size], OURS, 10)
    assert judged.relation == "fork" and not judged
    evidence = judged.evidence
    assert evidence is not None
    a, b = verify_fork_evidence(evidence, CHAIN)
    assert (a.size, b.size) == (size, 10)


def test_a_conflict_beyond_the_signed_checkpoint_is_unprovable() -> None:
    judged = judge(THEIRS[:8], OURS, 6)
    assert judged.relation == "unprovable" and "size 6" in judged.reason


def test_a_larger_checkpoint_must_extend_the_held_tree_when_a_proof_is_given() -> None:
    good = compute_consistency_proof(10, 13, Nodes(leaves("a", 13)))
    assert judge(leaves("a", 13), OURS, 10, good).relation == "ahead"
    bad = compute_consistency_proof(10, 12, Nodes(THEIRS))
    judged = judge(THEIRS, OURS, 10, bad)
    assert judged.relation == "inconsistent" and not judged


def test_a_holder_without_a_tree_cannot_judge_a_smaller_checkpoint() -> None:
    text = note(OURS[:4])
    held = HeldTree(size=10, root_hash=root_from_leaf_hashes(OURS))
    judged = judge_checkpoint(CHAIN.open(text), held, CHAIN)
    assert judged.relation == "unprovable" and "size 4 is not known" in judged.reason
