"""Exact look-ups through the mapped ``active`` key file: the same answers as SQLite.

Real nodes on tmp_path (own log and a replica), real files. Every check
compares :func:`match` with the key file against :func:`match` without it
(one seek per hash in the ``active`` table, the reference), in the same
read snapshot of the same database.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.ledger import Ledger
from node.ledger.active_index import (
    ActiveKeyIndex,
    _Rows,
    active_index_path,
    active_persist_due,
    build_active_file,
    check_active_file,
)
from node.ledger.index_files import build_index_files, check_index_files
from node.ledger.matching import ItemResult, MatchQuery, QueryColumns, match
from node.ledger.provision import init_node
from node.storage.segment_file import open_segment
from protocol.entry import AddEntry, RetractEntry
from tests.node.test_matching import replicate

A = "hotline-a.example/hashmesh"
C = "agency-c.example/hashmesh"

POOL = [f"{i:064x}" for i in range(1, 41)]
"""Values added, retracted and added again (sha256 and md5 share none)."""


def _add(value: str, signal_type: str = "sha256") -> AddEntry:
    if signal_type == "md5":
        value = value[-32:]
    return AddEntry.create(signal_type=signal_type, value=value, labels=("t:x",))


def _queries() -> list[tuple[int, MatchQuery]]:
    values = [("sha256", v) for v in POOL] + [("md5", v[-32:]) for v in POOL]
    values += [("sha256", f"{0xFFFF00 + i:064x}") for i in range(5)]  # never listed
    return [(i, MatchQuery(t, v)) for i, (t, v) in enumerate(values)]


def _answers(results: list[ItemResult]) -> list[tuple[int, list[tuple[str, int, str]]]]:
    return [(r.position, [(h.origin, h.index, h.value) for h in r.hits]) for r in results]


def _same(ledger: Ledger, index: ActiveKeyIndex) -> list[tuple[int, list[tuple[str, int, str]]]]:
    """Match with and without the index; assert equal; the answers."""
    queries = _queries()
    want = match(ledger, queries, pdq=None)
    got = match(ledger, queries, pdq=None, exact=index)
    assert got == want
    # Columns (a plain request body) answer the same as query objects.
    columns = QueryColumns([q.signal_type for _p, q in queries], [q.value for _p, q in queries])
    assert match(ledger, columns, pdq=None, exact=index) == want
    return _answers(want)


def _listed_index(ledger: Ledger, value: str, signal_type: str = "sha256") -> int | None:
    if signal_type == "md5":
        value = value[-32:]
    return ledger.store.find_active(ledger.own_log.log_id, signal_type, [value]).get(value)


_STEP = st.one_of(
    st.tuples(st.just("add"), st.lists(st.integers(0, 39), min_size=1, max_size=12), st.booleans()),
    st.tuples(st.just("retract"), st.integers(0, 39), st.booleans()),
    st.tuples(st.just("build"), st.just(0), st.booleans()),
    st.tuples(st.just("replicate"), st.just(0), st.booleans()),
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(_STEP, min_size=3, max_size=14), tail_step=st.sampled_from([3, 1000]))
def test_lookups_equal_the_sqlite_path_through_adds_retractions_re_adds_and_logs(
    steps: list[tuple[str, object, bool]], tail_step: int
) -> None:
    """Any history on two nodes (A authors, C holds its own log and A's replica):
    after every step, exact look-ups with the key file (kept open across steps,
    rebuilt at random points) equal the SQLite path."""
    with tempfile.TemporaryDirectory() as tmp:
        a_dir, c_dir = Path(tmp) / "a", Path(tmp) / "c"
        init_node(a_dir, A)
        init_node(c_dir, C)
        with Ledger.open(a_dir) as a, Ledger.open(c_dir) as c:
            index = ActiveKeyIndex(active_index_path(c_dir), tail_step=tail_step)
            # A file written half way at least: the later steps happen after it.
            half = len(steps) // 2
            steps = [*steps[:half], ("build", 0, False), *steps[half:]]
            for kind, arg, md5 in steps:
                signal_type = "md5" if md5 else "sha256"
                if kind == "add":
                    assert isinstance(arg, list)
                    batch = [_add(POOL[i], signal_type) for i in arg]
                    a.append(batch)
                    c.append(batch[::-1])
                elif kind == "retract":
                    assert isinstance(arg, int)
                    for node in (a, c):
                        at = _listed_index(node, POOL[arg], signal_type)
                        if at is not None:
                            node.append([RetractEntry(index=at, reason="withdrawn")])
                elif kind == "build":
                    build_active_file(c.store, active_index_path(c_dir))
                    assert check_active_file(c.store, active_index_path(c_dir)) is None
                else:
                    replicate(a_dir, c)
                _same(c, index)
            # The file, whenever written, is still consistent with the log.
            assert check_active_file(c.store, active_index_path(c_dir)) is None
            index.close()


@pytest.fixture
def two_logs(tmp_path: Path) -> tuple[Path, Path]:
    a_dir, c_dir = tmp_path / "a", tmp_path / "c"
    init_node(a_dir, A)
    init_node(c_dir, C)
    with Ledger.open(a_dir) as a, Ledger.open(c_dir) as c:
        a.append([_add(v) for v in POOL[:30]])
        c.append([_add(v) for v in POOL[10:40]])
        replicate(a_dir, c)
    return a_dir, c_dir


def test_file_rows_then_retractions_then_re_adds_and_a_replaced_file(
    two_logs: tuple[Path, Path],
) -> None:
    _a_dir, c_dir = two_logs
    path = active_index_path(c_dir)
    with Ledger.open(c_dir) as c:
        assert build_active_file(c.store, path) == 60
        index = ActiveKeyIndex(path)
        before = _same(c, index)
        assert index.base_rows == 60 and index.tail_rows == 0
        assert len([a for a in before if a[1]]) == 40
        # Retracted after the file was written: gone at once.
        at = _listed_index(c, POOL[15])
        assert at is not None
        c.retract(at, "withdrawn")
        after = _same(c, index)
        assert [h for p, h in after if p == 15] == [[(A, 15, POOL[15])]]
        # Listed again: found in the tail, beyond the file.
        c.append([_add(POOL[15])])
        again = _same(c, index)
        assert sorted(h[1] for p, hits in again if p == 15 for h in hits) == [15, 31]
        assert index.tail_rows == 1
        # A new file replaces the old one: mapped at the next batch, tail dropped.
        build_active_file(c.store, path)
        _same(c, index)
        assert index.base_rows == 60 and index.tail_rows == 0
        index.close()


def test_without_a_file_a_large_log_is_answered_by_sqlite_and_a_small_one_from_memory(
    two_logs: tuple[Path, Path],
) -> None:
    _a, c_dir = two_logs
    with Ledger.open(c_dir) as c:
        small = ActiveKeyIndex(active_index_path(c_dir), tail_step=1000)
        _same(c, small)
        assert small.tail_rows == 60  # both logs read into memory
        large = ActiveKeyIndex(active_index_path(c_dir), tail_step=10)
        _same(c, large)
        assert large.tail_rows == 0  # SQLite: nothing read into memory


@pytest.mark.parametrize("how", ["header", "block", "truncated", "empty", "stale"])
def test_a_damaged_truncated_or_stale_file_is_never_used(
    two_logs: tuple[Path, Path], tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    _a_dir, c_dir = two_logs
    path = active_index_path(c_dir)
    with Ledger.open(c_dir) as c:
        build_active_file(c.store, path)
    if how == "stale":
        # Another node's file whose log ids are the same but whose entries are not.
        other = tmp_path / "other"
        init_node(other, C)
        with Ledger.open(other) as o:
            o.append([_add(v) for v in POOL])
            build_active_file(o.store, active_index_path(other))
        shutil.copy(active_index_path(other), path)
    else:
        segment = open_segment(path, "active-keys")
        keys_at = segment._infos["keys"].offset
        segment.close()
        data = bytearray(path.read_bytes())
        if how == "header":
            data[40] ^= 1
        elif how == "block":
            data[keys_at + 8] ^= 0x10  # inside the keys: only the block's CRC can tell
        elif how == "truncated":
            data = data[:-4096]
        else:
            data = bytearray()
        path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="hashmesh.index"), Ledger.open(c_dir) as c:
        index = ActiveKeyIndex(path, tail_step=1000)
        _same(c, index)
        assert index.base_rows == 0
        problem = check_active_file(c.store, path)
        assert problem is not None and str(path) in problem
        findings = check_index_files(c.store, c.index_directory, 50, C)
        assert [f.detail for f in findings if "active" in f.detail] == [problem]
    (record,) = [r for r in caplog.records if "active key index file not used" in r.getMessage()]
    assert str(path) in record.getMessage()
    # fsck --repair / index build writes a good one, which is used again.
    with Ledger.open(c_dir) as c:
        build_index_files(c.store, c.index_directory, 50)
        assert check_active_file(c.store, path) is None
        index = ActiveKeyIndex(path)
        _same(c, index)
        assert index.base_rows == 60


def test_fsck_finds_a_file_that_lacks_a_listed_row_or_holds_a_stray_one(
    two_logs: tuple[Path, Path],
) -> None:
    _a, c_dir = two_logs
    path = active_index_path(c_dir)
    with Ledger.open(c_dir) as c:
        build_active_file(c.store, path)
        own = c.own_log.log_id
        # A listed row goes missing from the table: the file now holds a stray row.
        with c.store.transaction():
            c.store.conn.execute("DELETE FROM active WHERE log_id = ? AND idx = 3", (own,))
        problem = check_active_file(c.store, path)
        assert problem is not None and "entry 3 of log" in problem and "neither listed" in problem
        # Rebuilt from that table, the file lacks nothing the table has...
        build_active_file(c.store, path)
        assert check_active_file(c.store, path) is None
        # ...until the table gains a row below what the file covers.
        with c.store.transaction():
            c.store.conn.execute(
                "INSERT INTO active (log_id, key, idx) VALUES (?, 12345, 3)", (own,)
            )
        problem = check_active_file(c.store, path)
        assert problem is not None and "lacks the active row of entry 3" in problem


def test_persist_is_due_without_a_file_past_the_minimum_and_when_far_behind(
    two_logs: tuple[Path, Path],
) -> None:
    _a, c_dir = two_logs
    path = active_index_path(c_dir)
    with Ledger.open(c_dir) as c:
        assert not active_persist_due(c.store, path, min_entries=100)
        assert active_persist_due(c.store, path, min_entries=60)
        build_active_file(c.store, path)
        assert not active_persist_due(c.store, path, min_entries=1)
        c.append([_add(POOL[0]), _add(POOL[1])])  # 2 entries beyond 60 rows: < 1/8
        assert not active_persist_due(c.store, path, min_entries=1)
        c.append([_add(v, "md5") for v in POOL[:8]])
        assert active_persist_due(c.store, path, min_entries=1)
        os.truncate(path, 100)
        assert active_persist_due(c.store, path, min_entries=10**9)


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.integers(-8, 8), max_size=300),
    queries=st.lists(st.integers(-10, 10), max_size=40),
)
def test_the_fenced_search_finds_every_row_of_every_key(
    keys: list[int], queries: list[int]
) -> None:
    """Against a plain scan, with few distinct keys (long runs cross the fences)."""
    rng = random.Random(len(keys))
    logs = np.array([rng.randrange(3) for _ in keys], dtype=np.int64)
    order = np.argsort(np.array(keys, dtype=np.int64), kind="stable")
    rows = _Rows(np.array(keys, dtype=np.int64)[order], logs[order], order.astype(np.int64))
    wanted = np.sort(np.array(queries, dtype=np.int64))
    found = rows.find(wanted)
    expect = sorted(
        (p, int(rows.logs[r]), int(rows.keys[r]), int(rows.indexes[r]))
        for p, q in enumerate(wanted.tolist())
        for r in range(len(keys))
        if int(rows.keys[r]) == q
    )
    assert sorted(map(tuple, found.tolist())) == expect
