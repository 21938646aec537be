"""Key chains: which key signs which checkpoint sizes, and rotations that must be refused."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from protocol.checkpoint import Checkpoint, cosign_checkpoint, sign_checkpoint
from protocol.entry import AddEntry, RotateEntry
from protocol.errors import MalformedError, ProofError, RotationError, UnknownKeyError
from protocol.hashing import hash_leaves
from protocol.keys import SIG_COSIGNATURE_V1, NoteSigner
from protocol.merkle import root_from_leaf_hashes
from protocol.rotation import KeyChain, KeyPeriod, apply_rotation_proof
from protocol.tree import NodeId, compute_inclusion_proof

ORIGIN = "hotline-a.example/hashmesh"
K1 = NoteSigner.from_seed(ORIGIN, b"\x01" * 32)
K2 = NoteSigner.from_seed(ORIGIN, b"\x02" * 32)
K3 = NoteSigner.from_seed(ORIGIN, b"\x03" * 32)
WITNESS = NoteSigner.from_seed("witness.example/w", b"\x09" * 32, SIG_COSIGNATURE_V1)


def note(signer: NoteSigner, size: int, origin: str = ORIGIN) -> str:
    return sign_checkpoint(
        Checkpoint(origin=origin, size=size, root_hash=bytes([size % 256]) * 32), signer
    )


def rotate(to: NoteSigner) -> RotateEntry:
    return RotateEntry(key=to.verifier().to_text(), reason="scheduled rotation")


def test_pinned_chain_accepts_any_size() -> None:
    chain = KeyChain.pinned(K1.verifier())
    for size in (0, 1, 10**6):
        assert chain.open(note(K1, size)).checkpoint.size == size
    assert chain.current == K1.verifier()


def test_rotation_switches_key_by_size() -> None:
    chain = KeyChain.pinned(K1.verifier()).apply(9, rotate(K2), 10)
    assert chain.periods[-1] == KeyPeriod(11, K2.verifier(), 9)
    # Old checkpoints, up to the one that committed the rotation, keep verifying.
    assert chain.open(note(K1, 5)).checkpoint.size == 5
    assert chain.open(note(K1, 10)).checkpoint.size == 10
    assert chain.open(note(K2, 11)).checkpoint.size == 11
    assert chain.current == K2.verifier()


def test_old_key_refused_after_rotation() -> None:
    """A stolen old key cannot extend the log past the rotation."""
    chain = KeyChain.pinned(K1.verifier()).apply(9, rotate(K2), 10)
    with pytest.raises(UnknownKeyError, match="rotated out"):
        chain.open(note(K1, 11))
    with pytest.raises(UnknownKeyError):
        chain.open(note(K2, 10))  # the new key may not sign before its period


def test_cosigned_checkpoint_before_compromise_stays_valid() -> None:
    cosigned = cosign_checkpoint(note(K1, 8), WITNESS, 1_700_000_000)
    chain = KeyChain.pinned(K1.verifier()).apply(9, rotate(K2), 10)
    opened = chain.open(cosigned, witnesses=[WITNESS.verifier()], witness_threshold=1)
    assert opened.cosignatures == {"witness.example/w": 1_700_000_000}


def test_rotation_needs_old_keys_checkpoint_at_its_size() -> None:
    """A rotation carried only by a later checkpoint could be forged by the new key's holder."""
    chain = KeyChain.pinned(K1.verifier())
    with pytest.raises(RotationError, match="size 10, not one of size 12"):
        chain.apply(9, rotate(K2), 12)
    with pytest.raises(RotationError, match="beyond"):
        chain.apply(9, rotate(K2), 9)


def test_rotation_to_pinned_key_is_a_no_op() -> None:
    """A follower who pinned the current key reads the rotation that introduced it."""
    chain = KeyChain.pinned(K2.verifier())
    assert chain.apply(9, rotate(K2), 500) is chain


def test_rotation_to_key_of_other_origin_refused() -> None:
    other = NoteSigner.from_seed("other.example/x", b"\x02" * 32)
    with pytest.raises(RotationError, match=r"other\.example/x"):
        KeyChain.pinned(K1.verifier()).apply(3, rotate(other), 4)


def test_two_rotations_chain() -> None:
    chain = KeyChain.pinned(K1.verifier()).apply(9, rotate(K2), 10).apply(19, rotate(K3), 20)
    assert [p.from_size for p in chain.periods] == [0, 11, 21]
    assert chain.verifier_for(20) == K2.verifier()
    assert chain.verifier_for(21) == K3.verifier()
    with pytest.raises(UnknownKeyError):
        chain.open(note(K2, 21))


def test_chain_started_late_cannot_check_older_sizes() -> None:
    chain = KeyChain(ORIGIN, (KeyPeriod(11, K2.verifier(), 9),))
    with pytest.raises(UnknownKeyError, match="starts at size 11"):
        chain.verifier_for(10)


def test_chain_shape_checked() -> None:
    with pytest.raises(MalformedError, match="at least one"):
        KeyChain(ORIGIN, ())
    with pytest.raises(MalformedError, match="increasing"):
        KeyChain(ORIGIN, (KeyPeriod(0, K1.verifier()), KeyPeriod(0, K2.verifier())))
    other = NoteSigner.from_seed("other.example/x", b"\x02" * 32)
    with pytest.raises(MalformedError, match="not named after"):
        KeyChain(ORIGIN, (KeyPeriod(0, other.verifier()),))


def test_checkpoint_of_other_origin_refused() -> None:
    other = NoteSigner.from_seed("other.example/x", b"\x01" * 32)
    with pytest.raises(UnknownKeyError):
        KeyChain.pinned(K1.verifier()).open(note(other, 3, origin="other.example/x"))


# -- rotations proven to a verifier without entries (apply_rotation_proof) ----------


class _Leaves:
    """A node reader over a list of leaf hashes (the tree of a test log)."""

    def __init__(self, leaf_hashes: list[bytes]) -> None:
        self.leaf_hashes = leaf_hashes

    def get_node_hashes(self, ids: Sequence[NodeId]) -> list[bytes]:
        return [
            root_from_leaf_hashes(self.leaf_hashes[n.index << n.level : (n.index + 1) << n.level])
            for n in ids
        ]


def _add(i: int) -> bytes:
    return AddEntry.create(signal_type="sha256", value=f"{i:064x}").to_bytes()


# Leaves 0-2 adds, 3 rotates K1 -> K2, 4-6 adds, 7 rotates K2 -> K3.
LOG = [_add(0), _add(1), _add(2), rotate(K2).to_bytes(), _add(4), _add(5), _add(6)]
LOG.append(rotate(K3).to_bytes())
LEAVES = _Leaves(hash_leaves(LOG))


def signed_tree(signer: NoteSigner, size: int) -> str:
    root = root_from_leaf_hashes(LEAVES.leaf_hashes[:size])
    return sign_checkpoint(Checkpoint(origin=ORIGIN, size=size, root_hash=root), signer)


def inclusion(index: int, size: int) -> list[bytes]:
    return compute_inclusion_proof(index, size, LEAVES)


def test_rotation_proof_extends_the_chain_in_order() -> None:
    chain = KeyChain.pinned(K1.verifier())
    chain = apply_rotation_proof(chain, 3, LOG[3], inclusion(3, 4), signed_tree(K1, 4))
    assert chain.periods[-1] == KeyPeriod(5, K2.verifier(), 3)
    assert chain.open(signed_tree(K2, 5)).checkpoint.size == 5
    # the second rotation is attested by the key the first one introduced
    chain = apply_rotation_proof(chain, 7, LOG[7], inclusion(7, 8), signed_tree(K2, 8))
    assert [(p.from_size, p.verifier, p.rotated_by) for p in chain.periods] == [
        (0, K1.verifier(), None),
        (5, K2.verifier(), 3),
        (9, K3.verifier(), 7),
    ]


def test_rotation_proof_to_the_trusted_key_is_a_no_op() -> None:
    """An auditor who pinned the new key cannot check the old key's checkpoint, nor needs to."""
    chain = KeyChain.pinned(K2.verifier())
    assert apply_rotation_proof(chain, 3, LOG[3], inclusion(3, 4), signed_tree(K1, 4)) is chain


def _tampered_proof() -> list[bytes]:
    proof = inclusion(3, 4)
    proof[0] = bytes([proof[0][0] ^ 1]) + proof[0][1:]
    return proof


BAD_PROOFS = {
    # name: (index, entry bytes, proof, checkpoint note, error, message)
    "wrong proof": (3, LOG[3], _tampered_proof(), signed_tree(K1, 4), ProofError, "does not match"),
    "proof of another tree size": (
        3,
        LOG[3],
        inclusion(3, 5),
        signed_tree(K1, 4),
        ProofError,
        "wrong proof size 3, want 2",
    ),
    "checkpoint of the wrong size": (
        3,
        LOG[3],
        inclusion(3, 5),
        signed_tree(K1, 5),
        RotationError,
        "checkpoint of size 4, not one of size 5",
    ),
    "entry not a rotate": (
        2,
        LOG[2],
        inclusion(2, 3),
        signed_tree(K1, 3),
        RotationError,
        r"entry 2 is not a rotate entry \(its kind is 'add'\)",
    ),
    "checkpoint signed by the new key": (
        3,
        LOG[3],
        inclusion(3, 4),
        signed_tree(K2, 4),
        UnknownKeyError,
        "not signed by the key for that size",
    ),
    "entry bytes swapped for another key": (
        3,
        rotate(K3).to_bytes(),
        inclusion(3, 4),
        signed_tree(K1, 4),
        ProofError,
        "does not match",
    ),
    "entry bytes not canonical": (
        3,
        LOG[3] + b" ",
        inclusion(3, 4),
        signed_tree(K1, 4),
        MalformedError,
        "entry 3 does not parse",
    ),
    "negative index": (-1, LOG[3], [], signed_tree(K1, 0), MalformedError, "non-negative"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROOFS))
def test_rotation_proof_refused(case: str) -> None:
    index, entry, proof, checkpoint, error, message = BAD_PROOFS[case]
    chain = KeyChain.pinned(K1.verifier())
    with pytest.raises(error, match=message):
        apply_rotation_proof(chain, index, entry, proof, checkpoint)
    assert chain.periods == (KeyPeriod(0, K1.verifier()),)


def test_reapplying_a_known_rotation_is_a_no_op() -> None:
    """A chain from a saved state replays the same log (a bundle audited again)."""
    chain = KeyChain.pinned(K1.verifier()).apply(9, rotate(K2), 10).apply(19, rotate(K3), 20)
    assert chain.apply(9, rotate(K2), 10) is chain
    assert chain.apply(19, rotate(K3), 20) is chain
    # A different rotation at a known index still conflicts.
    with pytest.raises(RotationError, match="later rotation"):
        chain.apply(9, rotate(NoteSigner.from_seed(ORIGIN, b"\x04" * 32)), 10)
