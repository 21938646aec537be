"""The persisted PDQ index: a mapped base segment plus a tail, on real node directories.

Every search is compared with a brute-force scan of the ``pdq`` table, so a
base that is used when it should not be (stale, damaged) or rows read twice
show up as wrong answers, not only as log lines.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from node.errors import IndexPendingError
from node.ledger import Ledger
from node.ledger.live_pdq import (
    ID_SHIFT,
    LivePdqIndex,
    check_pdq_file,
    node_pdq_index,
    open_pdq_index,
    pdq_index_path,
)
from node.ledger.pdq_index import LAYOUT, SortedHashes, hashes_to_words
from node.ledger.provision import init_node
from node.storage.segment_file import SegmentError, open_segment, write_segment
from protocol.entry import AddEntry

ORIGIN = "hotline.example/hashmesh"


def _value(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def _values(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [_value(rng) for _ in range(n)]


def _near(value: str, bits: int, rng: random.Random) -> str:
    n = int(value, 16)
    for b in rng.sample(range(256), bits):
        n ^= 1 << b
    return f"{n:064x}"


def _add(ledger: Ledger, values: list[str], quality: int = 90) -> None:
    ledger.append(
        [
            AddEntry.create(signal_type="pdq", value=v, labels=("t:x",), quality=quality)
            for v in values
        ]
    )


def _brute(
    ledger: Ledger, query: str, distance: int, min_quality: int = 50
) -> list[tuple[int, int]]:
    """Every (row id, distance) the index must return, from the table itself."""
    rows = ledger.store.conn.execute(
        "SELECT p.log_id, p.idx, p.hash, json_extract(CAST(e.data AS TEXT), '$.signal.quality') "
        "FROM pdq AS p JOIN entries AS e ON e.log_id = p.log_id AND e.idx = p.idx"
    ).fetchall()
    q = int(query, 16)
    found = []
    for log_id, idx, h, quality in rows:
        d = bin(int.from_bytes(h, "big") ^ q).count("1")
        if d <= (distance if quality >= min_quality else 0):
            found.append(((log_id << ID_SHIFT) | idx, d))
    return sorted(found, key=lambda pair: (pair[1], pair[0]))


def _check(index: LivePdqIndex, ledger: Ledger, queries: list[str]) -> None:
    got = index.search_many([bytes.fromhex(q) for q in queries], 31)
    for query, pairs in zip(queries, got, strict=True):
        assert pairs == _brute(ledger, query, 31), query


@pytest.fixture
def node(tmp_path: Path) -> Path:
    init_node(tmp_path / "n", ORIGIN)
    return tmp_path / "n"


def _fill(node: Path, seed: int, n: int = 300) -> list[str]:
    rng = random.Random(seed)
    values = [_value(rng) for _ in range(n)]
    with Ledger.open(node) as ledger:
        _add(ledger, values)
        # Near-degenerate, below the floor: found only exactly.
        low = [
            "0" * 64,
            "0" * 63 + "1",
            "0" * 63 + "2",
            "0" * 62 + "10",
            "8" + "0" * 63,
            "0" * 63 + "3",
        ]
        _add(ledger, low, quality=10)
    return values


def _queries(values: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    return (
        [_near(v, rng.randrange(0, 40), rng) for v in values[:40]]
        + ["0" * 64, "0" * 63 + "1", "0" * 62 + "11"]
        + [_value(rng) for _ in range(5)]
    )


def test_persisted_base_is_mapped_at_open_and_only_new_rows_are_read(node: Path) -> None:
    values = _fill(node, 1)
    with Ledger.open(node) as ledger:
        writer = open_pdq_index(ledger, writable=True)
        assert writer.base_rows == 0 and writer.tail_rows == 306
        assert writer.persist(ledger.store)
        assert writer.base_rows == 306 and writer.tail_rows == 0
        # The listed hashes stay as private as the database.
        assert pdq_index_path(node).stat().st_mode & 0o777 == 0o600
        assert pdq_index_path(node).parent.stat().st_mode & 0o777 == 0o700
        _check(writer, ledger, _queries(values, 2))
        more = _values(3, 7)
        _add(ledger, more)
        assert writer.refresh(ledger) == 7
        _check(writer, ledger, _queries(values + more, 4))
    with Ledger.open(node, read_only=True) as ledger:
        reader = open_pdq_index(ledger)
        # The base came from the file; only the 7 rows beyond it from SQLite.
        assert reader.base_rows == 306 and reader.tail_rows == 7
        assert reader.segment is not None and reader.verify() is None
        _check(reader, ledger, _queries(values + more, 5))
        reader.close()
        writer.close()


def _reader(ledger: Ledger, read_max: int) -> LivePdqIndex:
    reader = node_pdq_index(ledger)
    reader.read_max = read_max
    return reader


def _writer_due(node: Path, read_max: int) -> bool:
    """Whether ``serve``'s index (same ``read_max``) would write a new base now."""
    with Ledger.open(node) as ledger:
        writer = open_pdq_index(ledger, writable=True)
        writer.read_max = read_max
        due = writer.persist_due()
        writer.close()
    return due


def test_a_reader_waits_for_the_servers_file_instead_of_reading_a_large_table(
    node: Path,
) -> None:
    values = _fill(node, 21)  # 306 rows, no file
    with Ledger.open(node, read_only=True) as ledger:
        reader = _reader(ledger, 100)
        with pytest.raises(IndexPendingError, match="PDQ index is being built") as caught:
            reader.refresh(ledger)
        assert caught.value.retry_after > 0
        assert len(reader) == 0  # nothing was read
        with pytest.raises(IndexPendingError):  # still waiting: the file is not there
            reader.refresh(ledger)
        # What serve does meanwhile: read every row and write the base.
        assert _writer_due(node, 100)
        with Ledger.open(node) as writable:
            writer = open_pdq_index(writable, writable=True)
            writer.read_max = 100
            assert writer.readers_wait()
            assert writer.persist(writable.store) and not writer.readers_wait()
            writer.close()
        # The new file is noticed at once, mapped, and nothing is read.
        assert reader.refresh(ledger) == 0
        assert reader.base_rows == 306 and reader.tail_rows == 0
        _check(reader, ledger, _queries(values, 22))
        reader.close()


@pytest.mark.parametrize(
    ("added", "read_max"),
    [(60, 100), (150, 100), (150, 150), (60, 10)],
    ids=["few", "more-than-read-max", "exactly-read-max", "under-a-quarter-of-the-base"],
)
def test_a_reader_waits_exactly_when_serve_writes_a_new_base(
    node: Path, added: int, read_max: int
) -> None:
    values = _fill(node, 23)
    with Ledger.open(node) as ledger:
        ledger.build_index_files()  # a base of 306 rows
        more = _values(24, added)
        _add(ledger, more)
    due = _writer_due(node, read_max)
    with Ledger.open(node, read_only=True) as ledger:
        reader = _reader(ledger, read_max)
        try:
            reader.refresh(ledger)
        except IndexPendingError:
            assert due, "a reader waits for a base that serve will not write"
            assert reader.tail_rows == 0
        else:
            # Rows beyond the base it reads itself, unless serve rewrites it:
            # 60 of 306 is under a quarter (serve keeps the base); 150 is not.
            assert not due or added <= read_max
            assert reader.base_rows == 306 and reader.tail_rows == added
            _check(reader, ledger, _queries(values + more, 25))
        reader.close()
    assert due == (added > read_max and added * 4 >= 306)


def test_a_reader_switches_to_a_replaced_base_without_reading_rows_twice(node: Path) -> None:
    values = _fill(node, 6)
    with Ledger.open(node) as ledger, Ledger.open(node, read_only=True) as ro:
        writer = open_pdq_index(ledger, writable=True)
        writer.persist(ledger.store)
        reader = open_pdq_index(ro)
        first = reader.segment
        assert first is not None
        more = _values(7, 20)
        _add(ledger, more)
        assert reader.refresh(ro) == 20 and reader.tail_rows == 20
        writer.refresh(ledger)
        writer.persist(ledger.store)
        # The reader learns of the new file at its next refresh, by its identity.
        assert reader.refresh(ro) == 0
        assert reader.segment is not None and reader.segment.identity != first.identity
        assert reader.base_rows == 326 and reader.tail_rows == 0
        _check(reader, ro, _queries(values + more, 8))
        assert len(reader) == 326
        # A writer that finds the file damaged removes it: readers stop using
        # their mapping at their next refresh and read the table instead.
        writer.drop_base("test: a block failed its checksum")
        assert not pdq_index_path(node).exists()
        assert reader.refresh(ro) == 326 and reader.base_rows == 0
        _check(reader, ro, _queries(values + more, 9))


def _damage(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


@pytest.mark.parametrize("how", ["header", "truncated", "magic", "empty"])
def test_a_damaged_index_file_is_never_used_and_is_rebuilt(
    node: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    values = _fill(node, 9)
    path = pdq_index_path(node)
    with Ledger.open(node) as ledger:
        open_pdq_index(ledger, writable=True).persist(ledger.store)
    size = path.stat().st_size
    if how == "header":
        _damage(path, 40, b"#")
    elif how == "truncated":
        os.truncate(path, size - 4096)
    elif how == "magic":
        _damage(path, 0, b"XXXX")
    else:
        os.truncate(path, 0)
    with pytest.raises(SegmentError):
        open_segment(path, "pdq-index")
    with caplog.at_level(logging.WARNING, logger="hashmesh.index"), Ledger.open(node) as ledger:
        index = open_pdq_index(ledger, writable=True)
        assert index.base_rows == 0 and index.tail_rows == 306
        _check(index, ledger, _queries(values, 10))
        assert not path.exists()  # the writer removed it; the next persist writes a good one
        assert index.persist(ledger.store) and index.verify() is None
    (record,) = [r for r in caplog.records if "not used" in r.getMessage()]
    assert str(path) in record.getMessage() and "rebuilding from the log" in record.getMessage()


def test_a_flipped_byte_deep_in_the_file_is_found_by_verify_and_the_base_dropped(
    node: Path, caplog: pytest.LogCaptureFixture
) -> None:
    values = _fill(node, 11)
    path = pdq_index_path(node)
    with Ledger.open(node) as ledger:
        open_pdq_index(ledger, writable=True).persist(ledger.store)
    segment = open_segment(path, "pdq-index")
    words = segment.array("near.words")
    # A flipped bit in a stored hash: a wrong distance, a missed match.
    at = int(words.__array_interface__["data"][0]) - _base_address(segment)
    segment.close()
    with open(path, "r+b") as f:
        f.seek(at + 3)
        byte = f.read(1)
        f.seek(at + 3)
        f.write(bytes([byte[0] ^ 0x40]))
    with caplog.at_level(logging.WARNING, logger="hashmesh.index"), Ledger.open(node) as ledger:
        index = open_pdq_index(ledger, writable=True)
        assert index.base_rows == 306  # the open checks only what is cheap at any size
        problem = index.verify()
        assert problem is not None and "'near.words' block 0" in problem
        index.drop_base(problem)
        assert index.base_rows == 0 and not path.exists()
        assert index.refresh(ledger) == 306
        _check(index, ledger, _queries(values, 12))
    assert any("fails its checksum" in r.getMessage() for r in caplog.records)


def _base_address(segment: object) -> int:
    """Address of the first byte of a segment's mapping (to find an array's file offset)."""
    mapping = segment._mapping  # type: ignore[attr-defined]
    view = np.frombuffer(mapping, dtype=np.uint8, count=1)
    return int(view.__array_interface__["data"][0])


def test_a_stale_index_file_is_not_used(node: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(13)
    with Ledger.open(node) as ledger:
        _add(ledger, [_value(rng) for _ in range(50)])
    backup = node.parent / "backup.db"
    shutil.copy(node / "ledger.db", backup)
    with Ledger.open(node) as ledger:
        _add(ledger, [_value(rng) for _ in range(50)])
        open_pdq_index(ledger, writable=True).persist(ledger.store)
    saved = pdq_index_path(node).read_bytes()
    # The database goes back to a copy made before the last 50 rows (a
    # restored backup): the file covers entries the log no longer has.
    shutil.copy(backup, node / "ledger.db")
    for suffix in ("-wal", "-shm"):
        (node / f"ledger.db{suffix}").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="hashmesh.index"), Ledger.open(node) as ledger:
        index = open_pdq_index(ledger)
        assert index.base_rows == 0 and index.tail_rows == 50
        assert pdq_index_path(node).exists()  # a read-only opener never removes it
        # Then the log grows again, differently: same size, other entries.
        other = [_value(rng) for _ in range(50)]
        _add(ledger, other)
        index = open_pdq_index(ledger)
        assert index.base_rows == 0 and index.tail_rows == 100
        _check(index, ledger, _queries(other, 14))
    stale = [r.getMessage() for r in caplog.records if "stale" in r.getMessage()]
    assert len(stale) == 2 and all(f"of {ORIGIN} is not the one it indexed" in m for m in stale)
    # The quality floor is part of what a file was built for.
    pdq_index_path(node).write_bytes(saved)
    with Ledger.open(node) as ledger:
        index = LivePdqIndex(60, path=pdq_index_path(node))
        assert not index.attach(ledger)


def test_an_index_file_of_an_older_layout_is_rebuilt_never_misread(
    node: Path, caplog: pytest.LogCaptureFixture
) -> None:
    values = _fill(node, 17)
    path = pdq_index_path(node)
    with Ledger.open(node) as ledger:
        open_pdq_index(ledger, writable=True).persist(ledger.store)
    # The same rows as a version before LAYOUT 2 wrote them: no "layout" in
    # the header, a dense offset array per chunk instead of the bitmap.
    segment = open_segment(path, "pdq-index")
    meta = {k: v for k, v in segment.meta.items() if k != "layout"}
    arrays = {name: np.array(segment.array(name)) for name in segment.names()}
    segment.close()
    for name in ("near.present", "near.rank", "near.starts"):
        del arrays[name]
    arrays["near.dir"] = np.zeros((11, (1 << 10) + 1), dtype=np.int32)
    write_segment(path, "pdq-index", meta, arrays)
    with Ledger.open(node) as ledger:
        problem = check_pdq_file(ledger.store, path, 50)
        assert problem is not None and f"index layout 1, this program's is {LAYOUT}" in problem
        with caplog.at_level(logging.WARNING, logger="hashmesh.index"):
            index = open_pdq_index(ledger, writable=True)
        assert index.base_rows == 0 and index.tail_rows == 306
        _check(index, ledger, _queries(values, 18))
        assert not path.exists()
        assert index.persist(ledger.store)
        assert check_pdq_file(ledger.store, path, 50) is None
        assert open_segment(path, "pdq-index").meta["layout"] == LAYOUT
    (message,) = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert "rebuilding from the log" in message and "index layout 1" in message


_CRASH = """
import sys
from pathlib import Path
from node.ledger import Ledger
from node.ledger.live_pdq import open_pdq_index

def stop(temp: Path) -> None:
    print(temp, flush=True)
    sys.stdin.read()  # killed here, the new file complete but not renamed

with Ledger.open(Path(sys.argv[1])) as ledger:
    index = open_pdq_index(ledger, writable=True)
    index.persist(ledger.store, before_rename=stop)
"""


def test_a_writer_killed_while_persisting_leaves_the_old_file_in_use(node: Path) -> None:
    values = _fill(node, 15)
    with Ledger.open(node) as ledger:
        open_pdq_index(ledger, writable=True).persist(ledger.store)
        more = _values(16, 30)
        _add(ledger, more)
    before = pdq_index_path(node).read_bytes()
    with subprocess.Popen(
        [sys.executable, "-c", _CRASH, str(node)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        temp = Path(child.stdout.readline().strip())
        assert temp.exists() and temp.parent == pdq_index_path(node).parent
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert pdq_index_path(node).read_bytes() == before
    with Ledger.open(node) as ledger:
        index = open_pdq_index(ledger, writable=True)
        assert not temp.exists()  # the dead writer's temporary file is removed
        assert index.base_rows == 306 and index.tail_rows == 30
        _check(index, ledger, _queries(values + more, 17))


def test_sorted_hashes_find_every_copy_of_a_hash_by_id() -> None:
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 256, size=(2000, 32), dtype=np.uint8)
    hashes[::3] = 0  # a third all-zero, as near-degenerate lists are
    hashes[1::7, :31] = 0  # and others sharing every word but the last
    ids = rng.permutation(5000)[:2000].astype(np.int64)
    table = SortedHashes.build(ids, hashes_to_words(hashes))
    queries = [bytes(h) for h in hashes[:50]] + [bytes(32), bytes(31) + b"\x07", b"\xff" * 32]
    for query, pairs in zip(queries, table.search_many(queries), strict=True):
        expected = sorted(int(i) for i, h in zip(ids, hashes, strict=True) if bytes(h) == query)
        assert pairs == [(i, 0) for i in expected]
    (capped,) = table.search_many([bytes(32)], limit=10)
    zero_ids = sorted(int(i) for i, h in zip(ids, hashes, strict=True) if not h.any())
    assert capped == [(i, 0) for i in zero_ids[:10]]
    again = SortedHashes.from_arrays(table.to_arrays())
    assert again.search_many(queries) == table.search_many(queries)
