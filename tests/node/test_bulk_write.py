"""The bulk write path: multi-row inserts at chunk edges, the paused collector.

Imports and sync chunks write entries, tree nodes and the ``active`` index
in multi-row INSERT statements of a fixed number of rows plus a remainder;
these tests cross every edge of that split with a real SQLite ledger and
check the result against what was written, entry by entry.
"""

from __future__ import annotations

import gc
import io
import json
import threading

import pytest

from node.ledger import Ledger
from node.ledger.gc_pause import bulk_allocation
from node.ledger.hashlist import HashListReader
from node.storage import ledger_store
from node.storage.schema import active_key, active_keys
from protocol.entry import AddEntry, parse_entry
from protocol.hashing import hash_leaf
from protocol.merkle import root_from_leaf_hashes, verify_inclusion
from tests.waiting import PATIENCE


def values(start: int, count: int) -> list[str]:
    return [f"{i:064x}" for i in range(start, start + count)]


@pytest.mark.parametrize("count", [1, 1023, 1024, 1025, 2049])
def test_bulk_import_stores_every_row_at_chunk_edges(ledger: Ledger, count: int) -> None:
    chunk = ledger_store._INSERT_CHUNK
    assert chunk == 1024  # the counts above straddle it
    text = "\n".join(values(7, count)) + "\n"
    reader = HashListReader(fmt="lines", default_type="sha256")
    result = ledger.import_lines(reader.read(io.StringIO(text)))
    assert result.append.count == count
    rows = list(ledger.store.iter_entries(ledger.own_log.log_id))
    assert [i for i, _d, _h in rows] == list(range(count))
    entries = [parse_entry(bytes(d)) for _i, d, _h in rows]
    assert [e.value for e in entries if isinstance(e, AddEntry)] == values(7, count)
    assert all(bytes(h) == hash_leaf(bytes(d)) for _i, d, h in rows)
    root = root_from_leaf_hashes([bytes(h) for *_, h in rows])
    assert ledger.latest_checkpoint().root_hash == root
    # Proofs are built from the stored tree nodes (tiles): they verify.
    for index in {0, count // 2, count - 1}:
        proof = ledger.prove_inclusion(index)
        verify_inclusion(index, count, hash_leaf(bytes(rows[index][1])), proof.hashes, root)
    found = ledger.store.find_active(ledger.own_log.log_id, "sha256", values(7, count))
    assert found == {v: i for i, v in enumerate(values(7, count))}
    # A second import of the same list appends nothing: each is a duplicate.
    again = ledger.import_lines(reader.read(io.StringIO(text)))
    assert again.append.count == 0 and len(again.append.duplicates) == count


def test_add_active_refuses_mismatched_columns(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="2 active keys but 1 indexes"):
        ledger.store.add_active(ledger.own_log.log_id, [1, 2], [0])


def test_bulk_allocation_restores_the_collector() -> None:
    assert gc.isenabled()
    seen: list[bool] = []

    def failing_import() -> None:
        with bulk_allocation():
            seen.append(gc.isenabled())
            raise RuntimeError("a failed import")

    with pytest.raises(RuntimeError):
        failing_import()
    assert seen == [False] and gc.isenabled()
    # Overlapping bulk writes in two threads: on again only after both.
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with bulk_allocation():
            inside.set()
            release.wait(PATIENCE)

    worker = threading.Thread(target=other)
    with bulk_allocation():
        worker.start()
        assert inside.wait(PATIENCE)
    assert not gc.isenabled()  # the other thread's write is still going
    release.set()
    worker.join(PATIENCE)
    assert gc.isenabled()


def test_bulk_allocation_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with bulk_allocation():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


# Values as real lists hold them; ndjson goes through the general path
# (normalise_signal_value), `lines` with --type through the fast one.
RAW_VALUES = [
    "0f" * 16,  # canonical
    "AB" * 16,  # upper case
    "aB" * 16,  # mixed case
    "0xAB" + "cd" * 15,  # prefix and upper case
    "\uff10" * 32,  # fullwidth digits: never folded into hex
    "K" * 32,  # upper-case, but not hex
    "ab" * 15,  # too short
    "ab" * 16 + "zz",  # too long
]


@pytest.mark.parametrize("signal_type", ["md5", "photodna"])
def test_fast_line_path_agrees_with_the_general_path(signal_type: str) -> None:
    lines = "\n".join(RAW_VALUES) + "\n"
    ndjson = "\n".join(json.dumps({"value": v}) for v in RAW_VALUES) + "\n"
    fast = HashListReader(fmt="lines", default_type=signal_type)
    general = HashListReader(fmt="ndjson", default_type=signal_type)
    got = list(fast.read(io.StringIO(lines)))
    want = list(general.read(io.StringIO(ndjson)))
    assert [(p.line, p.entry) for p in got] == [(p.line, p.entry) for p in want]
    assert [p.error for p in got] == [p.error for p in want]
    assert fast.notes == general.notes
    if signal_type == "md5":
        assert sum(p.entry is not None for p in got) == 4
        assert fast.notes["lower-cased hex"] == 3


def test_bulk_active_keys_equal_one_by_one_keys() -> None:
    identities = [("sha256", f"{i:064x}") for i in range(300)]
    identities += [("md5", f"{i:032x}") for i in range(300)] + [("pdq", "f" * 64)]
    assert active_keys(identities) == [active_key(t, v) for t, v in identities]
    assert active_keys([]) == []


def test_find_listed_by_range_scan_finds_what_look_ups_find(ledger: Ledger) -> None:
    listed = values(0, 40)
    reader = HashListReader(fmt="lines", default_type="sha256")
    ledger.import_lines(reader.read(io.StringIO("\n".join(listed) + "\n")))
    log_id = ledger.own_log.log_id
    asked = [("sha256", v) for v in values(30, 200)]
    keys = dict(zip(asked, active_keys(asked), strict=True))
    by_look_up = ledger.store.find_listed(log_id, keys)
    assert by_look_up == {("sha256", v): i for i, v in enumerate(listed) if i >= 30}
    # 40 rows at most against 200 keys: one range scan of the log's rows.
    assert ledger.store.find_listed(log_id, keys, at_most=40) == by_look_up
    assert ledger.store.find_listed(log_id, keys, at_most=0) == {}
    assert ledger.store.find_listed(log_id, keys, at_most=10**9) == by_look_up
