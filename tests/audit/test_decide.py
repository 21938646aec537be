"""The auditor's decisions as pure functions: plain values in, failures, conflicts, notes out.

No node, no file, no event loop: what the run would have gathered and
replayed is written down here directly.
"""

from __future__ import annotations

from dataclasses import replace

from node.audit.decide import (
    MAX_PROOF_CHECKS,
    bundle_key_problem,
    bundle_start_chain,
    choose_key_chain,
    conflict_failure,
    first_divergences,
    history_failures,
    needs_other_key,
    next_head,
    origins_to_audit,
    plan_proof_checks,
    proof_conflict,
    verify_checkpoints,
)
from protocol.audit import STATE_SOURCE, AuditHead, Conflict, SourceView
from protocol.checkpoint import Checkpoint, VerifiedCheckpoint, sign_checkpoint
from protocol.hashing import hash_leaves
from protocol.keys import NoteSigner
from protocol.merkle import root_from_leaf_hashes
from protocol.rotation import KeyChain
from protocol.tree import CompactRange

ORIGIN = "hotline-a.example/hashmesh"
KEY = NoteSigner.from_seed(ORIGIN, bytes(range(32)))
OTHER = NoteSigner.from_seed(ORIGIN, bytes(range(1, 33)))
CHAIN = KeyChain.pinned(KEY.verifier())
LEAVES = hash_leaves([b"entry %d" % i for i in range(8)])
NODE, PEER = "https://a.example:1", "https://b.example:1"


def note(size: int, signer: NoteSigner = KEY, leaves: list[bytes] = LEAVES) -> str:
    root = root_from_leaf_hashes(leaves[:size])
    return sign_checkpoint(Checkpoint(origin=ORIGIN, size=size, root_hash=root), signer)


def signed(size: int, source: str = NODE, leaves: list[bytes] = LEAVES) -> VerifiedCheckpoint:
    return replace(CHAIN.open(note(size, leaves=leaves)), source=source)


def head(size: int) -> AuditHead:
    tree = CompactRange.empty()
    tree.extend(LEAVES[:size])
    return AuditHead.from_tree(tree, note(size))


def view(
    source: str, sizes: list[int], *, authoritative: bool = False, replayed: int = 0
) -> SourceView:
    tree = CompactRange.empty()
    tree.extend(LEAVES[:replayed])
    latest = max(sizes) if sizes else 0
    return SourceView(
        source=source,
        authoritative=authoritative,
        checkpoints=tuple(signed(s, source) for s in sorted(sizes)),
        replay_from=0,
        computed={replayed: tree.root()} if replayed == latest else {},
        tree=tree if replayed else None,
        leaves_hashed=replayed,
    )


def test_origins_are_narrowed_to_those_wanted() -> None:
    assert origins_to_audit({"b", "a"}, None) == (["a", "b"], [])
    assert origins_to_audit({"a", "b"}, frozenset({"b", "c"})) == (
        ["b"],
        ["origin=c: no target holds it"],
    )


def test_a_pinned_key_for_another_name_is_a_key_problem() -> None:
    stranger = NoteSigner.from_seed("other.example/log", bytes(32)).verifier().to_text()
    chain, notes, problem = choose_key_chain(ORIGIN, None, stranger, [])
    assert chain is None and not notes
    assert problem == f"the pinned key is for 'other.example/log', not {ORIGIN!r}"


def test_a_carried_key_is_trusted_on_first_use_with_a_note() -> None:
    vkey = KEY.verifier().to_text()
    chain, notes, problem = choose_key_chain(ORIGIN, None, None, [("a.bundle", vkey)])
    assert chain is not None and problem is None
    assert notes == [
        f"origin={ORIGIN}: trusting the key carried by a.bundle on first use ({vkey}); "
        "pin it with --vkey"
    ]


def test_a_bundle_from_another_key_must_rotate_to_the_trusted_one() -> None:
    carried = OTHER.verifier().to_text()
    assert bundle_start_chain(CHAIN, KEY.verifier().to_text()) is CHAIN
    start = bundle_start_chain(CHAIN, carried)
    assert start is not CHAIN
    assert bundle_key_problem(CHAIN, KEY.verifier().to_text(), CHAIN) is None
    problem = bundle_key_problem(CHAIN, carried, start)
    assert problem is not None and problem.startswith(f"the bundle carries key {carried}")


def test_checkpoints_verify_one_per_size_and_the_rest_fail() -> None:
    notes = [note(4), note(2), note(4), note(6, OTHER)]
    checkpoints, failures = verify_checkpoints(ORIGIN, NODE, CHAIN, notes)
    assert [cp.size for cp in checkpoints] == [2, 4]
    assert [(f.check, f.new_size) for f in failures] == [("signature", 6)]
    assert needs_other_key(CHAIN, note(6, OTHER)) and not needs_other_key(CHAIN, note(6))


def test_the_origins_own_node_must_keep_the_audited_head() -> None:
    assert history_failures(ORIGIN, NODE, head(4), [signed(4), signed(6)]) == []
    shrunk = history_failures(ORIGIN, NODE, head(4), [signed(2)])
    assert [(f.check, f.old_size, f.new_size) for f in shrunk] == [("history", 4, 2)]
    hidden = history_failures(ORIGIN, NODE, head(4), [signed(2), signed(6)])
    assert [(f.check, f.new_size) for f in hidden] == [("history", 4)]


def test_a_proof_that_fails_is_a_conflict() -> None:
    forked = hash_leaves([b"other %d" % i for i in range(8)])
    assert proof_conflict("split-view", signed(4), signed(4), []) is None
    conflict = proof_conflict("split-view", signed(2), signed(6, PEER, forked), [])
    assert conflict is not None and conflict.check == "split-view"


def test_proofs_are_asked_of_the_origins_own_node_first_up_to_the_budget() -> None:
    live = [view(PEER, [8]), view(NODE, [8], authoritative=True)]
    unchecked = [signed(1, "x.bundle"), signed(8, NODE)]
    plan, notes = plan_proof_checks(ORIGIN, unchecked, live)
    assert [(cp.size, newer.source) for cp, newer in plan] == [(1, NODE), (8, PEER)]
    assert notes == []
    many = [signed(1, "x.bundle")] * (MAX_PROOF_CHECKS + 1)
    plan, notes = plan_proof_checks(ORIGIN, many, live)
    assert len(plan) == MAX_PROOF_CHECKS
    assert notes == [
        f"origin={ORIGIN}: more than {MAX_PROOF_CHECKS} checkpoints needed a proof; "
        "the rest were not compared"
    ]


def test_one_failure_per_pair_of_sources_at_the_first_divergence() -> None:
    forked = hash_leaves([b"other %d" % i for i in range(8)])
    late = Conflict(
        check="split-view", older=signed(4), newer=signed(8, PEER, forked), prefix_root=None
    )
    early = Conflict(
        check="split-view", older=signed(2), newer=signed(8, PEER, forked), prefix_root=None
    )
    rewrite = Conflict(
        check="consistency",
        older=head(2).verified(),
        newer=signed(6, PEER, forked),
        prefix_root=None,
    )
    assert first_divergences([late, rewrite, early]) == [rewrite, early]
    assert conflict_failure(ORIGIN, early, None, "gone").source == f"{NODE} vs {PEER}"
    failure = conflict_failure(ORIGIN, rewrite, None, None)
    assert rewrite.older.source == STATE_SOURCE and failure.source == PEER
    assert failure.message == rewrite.message()
    assert conflict_failure(ORIGIN, early, None, "gone").message.endswith(
        " (no fork evidence: gone)"
    )


def test_the_next_head_is_the_largest_tree_whose_leaves_produced_its_root() -> None:
    views = [view(NODE, [4], replayed=4), view(PEER, [8], replayed=8), view("x", [8])]
    new = next_head(views, head(2))
    assert new is not None and new.size == 8 and new.root_hash == root_from_leaf_hashes(LEAVES)
    assert next_head([view(NODE, [4], replayed=4)], head(6)) == head(6)
    assert next_head([], None) is None
