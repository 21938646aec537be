"""Reading tree nodes for proofs: every tile and node of a call in one statement.

``LedgerStore.get_node_hashes`` reads the leaf ranges (tiles) of low nodes
and the stored nodes of level >= TILE_LEVEL with one SQL statement per call
(in chunks for large batches). These tests check every perfect node of a
real SQLite ledger against hashes recomputed from the entries, in any order,
with repeats, across the chunk edges, and that a missing node is named.
"""

from __future__ import annotations

import random
import re
import sqlite3
from pathlib import Path

import pytest

from node.errors import StorageError
from node.ledger import Ledger
from node.storage import ledger_store
from node.storage.schema import TILE_LEVEL
from protocol.entry import AddEntry
from protocol.hashing import hash_leaf
from protocol.merkle import root_from_leaf_hashes, verify_consistency, verify_inclusion
from protocol.tree import NodeId

SIZE = 300


def add(i: int) -> AddEntry:
    return AddEntry.create(signal_type="sha256", value=f"{i:064x}", labels=[])


@pytest.fixture
def leaves(ledger: Ledger) -> list[bytes]:
    ledger.append([add(i) for i in range(SIZE)])
    return [hash_leaf(bytes(d)) for _i, d, _h in ledger.entries(ledger.own_log)]


def every_perfect_node(size: int) -> list[NodeId]:
    return [
        NodeId(level, index) for level in range(size.bit_length()) for index in range(size >> level)
    ]


def expected(leaves: list[bytes], node: NodeId) -> bytes:
    first = node.index << node.level
    return root_from_leaf_hashes(leaves[first : first + (1 << node.level)])


@pytest.mark.parametrize("per_query", [1, 3, 256])
def test_every_node_in_any_order_with_repeats(
    ledger: Ledger, leaves: list[bytes], per_query: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_store, "_NODES_PER_QUERY", per_query)
    ids = every_perfect_node(SIZE)
    assert any(n.level < TILE_LEVEL for n in ids) and any(n.level >= TILE_LEVEL for n in ids)
    asked = ids + random.Random(7).sample(ids, 40)
    random.Random(8).shuffle(asked)
    got = ledger.store.get_node_hashes(ledger.own_log.log_id, asked)
    assert got == [expected(leaves, n) for n in asked]
    assert ledger.store.get_node_hashes(ledger.own_log.log_id, []) == []


def tree_reads(statements: list[str]) -> list[str]:
    # Besides finding the log and its latest checkpoint.
    return [s for s in statements if "FROM logs" not in s and "FROM checkpoints" not in s]


def test_one_statement_per_proof(ledger: Ledger, leaves: list[bytes]) -> None:
    statements: list[str] = []
    ledger.store.conn.set_trace_callback(statements.append)
    root = ledger.latest_checkpoint().root_hash
    for index in (0, 17, 255, 256, SIZE - 1):
        statements.clear()
        proof = ledger.prove_inclusion(index)
        assert len(tree_reads(statements)) == 1, statements
        assert proof.leaf_hash == leaves[index]
        verify_inclusion(index, SIZE, leaves[index], proof.hashes, root)
    for old in (1, 16, 100, 256, SIZE - 1):
        statements.clear()
        proof = ledger.prove_consistency(old)
        assert len(tree_reads(statements)) == 1, statements
        old_root = root_from_leaf_hashes(leaves[:old])
        verify_consistency(old, SIZE, old_root, root, proof.hashes)
    ledger.store.conn.set_trace_callback(None)


@pytest.mark.parametrize(("table", "missing"), [("nodes", NodeId(5, 3)), ("entries", None)])
def test_a_missing_node_is_named(
    ledger: Ledger, leaves: list[bytes], node_dir: Path, table: str, missing: NodeId | None
) -> None:
    conn = sqlite3.connect(node_dir / "ledger.db")
    conn.execute(f"DROP TRIGGER {table}_no_delete")
    if table == "nodes":
        conn.execute("DELETE FROM nodes WHERE level = 5 AND idx = 3")
    else:
        conn.execute("DELETE FROM entries WHERE idx = 33")
    conn.commit()
    conn.close()
    wanted = missing or NodeId(1, 16)  # the pair of leaves 32 and 33
    with pytest.raises(StorageError, match=re.escape(f"first {wanted}") + ".*run `hashmesh fsck`"):
        ledger.store.get_node_hashes(ledger.own_log.log_id, [NodeId(8, 0), wanted, NodeId(4, 0)])
    # Nodes not over the damage are still read.
    assert ledger.store.get_node_hashes(ledger.own_log.log_id, [NodeId(4, 0)]) == [
        expected(leaves, NodeId(4, 0))
    ]
