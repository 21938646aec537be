"""Merkle tree index math, proof generation and the compact range.

Layer: protocol (pure). This module performs no I/O: stored hashes come in
through the :class:`NodeReader` interface that storage implements.

Terms (RFC 6962 section 2.1, RFC 9162 section 2.1):

* A *perfect* node ``NodeId(level, index)`` is the root of the complete
  subtree of ``2**level`` leaves ``[index << level, (index + 1) << level)``.
  Level 0 nodes are leaf hashes. Only perfect nodes are ever stored.
* Every proof hash is the root of a subtree ``[start, end)``; when that
  subtree is on the right border of the tree it is not perfect, and its hash
  is folded from the perfect nodes that cover it. A :class:`ProofPlan` says
  which perfect nodes a proof needs and how they fold, so storage answers any
  proof with one batched read of O(log n) nodes.
* The *compact range* of a tree of size n is its frontier: one perfect node
  per set bit of n. It is all a verifier needs to extend a verified tree with
  new leaves and compute the new root in O(new leaves + log n) hashing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Protocol

from protocol.encoding import MAX_UINT63
from protocol.errors import MalformedError
from protocol.hashing import EMPTY_ROOT, HASH_SIZE, hash_children

__all__ = [
    "CompactRange",
    "NodeId",
    "NodeReader",
    "NodeRun",
    "ProofPlan",
    "compute_consistency_proof",
    "compute_inclusion_proof",
    "consistency_proof_nodes",
    "consistency_subtrees",
    "frontier_ids",
    "inclusion_proof_nodes",
    "inclusion_subtrees",
    "range_nodes",
]


@dataclass(frozen=True, slots=True, order=True)
class NodeId:
    """A perfect subtree: ``2**level`` leaves starting at leaf ``index << level``."""

    level: int
    index: int


@dataclass(frozen=True, slots=True)
class NodeRun:
    """Consecutive perfect nodes of one level: ``start, start + 1, ...``."""

    level: int
    start: int
    hashes: Sequence[bytes]


class NodeReader(Protocol):
    """Supplies stored hashes of perfect nodes (storage implements this)."""

    def get_node_hashes(self, ids: Sequence[NodeId]) -> Sequence[bytes]:
        """Return the hash of each node in ``ids``, in the same order."""
        ...


def _check_size(value: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedError(f"expected an integer, got {type(value).__name__}", field=field)
    if not 0 <= value <= MAX_UINT63:
        raise MalformedError(f"{value} is out of range 0..2^63-1", field=field)


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2), RFC 6962's k."""
    return 1 << ((n - 1).bit_length() - 1)


def range_nodes(start: int, end: int) -> list[NodeId]:
    """The perfect nodes covering leaves [start, end), left to right.

    For the subtrees proofs use (``start`` aligned to a power of two at least
    ``end - start``) these are of strictly decreasing size.
    """
    nodes: list[NodeId] = []
    while start < end:
        level = (end - start).bit_length() - 1
        while start & ((1 << level) - 1):
            level -= 1
        nodes.append(NodeId(level, start >> level))
        start += 1 << level
    return nodes


def inclusion_subtrees(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose subtree roots form the inclusion proof (RFC 9162 2.1.3.1).

    Returned in proof order: the sibling nearest the leaf first.

    Raises:
        MalformedError: if ``index`` is not below ``size``.
    """
    _check_size(index, "index")
    _check_size(size, "size")
    if index >= size:
        raise MalformedError(f"index is beyond size: {index} >= {size}", field="index")
    subtrees: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            subtrees.append((lo + k, hi))
            hi = lo + k
        else:
            subtrees.append((lo, lo + k))
            lo += k
    subtrees.reverse()
    return subtrees


def consistency_subtrees(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose subtree roots form the consistency proof (RFC 9162 2.1.4.1).

    Empty when ``old_size`` is 0 or equals ``new_size``.

    Raises:
        MalformedError: if ``old_size`` exceeds ``new_size``.
    """
    _check_size(old_size, "old_size")
    _check_size(new_size, "new_size")
    if old_size > new_size:
        raise MalformedError(
            f"old size is beyond new size: {old_size} > {new_size}", field="old_size"
        )
    if old_size in (0, new_size):
        return []
    subtrees: list[tuple[int, int]] = []
    lo, hi, whole = 0, new_size, True
    # SUBPROOF(m, D[lo:hi], b): descend until the old tree is a complete subtree.
    while old_size - lo != hi - lo:
        k = _split(hi - lo)
        if old_size - lo <= k:
            subtrees.append((lo + k, hi))
            hi = lo + k
        else:
            subtrees.append((lo, lo + k))
            lo += k
            whole = False
    if not whole:
        subtrees.append((lo, hi))
    subtrees.reverse()
    return subtrees


@dataclass(frozen=True, slots=True)
class ProofPlan:
    """Which perfect nodes a proof needs, and how they fold into proof hashes.

    Attributes:
        groups: one tuple of node ids per proof hash, left to right; a group
            of several nodes is a right-border subtree, folded right to left.
    """

    groups: tuple[tuple[NodeId, ...], ...]

    @property
    def node_ids(self) -> tuple[NodeId, ...]:
        """Every node to fetch, in group order (no duplicates occur in a proof)."""
        return tuple(node for group in self.groups for node in group)

    def fold(self, hashes: Sequence[bytes]) -> list[bytes]:
        """Turn fetched hashes (in :attr:`node_ids` order) into the proof hashes.

        Raises:
            MalformedError: if the number or size of the hashes is wrong.
        """
        if len(hashes) != sum(len(g) for g in self.groups):
            raise MalformedError(
                f"got {len(hashes)} node hashes, want {sum(len(g) for g in self.groups)}"
            )
        proof: list[bytes] = []
        pos = 0
        for group in self.groups:
            part = hashes[pos : pos + len(group)]
            pos += len(group)
            for h in part:
                if len(h) != HASH_SIZE:
                    raise MalformedError(f"node hash of {len(h)} bytes, want {HASH_SIZE}")
            acc = part[-1]
            for h in reversed(part[:-1]):
                acc = hash_children(h, acc)
            proof.append(bytes(acc))
        return proof


def _plan(subtrees: list[tuple[int, int]]) -> ProofPlan:
    return ProofPlan(tuple(tuple(range_nodes(a, b)) for a, b in subtrees))


def inclusion_proof_nodes(index: int, size: int) -> ProofPlan:
    """The plan of the inclusion proof of leaf ``index`` in the tree of ``size``.

    Raises:
        MalformedError: if ``index >= size`` or a value is out of range.
    """
    return _plan(inclusion_subtrees(index, size))


def consistency_proof_nodes(old_size: int, new_size: int) -> ProofPlan:
    """The plan of the consistency proof from ``old_size`` to ``new_size``.

    Raises:
        MalformedError: if ``old_size > new_size`` or a value is out of range.
    """
    return _plan(consistency_subtrees(old_size, new_size))


def compute_inclusion_proof(index: int, size: int, reader: NodeReader) -> list[bytes]:
    """The RFC 6962 inclusion proof of leaf ``index`` in the tree of ``size``.

    Raises:
        MalformedError: if the arguments are out of range or the reader
            returns the wrong number of hashes.
    """
    plan = inclusion_proof_nodes(index, size)
    return plan.fold(reader.get_node_hashes(plan.node_ids))


def compute_consistency_proof(old_size: int, new_size: int, reader: NodeReader) -> list[bytes]:
    """The RFC 6962 consistency proof from ``old_size`` to ``new_size``.

    Raises:
        MalformedError: if the arguments are out of range or the reader
            returns the wrong number of hashes.
    """
    plan = consistency_proof_nodes(old_size, new_size)
    return plan.fold(reader.get_node_hashes(plan.node_ids))


def frontier_ids(size: int) -> list[NodeId]:
    """The perfect nodes of the compact range [0, size), left (largest) first."""
    _check_size(size, "size")
    return range_nodes(0, size)


class CompactRange:
    """The frontier of the tree [0, size): enough to extend it and get its root.

    Instances are mutable (``extend``/``append``); use :meth:`copy` to branch.
    """

    __slots__ = ("_by_level", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._by_level: dict[int, bytes] = {}

    @classmethod
    def empty(cls) -> CompactRange:
        """The compact range of the empty tree."""
        return cls()

    @classmethod
    def from_frontier(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Rebuild from the hashes of :func:`frontier_ids` ``(size)``, in that order.

        Raises:
            MalformedError: if the count or a length is wrong.
        """
        ids = frontier_ids(size)
        if len(hashes) != len(ids):
            raise MalformedError(f"size {size} needs {len(ids)} frontier hashes, got {len(hashes)}")
        cr = cls()
        for node_id, h in zip(ids, hashes, strict=True):
            if len(h) != HASH_SIZE:
                raise MalformedError(f"frontier hash of {len(h)} bytes, want {HASH_SIZE}")
            cr._by_level[node_id.level] = bytes(h)
        cr._size = size
        return cr

    @property
    def size(self) -> int:
        """Number of leaves covered."""
        return self._size

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """Frontier hashes in :func:`frontier_ids` order (left, largest, first)."""
        return tuple(self._by_level[lv] for lv in sorted(self._by_level, reverse=True))

    def copy(self) -> CompactRange:
        """An independent copy."""
        cr = CompactRange()
        cr._size = self._size
        cr._by_level = dict(self._by_level)
        return cr

    def root(self) -> bytes:
        """The RFC 6962 root hash of [0, size) (SHA-256("") for size 0)."""
        if not self._by_level:
            return EMPTY_ROOT
        levels = sorted(self._by_level)
        acc = self._by_level[levels[0]]
        for lv in levels[1:]:
            acc = hash_children(self._by_level[lv], acc)
        return acc

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf hash."""
        self.extend([leaf_hash])

    def extend(
        self, leaf_hashes: Sequence[bytes], *, collect: bool = False, min_level: int = 1
    ) -> list[NodeRun]:
        """Add leaf hashes for leaves [size, size + n).

        Works level by level over lists (one list comprehension per level),
        so the cost is about one SHA-256 per new leaf plus O(log size).

        Args:
            leaf_hashes: the new leaves' hashes (32 bytes each), in order.
            collect: also return the perfect nodes of level >= ``min_level``
                completed by these leaves (for storage).
            min_level: lowest level collected (at least 1).

        Returns:
            The completed nodes as runs per level when ``collect``, else [].

        Raises:
            MalformedError: if the tree would exceed 2^63-1 leaves.
        """
        n = len(leaf_hashes)
        if n == 0:
            return []
        old = self._size
        new = old + n
        if new > MAX_UINT63:
            raise MalformedError(f"tree size {new} exceeds 2^63-1")
        if any(len(h) != HASH_SIZE for h in (leaf_hashes[0], leaf_hashes[-1])):
            raise MalformedError(f"leaf hashes must be {HASH_SIZE} bytes")
        frontier = self._by_level
        updated: dict[int, bytes] = {}
        runs: list[NodeRun] = []
        nodes = list(leaf_hashes)
        start = old
        level = 0
        sha = sha256
        while nodes:
            if start & 1:
                # The left sibling of the first new node is an old frontier node.
                nodes.insert(0, frontier[level])
                start -= 1
            if (start + len(nodes)) & 1:
                # An unpaired last node is the new frontier node of this level.
                updated[level] = nodes.pop()
            it = iter(nodes)
            nodes = [sha(b"\x01" + a + b).digest() for a, b in zip(it, it, strict=True)]
            start >>= 1
            level += 1
            if collect and nodes and level >= min_level:
                # A copy: the next level inserts into and pops from `nodes`.
                runs.append(NodeRun(level, start, tuple(nodes)))
        # From here up no new node exists: old >> level == new >> level, so the
        # old frontier nodes of these levels are the new ones.
        for lv, h in frontier.items():
            if lv >= level:
                updated[lv] = h
        self._by_level = updated
        self._size = new
        return runs
