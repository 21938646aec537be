"""Finding entries by leaf hash (node.ledger.leaf_index) over a real ledger."""

from __future__ import annotations

import pytest

from node.ledger import Ledger
from node.ledger.leaf_index import LeafHashIndex
from protocol.entry import AddEntry
from protocol.hashing import hash_leaf


def add(i: int) -> AddEntry:
    return AddEntry.create(signal_type="sha256", value=f"{i:064x}", labels=["src:test"])


def test_finds_each_entry_and_grows_with_the_log(ledger: Ledger) -> None:
    index = LeafHashIndex()
    log_id = ledger.own_log.log_id
    ledger.append([add(i) for i in range(40)])
    for i in (0, 17, 39):
        assert index.find(ledger.store, log_id, hash_leaf(add(i).to_bytes()), 40) == i
    assert index.entries_indexed(log_id) == 40
    # Entries past the size asked about are not found, and not indexed.
    ledger.append([add(i) for i in range(40, 50)])
    assert index.find(ledger.store, log_id, hash_leaf(add(45).to_bytes()), 40) is None
    assert index.entries_indexed(log_id) == 40
    assert index.find(ledger.store, log_id, hash_leaf(add(45).to_bytes()), 50) == 45
    assert index.entries_indexed(log_id) == 50


def test_identical_entries_give_the_first(ledger: Ledger) -> None:
    # A hash retracted and listed again has the same entry bytes twice.
    ledger.append([add(1), add(2)])
    ledger.retract(0, "reviewed")
    ledger.append([add(1)])
    size = ledger.latest_checkpoint().size
    leaf = hash_leaf(add(1).to_bytes())
    assert [i for i, _d, h in ledger.store.iter_entries(ledger.own_log.log_id) if h == leaf] == [
        0,
        3,
    ]
    assert LeafHashIndex().find(ledger.store, ledger.own_log.log_id, leaf, size) == 0


def test_a_shared_prefix_is_only_a_candidate(ledger: Ledger) -> None:
    ledger.append([add(i) for i in range(5)])
    log_id = ledger.own_log.log_id
    real = hash_leaf(add(2).to_bytes())
    same_prefix = real[:8] + bytes(b ^ 0xFF for b in real[8:])
    index = LeafHashIndex()
    assert index.find(ledger.store, log_id, same_prefix, 5) is None
    assert index.find(ledger.store, log_id, real, 5) == 2
    with pytest.raises(ValueError, match="32 bytes"):
        index.find(ledger.store, log_id, real[:31], 5)
