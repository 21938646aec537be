"""Fork evidence: built from real diverging trees, verified with protocol/ alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.__main__ import main
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.entry import AddEntry
from protocol.errors import (
    MalformedError,
    OriginMismatchError,
    ProofError,
    RootMismatchError,
    UnknownKeyError,
    VerificationError,
)
from protocol.evidence import ForkEvidence, verify_fork_evidence
from protocol.hashing import hash_leaves
from protocol.keys import NoteSigner
from protocol.tree import CompactRange, NodeId, compute_consistency_proof

ORIGIN = "hotline-fork.example/hashmesh"


class Tree:
    """An in-memory tree with every perfect node kept, to compute proofs."""

    def __init__(self, datas: list[bytes]) -> None:
        self.leaves = hash_leaves(datas)
        self.nodes: dict[NodeId, bytes] = {NodeId(0, i): h for i, h in enumerate(self.leaves)}
        cr = CompactRange.empty()
        for run in cr.extend(self.leaves, collect=True):
            for i, h in enumerate(run.hashes):
                self.nodes[NodeId(run.level, run.start + i)] = h

    def get_node_hashes(self, ids: object) -> list[bytes]:
        return [self.nodes[n] for n in ids]  # type: ignore[attr-defined]

    def root(self, size: int) -> bytes:
        cr = CompactRange.empty()
        cr.extend(self.leaves[:size])
        return cr.root()

    def note(self, size: int, signer: NoteSigner) -> str:
        return sign_checkpoint(
            Checkpoint(origin=ORIGIN, size=size, root_hash=self.root(size)), signer
        )


def entries(start: int, end: int, tag: str = "a") -> list[bytes]:
    return [
        AddEntry.create(signal_type="md5", value=f"{i:031x}{tag}", labels=["h:x"]).to_bytes()
        for i in range(start, end)
    ]


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def fork(signer: NoteSigner, size_a: int, size_b: int, shared: int) -> ForkEvidence:
    """Tree a and tree b share ``shared`` leaves, then diverge."""
    tree_a = Tree(entries(0, shared) + entries(shared, size_a, "b"))
    tree_b = Tree(entries(0, shared) + entries(shared, size_b, "c"))
    proof = tuple(compute_consistency_proof(size_a, size_b, tree_b)) if size_a < size_b else ()
    return ForkEvidence(
        origin=ORIGIN,
        note_a=tree_a.note(size_a, signer),
        note_b=tree_b.note(size_b, signer),
        prefix_root=tree_b.root(size_a),
        proof=proof,
    )


@pytest.mark.parametrize(
    ("size_a", "size_b", "shared"),
    [(10, 10, 6), (8, 20, 5), (11, 20, 5), (1, 7, 0), (7, 9, 6), (16, 16, 0)],
)
def test_real_fork_verifies(signer: NoteSigner, size_a: int, size_b: int, shared: int) -> None:
    evidence = fork(signer, size_a, size_b, shared)
    a, b = verify_fork_evidence(evidence, signer.verifier())
    assert (a.size, b.size) == (size_a, size_b)
    assert (len(evidence.proof) > 0) == (size_a < size_b)


@pytest.mark.parametrize(("size_a", "size_b"), [(10, 10), (8, 20), (11, 20)])
def test_consistent_checkpoints_are_not_evidence(
    signer: NoteSigner, size_a: int, size_b: int
) -> None:
    tree = Tree(entries(0, size_b))
    proof = tuple(compute_consistency_proof(size_a, size_b, tree)) if size_a < size_b else ()
    evidence = ForkEvidence(
        origin=ORIGIN,
        note_a=tree.note(size_a, signer),
        note_b=tree.note(size_b, signer),
        prefix_root=tree.root(size_a),
        proof=proof,
    )
    with pytest.raises(VerificationError, match="not evidence of a fork"):
        verify_fork_evidence(evidence, signer.verifier())


def test_wrong_key_fails(signer: NoteSigner) -> None:
    evidence = fork(signer, 8, 20, 5)
    with pytest.raises(UnknownKeyError):
        verify_fork_evidence(evidence, NoteSigner.generate(ORIGIN).verifier())


def test_mismatched_origin_fails(signer: NoteSigner) -> None:
    evidence = fork(signer, 8, 20, 5)
    other = NoteSigner.generate("other.example/log")
    with pytest.raises(OriginMismatchError):
        verify_fork_evidence(evidence, other.verifier())
    relabelled = ForkEvidence(**{**_fields(evidence), "origin": "other.example/log"})
    with pytest.raises(UnknownKeyError):
        verify_fork_evidence(relabelled, other.verifier())
    # Notes of another log under the claimed origin's key name.
    other_same_name = NoteSigner.generate(ORIGIN)
    mixed = ForkEvidence(**{**_fields(evidence), "note_b": fork(other_same_name, 8, 20, 5).note_b})
    with pytest.raises(UnknownKeyError):
        verify_fork_evidence(mixed, signer.verifier())


def _fields(e: ForkEvidence) -> dict[str, object]:
    return {
        "origin": e.origin,
        "note_a": e.note_a,
        "note_b": e.note_b,
        "prefix_root": e.prefix_root,
        "proof": e.proof,
    }


def test_tampered_proof_fails(signer: NoteSigner) -> None:
    evidence = fork(signer, 11, 20, 5)
    flipped = (evidence.proof[0][:-1] + bytes([evidence.proof[0][-1] ^ 1]), *evidence.proof[1:])
    with pytest.raises(RootMismatchError):
        verify_fork_evidence(
            ForkEvidence(**{**_fields(evidence), "proof": flipped}), signer.verifier()
        )
    with pytest.raises(ProofError):
        verify_fork_evidence(
            ForkEvidence(**{**_fields(evidence), "proof": evidence.proof[:-1]}), signer.verifier()
        )
    bad_prefix = bytes(32)
    with pytest.raises(RootMismatchError):
        verify_fork_evidence(
            ForkEvidence(**{**_fields(evidence), "prefix_root": bad_prefix}), signer.verifier()
        )
    equal = fork(signer, 10, 10, 6)
    with pytest.raises(ProofError):
        verify_fork_evidence(
            ForkEvidence(**{**_fields(equal), "proof": (bytes(32),)}), signer.verifier()
        )
    with pytest.raises(RootMismatchError):
        verify_fork_evidence(
            ForkEvidence(**{**_fields(equal), "prefix_root": bytes(32)}), signer.verifier()
        )
    swapped = ForkEvidence(
        **{**_fields(evidence), "note_a": evidence.note_b, "note_b": evidence.note_a}
    )
    with pytest.raises(ProofError, match="larger"):
        verify_fork_evidence(swapped, signer.verifier())


def test_json_round_trip_and_strict_parsing(signer: NoteSigner) -> None:
    evidence = fork(signer, 8, 20, 5)
    data = evidence.to_json()
    assert ForkEvidence.from_json(data) == evidence
    assert ForkEvidence.from_json(data.decode()) == evidence
    obj = json.loads(data)
    assert set(obj) == {"origin", "note_a", "note_b", "prefix_root", "proof"}
    assert obj["prefix_root"] == evidence.prefix_root.hex()

    def bad(change: dict[str, object], field: str | None) -> None:
        doc = {**obj, **change}
        with pytest.raises(MalformedError) as e:
            ForkEvidence.from_json(json.dumps({k: v for k, v in doc.items() if v is not None}))
        assert e.value.field == field

    bad({"extra": 1}, "extra")
    bad({"proof": None}, "proof")
    bad({"prefix_root": obj["prefix_root"].upper()}, "prefix_root")
    bad({"prefix_root": obj["prefix_root"][:-2]}, "prefix_root")
    bad({"proof": [obj["proof"][0] + "00"]}, "proof[0]")
    bad({"proof": "abc"}, "proof")
    bad({"proof": ["00" * 32] * 65}, "proof")
    bad({"note_a": 5}, "note_a")
    bad({"origin": ""}, "origin")
    with pytest.raises(MalformedError):
        ForkEvidence.from_json(b'{"origin": "a", "origin": "b"}')
    with pytest.raises(MalformedError):
        ForkEvidence.from_json(b"[]")
    with pytest.raises(MalformedError, match="prefix_root"):
        ForkEvidence(origin=ORIGIN, note_a="x", note_b="y", prefix_root=b"short", proof=())


def test_cli_verify_evidence(
    signer: NoteSigner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "fork.json"
    good.write_bytes(fork(signer, 11, 20, 5).to_json())
    key = signer.verifier().to_text()
    assert main(["verify-evidence", str(good), "--vkey", key]) == 0
    assert "fork proven" in capsys.readouterr().out
    tree = Tree(entries(0, 10))
    consistent = ForkEvidence(
        origin=ORIGIN,
        note_a=tree.note(10, signer),
        note_b=tree.note(10, signer),
        prefix_root=tree.root(10),
        proof=(),
    )
    bad = tmp_path / "consistent.json"
    bad.write_bytes(consistent.to_json())
    assert main(["verify-evidence", str(bad), "--vkey", key]) == 1
    assert "not evidence" in capsys.readouterr().err
    wrong = NoteSigner.generate(ORIGIN).verifier().to_text()
    assert main(["verify-evidence", str(good), "--vkey", wrong]) == 1
    assert main(["verify-evidence", str(tmp_path / "missing.json"), "--vkey", key]) == 2
    # The real entry point, as an auditor runs it.
    run = subprocess.run(
        [sys.executable, "-m", "protocol", "verify-evidence", str(good), "--vkey", key],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0, run.stderr
