"""Finding entries by leaf hash (node.ledger.leaf_index) over a real ledger."""

from __future__ import annotations

import pytest

from node.ledger import Ledger
from node.ledger.integration import Integration
from node.ledger.leaf_index import LeafHashIndex
from protocol.entry import AddEntry
from protocol.hashing import hash_leaf


def add(i: int) -> AddEntry:
    return AddEntry.create(signal_type="sha256", value=f"{i:064x}", labels=["src:test"])


def leaf_hashes(ledger: Ledger) -> list[bytes]:
    """The stored leaf hashes of the own log: salted, so not computable from the drafts."""
    return [bytes(h) for _i, _d, h in ledger.store.iter_entries(ledger.own_log.log_id)]


def test_finds_each_entry_and_grows_with_the_log(ledger: Ledger) -> None:
    index = LeafHashIndex()
    log_id = ledger.own_log.log_id
    ledger.append([add(i) for i in range(40)])
    leaves = leaf_hashes(ledger)
    for i in (0, 17, 39):
        assert index.find(ledger.store, log_id, leaves[i], 40) == i
        # The unsalted (version 1) encoding of the same entry is not in the log.
        assert index.find(ledger.store, log_id, hash_leaf(add(i).to_bytes()), 40) is None
    assert index.entries_indexed(log_id) == 40
    # Entries past the size asked about are not found, and not indexed.
    ledger.append([add(i) for i in range(40, 50)])
    leaves = leaf_hashes(ledger)
    assert index.find(ledger.store, log_id, leaves[45], 40) is None
    assert index.entries_indexed(log_id) == 40
    assert index.find(ledger.store, log_id, leaves[45], 50) == 45
    assert index.entries_indexed(log_id) == 50


def test_a_hash_listed_again_gets_a_new_leaf_hash(ledger: Ledger) -> None:
    # A hash retracted and listed again is a new entry with a new salt.
    ledger.append([add(1), add(2)])
    ledger.retract(0, "reviewed")
    ledger.append([add(1)])
    size = ledger.latest_checkpoint().size
    leaves = leaf_hashes(ledger)
    assert leaves[0] != leaves[3]
    assert LeafHashIndex().find(ledger.store, ledger.own_log.log_id, leaves[0], size) == 0
    assert LeafHashIndex().find(ledger.store, ledger.own_log.log_id, leaves[3], size) == 3


def test_identical_entries_give_the_first(ledger: Ledger) -> None:
    # A log that holds one entry's bytes twice (version 1 logs could, and a
    # replica stores its origin's bytes verbatim) is answered with the first.
    twice = [add(1).salted("ab" * 16), add(2).salted("cd" * 16), add(1).salted("ab" * 16)]
    datas = [e.to_bytes() for e in twice]
    with ledger.store.transaction():
        run = Integration(ledger.store, ledger.own_log)
        run.store_batch(run.sequence(twice, datas))
    leaf = hash_leaf(datas[0])
    assert [i for i, h in enumerate(leaf_hashes(ledger)) if h == leaf] == [0, 2]
    assert LeafHashIndex().find(ledger.store, ledger.own_log.log_id, leaf, 3) == 0


def test_a_shared_prefix_is_only_a_candidate(ledger: Ledger) -> None:
    ledger.append([add(i) for i in range(5)])
    log_id = ledger.own_log.log_id
    real = leaf_hashes(ledger)[2]
    same_prefix = real[:8] + bytes(b ^ 0xFF for b in real[8:])
    index = LeafHashIndex()
    assert index.find(ledger.store, log_id, same_prefix, 5) is None
    assert index.find(ledger.store, log_id, real, 5) == 2
    with pytest.raises(ValueError, match="32 bytes"):
        index.find(ledger.store, log_id, real[:31], 5)
