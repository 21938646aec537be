"""The two levels of ``active`` (schema version 7): merges change no answer.

Real nodes on tmp_path, real SQLite files. The reference is a node with the
same history that never merges: every row stays in ``active``, which is how
a single-table node (schema version 6) behaved.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.errors import StorageError
from node.ledger import Ledger, active_levels
from node.ledger.active_index import ActiveKeyIndex, active_index_path, build_active_file
from node.ledger.active_levels import merge_active, merge_active_if_due
from node.ledger.fsck import check_log
from node.ledger.hashlist import HashListReader
from node.ledger.matching import MatchQuery, match
from node.ledger.provision import init_node
from node.storage.schema import migrate
from protocol.entry import AddEntry
from tests.node.test_matching import replicate

A = "hotline-a.example/hashmesh"
C = "agency-c.example/hashmesh"

POOL = [f"{i:064x}" for i in range(1, 31)]
"""Values added, retracted and added again."""


def _add(i: int, label: str = "t:x") -> AddEntry:
    return AddEntry.create(signal_type="sha256", value=POOL[i], labels=(label,))


def _levels(ledger: Ledger) -> tuple[int, int]:
    conn = ledger.store.conn
    return (
        int(conn.execute("SELECT count(*) FROM active").fetchone()[0]),
        int(conn.execute("SELECT count(*) FROM active_base").fetchone()[0]),
    )


def _observed(ledger: Ledger, node_dir: Path) -> dict[str, object]:
    """Everything a reader of the listed set can see, for comparison between nodes."""
    queries = [(i, MatchQuery("sha256", v)) for i, v in enumerate(POOL)]
    answers = [
        (r.position, sorted((h.origin, h.index, h.value) for h in r.hits))
        for r in match(ledger, queries, pdq=None)
    ]
    build_active_file(ledger.store, active_index_path(node_dir))
    index = ActiveKeyIndex(active_index_path(node_dir))
    try:
        from_file = [
            (r.position, sorted((h.origin, h.index, h.value) for h in r.hits))
            for r in match(ledger, queries, pdq=None, exact=index)
        ]
    finally:
        index.close()
    assert from_file == answers
    logs = {log.origin: log.log_id for log in ledger.store.list_logs()}
    listed = {
        origin: ledger.store.find_active(log_id, "sha256", POOL) for origin, log_id in logs.items()
    }
    counts = {origin: ledger.store.active_counts(log_id) for origin, log_id in logs.items()}
    view = sorted(
        (str(o), int(i), str(v))
        for o, i, v in ledger.store.conn.execute(
            "SELECT l.origin, s.idx, s.value FROM listed AS s JOIN logs AS l USING (log_id)"
        )
    )
    findings = [
        f for log in ledger.store.list_logs() for f in check_log(ledger.store, log).findings
    ]
    assert findings == [], findings
    return {"answers": answers, "listed": listed, "counts": counts, "view": view}


_STEP = st.one_of(
    st.tuples(st.just("add"), st.lists(st.integers(0, 29), min_size=1, max_size=10)),
    st.tuples(st.just("retract"), st.integers(0, 29)),
    st.tuples(st.just("merge"), st.integers(1, 7)),
    st.tuples(st.just("replicate"), st.just(0)),
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(_STEP, min_size=4, max_size=16))
def test_merges_at_random_points_change_no_answer(steps: list[tuple[str, object]]) -> None:
    """Adds, duplicate adds, retractions and re-adds on node C (own log and A's
    replica), merged at random points in chunks of random size, against node R
    with the same history never merged and a model of what is listed: equal
    matches (SQLite and key-file paths), find_active, counts, the ``listed``
    view; fsck clean on both."""
    with tempfile.TemporaryDirectory() as tmp:
        a_dir, c_dir, r_dir = Path(tmp) / "a", Path(tmp) / "c", Path(tmp) / "r"
        init_node(a_dir, A)
        init_node(c_dir, C)
        init_node(r_dir, C)
        model: dict[int, int] = {}  # pool position -> index of C's listing add
        merged_any = False
        with Ledger.open(a_dir) as a, Ledger.open(c_dir) as c, Ledger.open(r_dir) as r:
            for kind, arg in steps:
                if kind == "add":
                    assert isinstance(arg, list)
                    a.append([_add(i) for i in arg])
                    size = c.latest_checkpoint().size
                    results = [node.append([_add(i) for i in arg]) for node in (c, r)]
                    assert results[0].count == results[1].count
                    for i in arg:
                        if i not in model:
                            model[i] = size
                            size += 1
                    assert c.latest_checkpoint().size == size
                elif kind == "retract":
                    assert isinstance(arg, int)
                    if arg in model:
                        for node in (c, r):
                            node.retract(model[arg], "withdrawn")
                        del model[arg]
                    at = a.store.find_active(a.own_log.log_id, "sha256", [POOL[arg]]).get(POOL[arg])
                    if at is not None:
                        a.retract(at, "withdrawn")
                elif kind == "merge":
                    assert isinstance(arg, int)
                    merged = merge_active(c.store, chunk_rows=arg)
                    merged_any = merged_any or merged.rows > 0
                    assert _levels(c)[0] == 0
                else:
                    replicate(a_dir, c)
                    replicate(a_dir, r)
                own = c.store.find_active(c.own_log.log_id, "sha256", POOL)
                assert own == {POOL[i]: idx for i, idx in model.items()}
                assert _observed(c, c_dir) == _observed(r, r_dir)
            assert _levels(r)[1] == 0  # the reference never merged
            if merged_any:
                assert _levels(c)[1] > 0


def test_an_import_merges_when_due_and_finds_duplicates_in_both_levels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(active_levels, "MERGE_MIN_ROWS", 10)
    node = tmp_path / "node"
    init_node(node, C)
    first = tmp_path / "first.txt"
    first.write_text("".join(f"{v}\n" for v in POOL[:12]))
    with Ledger.open(node) as c:
        reader = HashListReader(fmt="lines", default_type="sha256")
        result = c.import_lines(reader.read(first.read_text().splitlines(keepends=True)))
        assert result.append.count == 12
        assert _levels(c) == (0, 12)  # 12 rows > 10: merged at the end of the import
        second = tmp_path / "second.txt"
        second.write_text("".join(f"{v}\n" for v in POOL[6:18]))
        again = c.import_lines(reader.read(second.read_text().splitlines(keepends=True)))
        # The six already listed are in the base level: still duplicates.
        assert again.append.count == 6
        assert sorted(d.existing_index for d in again.append.duplicates) == list(range(6, 12))
        assert _levels(c) == (6, 12)  # 6 <= 10: not due
        assert merge_active_if_due(c.store) is None
        c.retract(7, "withdrawn")  # a merged row
        c.retract(13, "withdrawn")  # an unmerged one
        assert _levels(c) == (5, 11)
        listed = c.store.find_active(c.own_log.log_id, "sha256", POOL)
        assert POOL[7] not in listed and POOL[13] not in listed and len(listed) == 16
        c.append([_add(7)])  # listed again: a new row in the small level
        assert c.store.find_active(c.own_log.log_id, "sha256", [POOL[7]]) == {POOL[7]: 20}
        assert all(not check_log(c.store, log).findings for log in c.store.list_logs())


def _back_to_v6(node: Path) -> None:
    """Make a node's database what version 6 had: one ``active`` table, the version 3 view."""
    conn = sqlite3.connect(node / "ledger.db", isolation_level=None)
    conn.execute("DROP VIEW listed")
    conn.execute("DROP TABLE active_base")
    conn.execute(
        "CREATE VIEW listed AS SELECT a.log_id AS log_id, a.idx AS idx, "
        "json_extract(e.data, '$.signal.type') AS signal_type, "
        "json_extract(e.data, '$.signal.value') AS value, "
        "json_extract(e.data, '$.labels') AS labels "
        "FROM active AS a JOIN entries AS e ON e.log_id = a.log_id AND e.idx = a.idx"
    )
    conn.execute("PRAGMA user_version = 6")
    conn.close()


def test_a_read_only_open_of_a_version_6_node_upgrades_it_first(tmp_path: Path) -> None:
    node = tmp_path / "node"
    init_node(node, C)
    with Ledger.open(node) as c:
        c.append([_add(i) for i in range(5)])
    _back_to_v6(node)
    with Ledger.open(node, read_only=True) as c:
        found = match(c, [(i, MatchQuery("sha256", v)) for i, v in enumerate(POOL)], pdq=None)
        assert sorted(r.position for r in found) == [0, 1, 2, 3, 4]
        assert c.store.conn.execute("PRAGMA user_version").fetchone()[0] == 7
        assert _levels(c) == (0, 5)


def test_a_version_6_node_opens_with_every_row_in_the_base_level(tmp_path: Path) -> None:
    """The migration renames and creates: no row moves, every hash still matches."""
    node = tmp_path / "node"
    init_node(node, C)
    with Ledger.open(node) as c:
        c.append([_add(i) for i in range(20)])
        c.retract(4, "withdrawn")
    _back_to_v6(node)
    conn = sqlite3.connect(node / "ledger.db", isolation_level=None)
    migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 7
    conn.close()
    with Ledger.open(node) as c:
        assert _levels(c) == (0, 19)
        found = match(c, [(i, MatchQuery("sha256", v)) for i, v in enumerate(POOL)], pdq=None)
        assert sorted(r.position for r in found if r.hits) == [i for i in range(20) if i != 4]
        assert c.store.active_counts(c.own_log.log_id)[0] == {"sha256": 19}
        assert c.append([_add(3), _add(25)]).count == 1
        assert all(not check_log(c.store, log).findings for log in c.store.list_logs())


_MERGER = """
import sys
from pathlib import Path
from node.ledger import Ledger
from node.ledger.active_levels import merge_active

with Ledger.open(Path(sys.argv[1])) as ledger:
    merge_active(
        ledger.store,
        chunk_rows=int(sys.argv[2]),
        progress=lambda rows: (sys.stdout.write(f"{rows}\\n"), sys.stdout.flush()),
    )
    sys.stdout.write("done\\n")
"""


@pytest.mark.parametrize("after_chunks", [0, 1, 3, 7])
def test_a_merge_killed_at_any_point_loses_and_doubles_nothing(
    tmp_path: Path, after_chunks: int
) -> None:
    """The merging process is SIGKILLed after some committed chunks (and in
    the middle of the next); after restart every listed hash matches once,
    fsck is clean, and a second merge finishes the move."""
    node = tmp_path / "node"
    init_node(node, C)
    values = [f"{i:064x}" for i in range(1, 4001)]
    with Ledger.open(node) as c:
        c.append([AddEntry.create(signal_type="sha256", value=v, labels=()) for v in values])
        for i in range(0, 4000, 97):
            c.retract(i, "withdrawn")
        listed = set(range(4000)) - set(range(0, 4000, 97))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", _MERGER, str(node), "37"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    for _ in range(after_chunks):
        assert child.stdout.readline().strip().isdigit()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    child.stdout.close()
    with Ledger.open(node) as c:
        unmerged, merged = _levels(c)
        assert unmerged + merged == len(listed)
        assert merged >= 37 * after_chunks
        queries = [(i, MatchQuery("sha256", v)) for i, v in enumerate(values)]
        found = match(c, queries, pdq=None)
        assert sorted(r.position for r in found) == sorted(listed)
        assert all(len(r.hits) == 1 for r in found)
        assert all(not check_log(c.store, log).findings for log in c.store.list_logs())
        merge_active(c.store, chunk_rows=500)
        assert _levels(c) == (0, len(listed))
        assert sorted(r.position for r in match(c, queries, pdq=None)) == sorted(listed)


def test_a_row_in_both_levels_stops_the_merge_whole_and_fsck_names_it(tmp_path: Path) -> None:
    node = tmp_path / "node"
    init_node(node, C)
    with Ledger.open(node) as c:
        c.append([_add(i) for i in range(10)])
        log_id = c.own_log.log_id
        # Damage: entry 3's row copied into the base level as well.
        c.store.conn.execute(
            "INSERT INTO active_base SELECT * FROM active WHERE log_id = ? AND idx = 3", (log_id,)
        )
        with pytest.raises(StorageError):
            merge_active(c.store, chunk_rows=100)
        assert _levels(c) == (10, 1)  # the chunk rolled back whole: nothing moved
        assert c.store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        findings = check_log(c.store, c.own_log).findings
        assert [f.index for f in findings] == [3]
        assert "twice" in findings[0].detail
        with c.store.transaction(), pytest.raises(StorageError, match="of its own"):
            c.store.merge_active_rows(1)
