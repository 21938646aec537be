"""The serving process and the PDQ index file: written in the background, checked, dropped."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from node.api.match import keep_current, match_service, verify_index_files
from node.ledger import Ledger, active_index
from node.ledger.active_index import active_index_path, check_active_file
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.leaf_index import LeafHashIndex
from node.ledger.live_pdq import pdq_index_path
from node.ledger.matching import MatchQuery, match
from node.ledger.provision import init_node
from node.storage.segment_file import open_segment
from protocol.entry import AddEntry
from tests.waiting import eventually

ORIGIN = "serve-index.example/hashmesh"


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "n"
    init_node(path, ORIGIN)
    rng = random.Random(21)
    values = [f"{rng.getrandbits(256):064x}" for _ in range(60)]
    with Ledger.open(path) as ledger:
        ledger.append([AddEntry.create(signal_type="pdq", value=v, quality=80) for v in values])
    return path, values


async def _hits(db: Database, value: str) -> list[int]:
    pdq = match_service(db).pdq

    def run(ledger: Ledger) -> list[int]:
        results = match(ledger, [(0, MatchQuery("pdq", value))], pdq=pdq)
        return [h.index for r in results for h in r.hits]

    return await db.read(run)


async def test_serve_writes_the_file_in_the_background_and_maps_it(
    node: tuple[Path, list[str]],
) -> None:
    path, values = node
    db = await Database.open(path, readers=1)
    hub = CheckpointHub()
    service = match_service(db)
    service.pdq.persist_min = 10
    task = asyncio.create_task(keep_current(db, hub))
    try:
        await eventually(
            lambda: service.pdq.base_rows, until=lambda n: n == 60, what="a base written"
        )
        assert service.pdq.tail_rows == 0 and pdq_index_path(path).exists()
        assert await _hits(db, values[9]) == [9]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()
    # The next start maps it and reads nothing from the table.
    db = await Database.open(path, readers=1)
    try:
        service = match_service(db)
        assert await service.ensure_current() == 0
        assert service.pdq.base_rows == 60 and await _hits(db, values[33]) == [33]
    finally:
        await db.close()


def _flip_in_place(path: Path, needle: bytes) -> None:
    """Flip one bit of ``needle`` in the file, in place: a process mapping the file sees it,
    as it would see bit rot of the page cache or the disk."""
    data = path.read_bytes()
    at = data.index(needle)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(bytes([data[at] ^ 0x01]))


async def test_a_block_damaged_under_a_running_server_is_found_and_dropped(
    node: tuple[Path, list[str]],
) -> None:
    path, values = node
    with Ledger.open(path) as ledger:
        ledger.build_index_files()
    db = await Database.open(path, readers=1)
    try:
        service = match_service(db)
        service.writable = True
        await service.ensure_current()
        assert service.pdq.base_rows == 60
        segment = open_segment(pdq_index_path(path), "pdq-index")
        needle = segment.array("near.words")[12].tobytes()
        segment.close()
        _flip_in_place(pdq_index_path(path), needle)
        problems = await verify_index_files(db, LeafHashIndex())
        assert len(problems) == 1 and "fails its checksum" in problems[0]
        assert service.pdq.base_rows == 0 and len(service.pdq) == 60
        assert not pdq_index_path(path).exists()
        for i in (12, 40):
            assert await _hits(db, values[i]) == [i]
    finally:
        await db.close()


async def test_serve_writes_the_active_key_file_when_enough_lies_beyond_it(
    node: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _values = node
    monkeypatch.setattr(active_index, "PERSIST_MIN_ENTRIES", 50)
    file = active_index_path(path)
    db = await Database.open(path, readers=1)
    hub = CheckpointHub()
    task = asyncio.create_task(keep_current(db, hub))
    try:
        # 60 entries, none covered: written at start.
        await eventually(lambda: file.exists(), what="active.seg written at start")
        segment = open_segment(file, "active-keys")
        assert segment.meta["rows"] == 60 and segment.meta["logs"][0]["covered"] == 60
        segment.close()
        with Ledger.open(path) as ledger:
            ledger.append(
                [AddEntry.create(signal_type="sha256", value=f"{i:064x}") for i in range(1, 41)]
            )
        hub.publish(ORIGIN, 100)  # 40 beyond: fewer than 50, not written again
        with Ledger.open(path) as ledger:
            ledger.append(
                [AddEntry.create(signal_type="md5", value=f"{i:032x}") for i in range(1, 21)]
            )

            def rows_after_a_commit() -> int:
                # A commit announced while the first file was still being
                # written is not acted on; the next one is.
                hub.publish(ORIGIN, 120)
                segment = open_segment(file, "active-keys")
                segment.close()
                return int(segment.meta["rows"])

            await eventually(
                rows_after_a_commit,
                until=lambda rows: rows == 120,
                what="a new active.seg covering 120 entries",
            )
            assert check_active_file(ledger.store, file) is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()
