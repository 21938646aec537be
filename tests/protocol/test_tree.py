"""Index math, proof plans and the compact range of ``protocol.tree``.

Exhaustive over small trees (every size up to 64) against the naive RFC 6962
reference in ``test_merkle_properties``, plus argument validation and the
storage contract of ``CompactRange.extend(collect=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from protocol.encoding import MAX_UINT63
from protocol.errors import MalformedError
from protocol.hashing import EMPTY_ROOT, HASH_SIZE, hash_children, hash_leaf
from protocol.tree import (
    CompactRange,
    NodeId,
    NodeRun,
    ProofPlan,
    compute_consistency_proof,
    compute_inclusion_proof,
    consistency_proof_nodes,
    consistency_subtrees,
    frontier_ids,
    inclusion_proof_nodes,
    inclusion_subtrees,
    range_nodes,
)
from tests.protocol.test_merkle_properties import (
    ListReader,
    ref_mth,
    ref_path,
    ref_path_len,
    ref_proof,
    ref_subproof_len,
)

MAX = 64
LEAVES = [hash_leaf(b"tree leaf %d" % i) for i in range(MAX)]


def subtree_roots(ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    return [ref_mth(LEAVES[a:b]) for a, b in ranges]


def is_perfect_inside(node: NodeId, size: int) -> bool:
    return node.level >= 0 and node.index >= 0 and (node.index + 1) << node.level <= size


# --------------------------------------------------------------------------
# range_nodes / frontier_ids
# --------------------------------------------------------------------------


def test_range_nodes_small_cases() -> None:
    assert range_nodes(0, 0) == []
    assert range_nodes(0, 1) == [NodeId(0, 0)]
    assert range_nodes(0, 8) == [NodeId(3, 0)]
    assert range_nodes(0, 13) == [NodeId(3, 0), NodeId(2, 2), NodeId(0, 12)]
    assert range_nodes(8, 13) == [NodeId(2, 2), NodeId(0, 12)]
    assert range_nodes(3, 8) == [NodeId(0, 3), NodeId(2, 1)]  # unaligned start
    assert range_nodes(5, 5) == []


def test_range_nodes_tile_any_range_exactly() -> None:
    checked = 0
    for start in range(MAX + 1):
        for end in range(start, MAX + 1):
            covered: list[int] = []
            for node in range_nodes(start, end):
                first = node.index << node.level
                covered.extend(range(first, first + (1 << node.level)))
            assert covered == list(range(start, end)), (start, end)
            checked += 1
    assert checked == (MAX + 1) * (MAX + 2) // 2


def test_frontier_ids_one_node_per_set_bit() -> None:
    for size in range(MAX + 1):
        ids = frontier_ids(size)
        assert [n.level for n in ids] == sorted(
            (b for b in range(size.bit_length()) if size >> b & 1), reverse=True
        )
        assert ids == range_nodes(0, size)
    assert len(frontier_ids(MAX_UINT63)) == 63


@pytest.mark.parametrize(
    ("value", "field"),
    [(-1, "size"), (MAX_UINT63 + 1, "size"), (True, "size"), (1.0, "size"), ("3", "size")],
    ids=["negative", "2^63", "bool", "float", "str"],
)
def test_frontier_ids_rejects_bad_size(value: object, field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        frontier_ids(value)  # type: ignore[arg-type]
    assert exc.value.field == field


# --------------------------------------------------------------------------
# Proof subtrees and plans, exhaustively for small trees
# --------------------------------------------------------------------------


def test_inclusion_subtrees_and_plans_match_reference() -> None:
    checked = 0
    for size in range(1, MAX + 1):
        for index in range(size):
            ranges = inclusion_subtrees(index, size)
            assert subtree_roots(ranges) == ref_path(index, LEAVES[:size]), (index, size)
            assert all(not a <= index < b for a, b in ranges)  # siblings never hold the leaf
            plan = inclusion_proof_nodes(index, size)
            assert all(is_perfect_inside(n, size) for n in plan.node_ids)
            assert len(plan.groups) == len(ranges)
            reader = ListReader(LEAVES[:size])
            assert compute_inclusion_proof(index, size, reader) == ref_path(index, LEAVES[:size])
            assert reader.requests == [plan.node_ids]
            checked += 1
    assert checked == MAX * (MAX + 1) // 2


def test_consistency_subtrees_and_plans_match_reference() -> None:
    checked = 0
    for new in range(MAX + 1):
        for old in range(new + 1):
            ranges = consistency_subtrees(old, new)
            assert subtree_roots(ranges) == ref_proof(old, LEAVES[:new]), (old, new)
            plan = consistency_proof_nodes(old, new)
            assert all(is_perfect_inside(n, new) for n in plan.node_ids)
            reader = ListReader(LEAVES[:new])
            assert compute_consistency_proof(old, new, reader) == ref_proof(old, LEAVES[:new])
            checked += 1
    assert checked == (MAX + 1) * (MAX + 2) // 2


def test_plan_sizes_at_the_largest_tree() -> None:
    # 2^63-1 leaves: levels 0..62 are all on the frontier; the last leaf is
    # alone on the right border, so its path is one shorter.
    assert len(inclusion_subtrees(MAX_UINT63 - 1, MAX_UINT63)) == 62
    assert ref_path_len(MAX_UINT63 - 1, MAX_UINT63) == 62
    assert len(inclusion_subtrees(0, MAX_UINT63)) == 63 == ref_path_len(0, MAX_UINT63)
    plan = inclusion_proof_nodes(0, MAX_UINT63)
    assert len(plan.groups) == 63
    # The top sibling [2^62, 2^63-1) is folded from 62 perfect nodes.
    assert len(plan.groups[-1]) == 62
    for old in (1, 3, 2**62, 2**62 + 1, MAX_UINT63 - 1):
        assert len(consistency_subtrees(old, MAX_UINT63)) == ref_subproof_len(old, MAX_UINT63, True)
    assert consistency_subtrees(MAX_UINT63, MAX_UINT63) == []


@pytest.mark.parametrize(
    ("index", "size", "field"),
    [
        (0, 0, "index"),
        (5, 5, "index"),
        (6, 5, "index"),
        (-1, 5, "index"),
        (0, -1, "size"),
        (0, MAX_UINT63 + 1, "size"),
        (True, 5, "index"),
        (0, False, "size"),
    ],
    ids=[
        "empty-tree",
        "index=size",
        "index>size",
        "neg-index",
        "neg-size",
        "size>2^63-1",
        "bool-index",
        "bool-size",
    ],
)
def test_inclusion_plan_rejects(index: int, size: int, field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        inclusion_proof_nodes(index, size)
    assert exc.value.field == field
    with pytest.raises(MalformedError):
        compute_inclusion_proof(index, size, ListReader(LEAVES[:8]))


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        (6, 5, "old_size"),
        (1, 0, "old_size"),
        (-1, 5, "old_size"),
        (0, -1, "new_size"),
        (0, MAX_UINT63 + 1, "new_size"),
        (True, 5, "old_size"),
    ],
    ids=["old>new", "old>empty", "neg-old", "neg-new", "new>2^63-1", "bool-old"],
)
def test_consistency_plan_rejects(old: int, new: int, field: str) -> None:
    with pytest.raises(MalformedError) as exc:
        consistency_proof_nodes(old, new)
    assert exc.value.field == field


def test_plan_fold_rejects_wrong_reader_answers() -> None:
    plan = inclusion_proof_nodes(5, 13)
    good = ListReader(LEAVES[:13]).get_node_hashes(plan.node_ids)
    assert plan.fold(good) == ref_path(5, LEAVES[:13])
    with pytest.raises(MalformedError):
        plan.fold(list(good)[:-1])
    with pytest.raises(MalformedError):
        plan.fold([*good, good[0]])
    with pytest.raises(MalformedError):
        plan.fold([good[0][:31], *list(good)[1:]])
    with pytest.raises(MalformedError):
        plan.fold([*list(good)[:-1], good[-1] + b"\x00"])

    class ShortReader:
        def get_node_hashes(self, ids: Sequence[NodeId]) -> Sequence[bytes]:
            return [EMPTY_ROOT] * (len(ids) - 1)

    with pytest.raises(MalformedError):
        compute_inclusion_proof(5, 13, ShortReader())
    with pytest.raises(MalformedError):
        compute_consistency_proof(5, 13, ShortReader())


def test_plan_fold_order_for_a_right_border_group() -> None:
    # Size 7, leaf 0: the last sibling is [4, 7) = node(1, 2) + leaf 6, folded right to left.
    plan = inclusion_proof_nodes(0, 7)
    assert plan.groups == (
        (NodeId(0, 1),),
        (NodeId(1, 1),),
        (NodeId(1, 2), NodeId(0, 6)),
    )
    a, b, c, d = (bytes([i]) * HASH_SIZE for i in range(4))
    assert plan.fold([a, b, c, d]) == [a, b, hash_children(c, d)]
    assert ProofPlan(()).fold([]) == []
    assert ProofPlan(()).node_ids == ()


def test_node_id_orders_by_level_then_index() -> None:
    assert sorted([NodeId(1, 0), NodeId(0, 5), NodeId(0, 1)]) == [
        NodeId(0, 1),
        NodeId(0, 5),
        NodeId(1, 0),
    ]


# --------------------------------------------------------------------------
# CompactRange
# --------------------------------------------------------------------------


def test_compact_range_empty() -> None:
    cr = CompactRange.empty()
    assert cr.size == 0
    assert cr.frontier == ()
    assert cr.root() == EMPTY_ROOT
    assert cr.extend([]) == []
    assert cr.size == 0
    assert CompactRange.from_frontier(0, []).root() == EMPTY_ROOT


def test_compact_range_frontier_is_the_frontier_nodes() -> None:
    cr = CompactRange.empty()
    for size in range(1, MAX + 1):
        cr.append(LEAVES[size - 1])
        want = [
            ref_mth(LEAVES[n.index << n.level : (n.index + 1) << n.level])
            for n in frontier_ids(size)
        ]
        assert list(cr.frontier) == want, size
        assert cr.root() == ref_mth(LEAVES[:size])


def test_compact_range_every_split_point() -> None:
    checked = 0
    for size in range(MAX + 1):
        for cut in range(size + 1):
            cr = CompactRange.empty()
            cr.extend(LEAVES[:cut])
            cr.extend(LEAVES[cut:size])
            assert cr.size == size
            assert cr.root() == ref_mth(LEAVES[:size]), (cut, size)
            checked += 1
    assert checked == (MAX + 1) * (MAX + 2) // 2


def test_compact_range_copy_is_independent() -> None:
    cr = CompactRange.empty()
    cr.extend(LEAVES[:5])
    branch = cr.copy()
    branch.extend(LEAVES[5:9])
    assert cr.size == 5
    assert cr.root() == ref_mth(LEAVES[:5])
    assert branch.root() == ref_mth(LEAVES[:9])


def test_compact_range_accepts_any_sequence() -> None:
    cr = CompactRange.empty()
    cr.extend(tuple(LEAVES[:3]))
    cr.extend([bytearray(h) for h in LEAVES[3:6]])  # type: ignore[misc]
    assert cr.root() == ref_mth(LEAVES[:6])


def test_extend_collect_returns_every_completed_node_once() -> None:
    for batches in ([1] * 20, [3, 5, 7, 1, 16, 32], [64], [2, 62], [33, 31]):
        cr = CompactRange.empty()
        stored: dict[NodeId, bytes] = {}
        for n in batches:
            start = cr.size
            runs = cr.extend(LEAVES[start : start + n], collect=True)
            for run in runs:
                assert isinstance(run, NodeRun)
                assert run.level >= 1
                for offset, h in enumerate(run.hashes):
                    node = NodeId(run.level, run.start + offset)
                    assert node not in stored, (batches, node)
                    stored[node] = h
        size = cr.size
        assert size == sum(batches)
        want = {
            NodeId(level, i) for level in range(1, size.bit_length()) for i in range(size >> level)
        }
        assert set(stored) == want, batches
        for node, h in stored.items():
            assert h == ref_mth(LEAVES[node.index << node.level : (node.index + 1) << node.level])


def test_extend_without_collect_returns_nothing() -> None:
    cr = CompactRange.empty()
    assert cr.extend(LEAVES[:16]) == []


@pytest.mark.parametrize(
    "hashes",
    [[LEAVES[0][:31]], [LEAVES[0] + b"\x00"], [LEAVES[0], b""]],
    ids=["first-31-bytes", "first-33-bytes", "last-empty"],
)
def test_extend_rejects_bad_leaf_hash_at_the_ends(hashes: list[bytes]) -> None:
    cr = CompactRange.empty()
    cr.extend(LEAVES[:3])
    with pytest.raises(MalformedError):
        cr.extend(hashes)
    assert cr.size == 3
    assert cr.root() == ref_mth(LEAVES[:3])


def test_extend_rejects_overflowing_2_63() -> None:
    frontier = [bytes([level]) * HASH_SIZE for level in range(62, -1, -1)]
    cr = CompactRange.from_frontier(MAX_UINT63, frontier)
    assert cr.size == MAX_UINT63
    with pytest.raises(MalformedError):
        cr.append(LEAVES[0])
    assert cr.size == MAX_UINT63

    almost = CompactRange.from_frontier(MAX_UINT63 - 1, frontier[:-1])
    almost.append(LEAVES[0])
    assert almost.size == MAX_UINT63
    assert almost.frontier == (*frontier[:-1], LEAVES[0])


@pytest.mark.parametrize(
    ("size", "hashes"),
    [
        (0, [LEAVES[0]]),
        (1, []),
        (3, [LEAVES[0]]),
        (3, [LEAVES[0], LEAVES[1], LEAVES[2]]),
        (2, [LEAVES[0][:31]]),
        (2, [LEAVES[0] + b"\x00"]),
        (-1, []),
        (MAX_UINT63 + 1, []),
    ],
    ids=["too-many", "too-few", "3-needs-2", "3-not-3", "31-bytes", "33-bytes", "neg", "2^63"],
)
def test_from_frontier_rejects(size: int, hashes: list[bytes]) -> None:
    with pytest.raises(MalformedError):
        CompactRange.from_frontier(size, hashes)
